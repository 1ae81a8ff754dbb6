"""VGG: very deep convolutional networks (Simonyan and Zisserman 2015)."""
from __future__ import annotations

from typing import Any

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnflax.backend.kernels import Kernels
from cnnflax.models import register_model
from cnnflax.models.layers import (LRN, ConvBNAct, activation, check_choice,
                                   check_rate)


def _stage(*layers: str) -> tuple[str, ...]:
  return (*layers, "maxpool")


# Table 1 of the paper, in its own notation: convK-N is a KxK convolution
# with N maps (stride 1, "same" padding), maxpool is 2x2/2.
CONFIGS: dict[str, tuple[str, ...]] = {
    "A": (*_stage("conv3-64"), *_stage("conv3-128"),
          *_stage("conv3-256", "conv3-256"), *_stage("conv3-512", "conv3-512"),
          *_stage("conv3-512", "conv3-512")),
    "A-LRN": (*_stage("conv3-64", "LRN"), *_stage("conv3-128"),
              *_stage("conv3-256", "conv3-256"),
              *_stage("conv3-512", "conv3-512"),
              *_stage("conv3-512", "conv3-512")),
    "B": (*_stage("conv3-64", "conv3-64"), *_stage("conv3-128", "conv3-128"),
          *_stage("conv3-256", "conv3-256"), *_stage("conv3-512", "conv3-512"),
          *_stage("conv3-512", "conv3-512")),
    "C": (*_stage("conv3-64", "conv3-64"), *_stage("conv3-128", "conv3-128"),
          *_stage("conv3-256", "conv3-256", "conv1-256"),
          *_stage("conv3-512", "conv3-512", "conv1-512"),
          *_stage("conv3-512", "conv3-512", "conv1-512")),
    "D": (*_stage("conv3-64", "conv3-64"), *_stage("conv3-128", "conv3-128"),
          *_stage("conv3-256", "conv3-256", "conv3-256"),
          *_stage("conv3-512", "conv3-512", "conv3-512"),
          *_stage("conv3-512", "conv3-512", "conv3-512")),
    "E": (*_stage("conv3-64", "conv3-64"), *_stage("conv3-128", "conv3-128"),
          *_stage(*["conv3-256"] * 4), *_stage(*["conv3-512"] * 4),
          *_stage(*["conv3-512"] * 4)),
}


class VGGFeatures(nn.Module):
  """The convolutional part of a Table 1 column; 7x7x512 at 224x224."""
  config: str = "D"
  batch_norm: bool = False
  activation: str = "relu"
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    stage, index = 1, 1
    for layer in CONFIGS[self.config]:
      if layer == "maxpool":
        x = self.kernels.pool_max(x, (2, 2), (2, 2))
        stage, index = stage + 1, 1
      elif layer == "LRN":  # Krizhevsky's parameters (Section 2.1)
        x = LRN(size=5, k=2.0, alpha=1e-4, beta=0.75, name="lrn")(x)
      else:
        k, features = map(int, layer[len("conv"):].split("-"))
        x = ConvBNAct(features, (k, k), batch_norm=self.batch_norm,
                      act=self.activation, dtype=self.dtype,
                      axis_name=self.axis_name, kernels=self.kernels,
                      name=f"conv{stage}_{index}")(x, train)
        index += 1
    return x


class VGG(nn.Module):
  """Configurations A, A-LRN, B, C, D, E of Table 1 (`config`).

  head="imagenet": the paper's FC-4096, FC-4096 (ReLU, dropout 0.5 each),
  FC-classes on the flattened 7x7x512 maps.
  head="cifar": for 32x32 inputs, whose maps end at 1x1x512: dropout,
  FC-512, ReLU, dropout, FC-512, ReLU, FC-classes (the CIFAR VGG of
  github.com/chengyangfu/pytorch-vgg-cifar10, after Zagoruyko's cifar.torch).

  Convolutions use He-normal init (the paper initialised A from N(0, 0.01)
  and the deeper nets from A; its note says Glorot init works without
  pretraining), FC layers N(0, 0.01). With batch_norm=True each convolution
  is conv-BN-ReLU and has no bias (torchvision's *_bn keep a redundant bias:
  they have one parameter per conv map more, +4,224 for VGG-16).
  """
  num_classes: int = 1000
  config: str = "D"
  batch_norm: bool = False
  head: str = "imagenet"
  activation: str = "relu"
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  def __post_init__(self):
    check_choice("config", self.config, tuple(CONFIGS))
    check_choice("head", self.head, ("imagenet", "cifar"))
    check_rate("dropout_rate", self.dropout_rate)
    activation(self.activation)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               dense: bool = False) -> jax.Array:
    """Logits [N, classes]; with dense=True the class score map
    [N, H', W', classes] of the FC layers applied as convolutions over the
    whole (larger) image (Sec. 3.2, "dense" evaluation)."""
    if min(x.shape[-3:-1]) < 32:
      raise ValueError(f"VGG takes inputs of at least 32x32 (five 2x2 "
                       f"poolings), got {x.shape[-3:-1]}")
    x = VGGFeatures(self.config, self.batch_norm, self.activation, self.dtype,
                    self.axis_name, self.kernels, name="features")(
                        x.astype(self.dtype), train)
    first = "fc6" if self.head == "imagenet" else "fc1"
    x = (fc_windows(x, fc_window(self, first, x)) if dense
         else x.reshape(x.shape[0], -1))
    act = activation(self.activation)
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    if self.head == "imagenet":
      x = drop(act(self._dense(4096, "fc6")(x)))
      x = drop(act(self._dense(4096, "fc7")(x)))
      return self._dense(self.num_classes, "fc8")(x)
    x = act(self._dense(512, "fc1")(drop(x)))
    x = act(self._dense(512, "fc2")(drop(x)))
    return self._dense(self.num_classes, "fc3")(x)

  def _dense(self, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.normal(0.01),
                    dtype=self.dtype, name=name)


# --- fully connected layers as convolutions (dense evaluation) -------------
# Sec. 3.2 of the paper: at test time "the first FC layer is converted to a
# 7x7 conv. layer and the last two FC layers to 1x1 conv. layers", applied
# to the whole image. Each position of the result is the FC head applied to
# one window of the feature maps, flattened as in training (rows, columns,
# maps), so the same Dense modules and parameters serve both.


def fc_window(module: nn.Module, first_fc: str, maps: jax.Array) -> int:
  """The side of the square window of feature maps that `first_fc` was
  trained on (7 for 224x224 VGG inputs), read from its kernel; before the
  parameters exist (init), the whole map."""
  kernel = module.variables.get("params", {}).get(first_fc, {}).get("kernel")
  if kernel is None:
    if maps.shape[1] != maps.shape[2]:
      raise ValueError("dense=True initialises on square inputs only")
    return maps.shape[1]
  side = math.isqrt(kernel.shape[0] // maps.shape[-1])
  if side * side * maps.shape[-1] != kernel.shape[0]:
    raise ValueError(f"{first_fc} takes {kernel.shape[0]} inputs, not a "
                     f"square window of {maps.shape[-1]} maps")
  return side


def fc_windows(maps: jax.Array, side: int) -> jax.Array:
  """[N, H, W, C] maps -> [N, H - side + 1, W - side + 1, side * side * C]:
  every side x side window, flattened in the order of `reshape`."""
  n, h, w, c = maps.shape
  if h < side or w < side:
    raise ValueError(f"dense evaluation needs feature maps of at least "
                     f"{side}x{side} (the training input's), got {h}x{w}; "
                     "use an image at least as large as the training crops")
  rows, cols = h - side + 1, w - side + 1
  windows = [maps[:, i:i + rows, j:j + cols] for i in range(side)
             for j in range(side)]
  return jnp.stack(windows, axis=3).reshape(n, rows, cols, side * side * c)


_PAPER = ("Simonyan and Zisserman 2015, Very deep convolutional networks for "
          "large-scale image recognition")
# (name, config, exact parameters, Table 2's millions, He et al. 2016's
# mult-adds, Table 3's top-1 validation error at S=256, Q=256).
_IMAGENET = (
    ("vgg11", "A", 132_863_336, 133e6, None, 29.6),
    ("vgg11_lrn", "A-LRN", 132_863_336, 133e6, None, 29.7),
    ("vgg13", "B", 133_047_848, 133e6, None, 28.7),
    ("vgg16_c", "C", 133_638_952, 134e6, None, 28.1),
    ("vgg16", "D", 138_357_544, 138e6, 15.3e9, 27.0),
    ("vgg19", "E", 143_667_240, 144e6, 19.6e9, 27.3),
)
# Conv-BN without conv bias: BN adds a scale and an offset per conv map and
# the bias goes, so +1 parameter per conv map.
_CONV_MAPS = {"A": 2_752, "B": 2_944, "D": 4_224, "E": 5_504}


def _register() -> None:
  for name, config, params, paper_m, flops, error in _IMAGENET:
    register_model(name, VGG, fields=dict(config=config), paper=_PAPER,
                   input_shape=(224, 224, 3), num_classes=1000, params=params,
                   params_paper=paper_m, flops=flops, error=error,
                   dataset="imagenet2012")
    if config in _CONV_MAPS:
      register_model(f"{name}_bn", VGG,
                     fields=dict(config=config, batch_norm=True),
                     paper=_PAPER + " (with BatchNorm)",
                     input_shape=(224, 224, 3), num_classes=1000,
                     params=params + _CONV_MAPS[config], flops=flops,
                     dataset="imagenet2012")
  # No CIFAR number in the paper; 15,249,354 is this head's exact count.
  register_model("vgg16_cifar", VGG,
                 fields=dict(config="D", batch_norm=True, head="cifar"),
                 paper=_PAPER + " (VGG-16 with BatchNorm, CIFAR head)",
                 input_shape=(32, 32, 3), num_classes=10, params=15_249_354,
                 dataset="cifar10")


_register()
