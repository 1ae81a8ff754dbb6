"""VGG: very deep convolutional networks (Simonyan and Zisserman 2015)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    stage, index = 1, 1
    for layer in CONFIGS[self.config]:
      if layer == "maxpool":
        x = nn.max_pool(x, (2, 2), (2, 2))
        stage, index = stage + 1, 1
      elif layer == "LRN":  # Krizhevsky's parameters (Section 2.1)
        x = LRN(size=5, k=2.0, alpha=1e-4, beta=0.75, name="lrn")(x)
      else:
        k, features = map(int, layer[len("conv"):].split("-"))
        x = ConvBNAct(features, (k, k), batch_norm=self.batch_norm,
                      act=self.activation, dtype=self.dtype,
                      axis_name=self.axis_name,
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

  def __post_init__(self):
    check_choice("config", self.config, tuple(CONFIGS))
    check_choice("head", self.head, ("imagenet", "cifar"))
    check_rate("dropout_rate", self.dropout_rate)
    activation(self.activation)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if min(x.shape[-3:-1]) < 32:
      raise ValueError(f"VGG takes inputs of at least 32x32 (five 2x2 "
                       f"poolings), got {x.shape[-3:-1]}")
    x = VGGFeatures(self.config, self.batch_norm, self.activation, self.dtype,
                    self.axis_name, name="features")(x.astype(self.dtype),
                                                     train)
    x = x.reshape(x.shape[0], -1)
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
