"""PyTorch reference models for side-by-side checks (not a project dependency).

ResNet for CIFAR (He et al. 2016, option A shortcuts), written to match
cnnflax's `resnet*_cifar` layer for layer.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
  def __init__(self, cin, cout, stride, plain=False):
    super().__init__()
    self.conv0 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn0 = nn.BatchNorm2d(cout)
    self.conv1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.stride, self.extra, self.plain = stride, cout - cin, plain

  def forward(self, x):
    out = self.bn1(self.conv1(F.relu(self.bn0(self.conv0(x)))))
    if self.plain:
      return F.relu(out)
    short = x[:, :, ::self.stride, ::self.stride]
    if self.extra:
      short = F.pad(short, (0, 0, 0, 0, self.extra // 2,
                            self.extra - self.extra // 2))
    return F.relu(out + short)


class CifarResNet(nn.Module):
  def __init__(self, depth=20, num_classes=10, plain=False):
    super().__init__()
    n = (depth - 2) // 6
    self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.stem_bn = nn.BatchNorm2d(16)
    blocks, cin = [], 16
    for stage, width in enumerate((16, 32, 64)):
      for i in range(n):
        stride = 2 if i == 0 and stage > 0 else 1
        blocks.append(BasicBlock(cin, width, stride, plain))
        cin = width
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(64, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x):
    x = F.relu(self.stem_bn(self.stem(x)))
    x = self.blocks(x)
    return self.head(x.mean((2, 3)))
