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


def he_fan_out(model):
  """cnnflax's conv init, N(0, 2 / (k*k*out)); it does not change speed but
  keeps the two nets' activations on the same scale."""
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
  return model


def bn_relu_conv(cin, cout, k, stride=1):
  return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(),
                       nn.Conv2d(cin, cout, k, stride, k // 2, bias=False))


# --- DenseNet-BC for CIFAR (Huang et al. 2017), as cnnflax's
# `densenet_bc*_cifar`: a 2k-map 3x3 stem, three blocks of BN-ReLU-1x1
# (4k maps)-BN-ReLU-3x3 (k maps) layers, transitions to floor(m / 2) maps and
# a 2x2 average pool, then BN-ReLU, global average pool, linear.


class DenseLayer(nn.Module):
  def __init__(self, cin, growth):
    super().__init__()
    self.conv1 = bn_relu_conv(cin, 4 * growth, 1)
    self.conv2 = bn_relu_conv(4 * growth, growth, 3)

  def forward(self, features):
    # The concatenation of all earlier maps, as cnnflax does it per layer.
    return self.conv2(self.conv1(torch.cat(features, 1)))


class DenseBlock(nn.Module):
  def __init__(self, cin, growth, num_layers):
    super().__init__()
    self.layers = nn.ModuleList(
        DenseLayer(cin + i * growth, growth) for i in range(num_layers))

  def forward(self, x):
    features = [x]
    for layer in self.layers:
      features.append(layer(features))
    return torch.cat(features, 1)


class DenseNetBC(nn.Module):
  def __init__(self, depth=100, growth=12, num_classes=10):
    super().__init__()
    n = (depth - 4) // 6
    m = 2 * growth
    self.stem = nn.Conv2d(3, m, 3, 1, 1, bias=False)
    stages = []
    for b in range(3):
      stages.append(DenseBlock(m, growth, n))
      m += n * growth
      if b < 2:
        stages += [bn_relu_conv(m, m // 2, 1), nn.AvgPool2d(2)]
        m //= 2
    self.stages = nn.Sequential(*stages)
    self.final_bn = nn.BatchNorm2d(m)
    self.head = nn.Linear(m, num_classes)
    he_fan_out(self)

  def forward(self, x):
    x = F.relu(self.final_bn(self.stages(self.stem(x))))
    return self.head(x.mean((2, 3)))


# --- Bottleneck ResNets: cnnflax's `preact_resnet*_cifar` (full
# pre-activation, He et al. 2016b) and ImageNet `resnet50` (He et al. 2016a).
# Both downsample in the first 1x1 conv (cnnflax's stride_in="1x1", not
# torchvision's v1.5) and project with a 1x1 conv and BN where the shape
# changes (shortcut B).


def projection(cin, cout, stride):
  return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                       nn.BatchNorm2d(cout))


class PreActBottleneck(nn.Module):
  """BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1 (4x), added to the shortcut.
  Where it projects, the first BN-ReLU is shared with the shortcut."""

  def __init__(self, cin, width, stride):
    super().__init__()
    cout = 4 * width
    self.bn0 = nn.BatchNorm2d(cin)
    self.conv0 = nn.Conv2d(cin, width, 1, stride, bias=False)
    self.conv1 = bn_relu_conv(width, width, 3)
    self.conv2 = bn_relu_conv(width, cout, 1)
    self.proj = (projection(cin, cout, stride)
                 if stride != 1 or cin != cout else None)

  def forward(self, x):
    pre = F.relu(self.bn0(x))
    short = x if self.proj is None else self.proj(pre)
    return short + self.conv2(self.conv1(self.conv0(pre)))


class PreActResNetCifar(nn.Module):
  def __init__(self, depth=164, num_classes=10):
    super().__init__()
    n = (depth - 2) // 9
    self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    blocks, cin = [], 16
    for stage, width in enumerate((16, 32, 64)):
      for i in range(n):
        blocks.append(PreActBottleneck(cin, width,
                                       2 if i == 0 and stage > 0 else 1))
        cin = 4 * width
    self.blocks = nn.Sequential(*blocks)
    self.final_bn = nn.BatchNorm2d(cin)
    self.head = nn.Linear(cin, num_classes)
    he_fan_out(self)

  def forward(self, x):
    x = F.relu(self.final_bn(self.blocks(self.stem(x))))
    return self.head(x.mean((2, 3)))


class Bottleneck(nn.Module):
  """1x1-BN-ReLU, 3x3-BN-ReLU, 1x1 (4x)-BN, added to the shortcut, ReLU."""

  def __init__(self, cin, width, stride):
    super().__init__()
    cout = 4 * width
    self.branch = nn.Sequential(
        nn.Conv2d(cin, width, 1, stride, bias=False), nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
    self.proj = (projection(cin, cout, stride)
                 if stride != 1 or cin != cout else None)

  def forward(self, x):
    short = x if self.proj is None else self.proj(x)
    return F.relu(self.branch(x) + short)


class ResNet50(nn.Module):
  def __init__(self, num_classes=1000, stage_sizes=(3, 4, 6, 3)):
    super().__init__()
    self.stem = nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(3, 2, 1))
    blocks, cin = [], 64
    for stage, (n, width) in enumerate(zip(stage_sizes, (64, 128, 256, 512))):
      for i in range(n):
        blocks.append(Bottleneck(cin, width,
                                 2 if i == 0 and stage > 0 else 1))
        cin = 4 * width
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(cin, num_classes)
    he_fan_out(self)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def param_count(model) -> int:
  return sum(p.numel() for p in model.parameters())


def forward_macs(model, image_shape) -> int:
  """Multiply-adds per image of the convolutions and linear layers, counted
  as cnnflax.summary counts them (a check that the layers match, beyond the
  parameter count)."""
  total = []

  def hook(module, inputs, out):
    if isinstance(module, nn.Conv2d):
      k = module.weight.shape
      total.append(out[0].numel() * k[1] * k[2] * k[3])
    elif isinstance(module, nn.Linear):
      total.append(out[0].numel() * module.in_features)

  handles = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
  try:
    with torch.no_grad():
      model.eval()(torch.zeros(1, *image_shape))
  finally:
    for h in handles:
      h.remove()
  return int(sum(total))
