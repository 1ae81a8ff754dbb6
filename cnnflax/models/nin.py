"""Network in Network (Lin, Chen and Yan 2014)."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnflax.backend.kernels import Kernels
from cnnflax.models import register_model
from cnnflax.models.layers import (ConvBNAct, activation, caffe_pool,
                                   check_choice, check_rate)

# One row per mlpconv block: (spatial kernel, stride, padding, the three
# layers' maps (0: num_classes), pooling after (kind, window, stride) or
# None for the global average, dropout after). The CIFAR-10 net is the
# paper's (Section 4.2; the authors' Caffe model); the ImageNet net is the
# authors' Caffe model-zoo network, which the paper does not describe.
TABLES: dict[str, tuple] = {
    "cifar": (
        (5, 1, 2, (192, 160, 96), ("max", 3, 2), True),
        (5, 1, 2, (192, 192, 192), ("avg", 3, 2), True),
        (3, 1, 1, (192, 192, 0), None, False),
    ),
    "imagenet": (
        (11, 4, 0, (96, 96, 96), ("max", 3, 2), False),
        (5, 1, 2, (256, 256, 256), ("max", 3, 2), False),
        (3, 1, 1, (384, 384, 384), ("max", 3, 2), True),
        (3, 1, 1, (1024, 1024, 0), None, False),
    ),
}

# weight_init="paper": the Gaussian weight stds of the authors' released
# Caffe models, (spatial conv, mlp1, mlp2) per block; every bias starts at 0.
# CIFAR-10: Min Lin's Caffe model-zoo gist e56253735ef32c3c296d
# ("Network in Network CIFAR10 Model", train_val.prototxt: every conv and
# cccp layer `gaussian std: 0.05`, `bias_filler constant 0`); the same 0.05
# as his cuda-convnet definition (github.com/mavenlin/cuda-convnet,
# NIN/cifar-10_def: initW=0.05 for all nine layers, initB 0) and his purine2
# example (github.com/purine/purine2, examples/nin_cifar10.cpp:
# Gaussian(0, 0.05) weights, Constant(0) biases).
# ImageNet: gist d802a5849de39225bcc6 ("Network in Network Imagenet Model"):
# conv1, conv3 and cccp8 std 0.01, the other layers 0.05.
PAPER_STDS: dict[str, tuple] = {
    "cifar": ((0.05, 0.05, 0.05),) * 3,
    "imagenet": ((0.01, 0.05, 0.05), (0.05, 0.05, 0.05), (0.01, 0.05, 0.05),
                 (0.05, 0.05, 0.01)),
}


def _kernel_init(std: float | None) -> Callable:
  """N(0, std) (the authors' filler) or, for None, He-normal."""
  if std is None:
    return nn.initializers.he_normal()
  return nn.initializers.normal(std)


class MlpConv(nn.Module):
  """A spatial convolution and two 1x1 convolutions (the per-pixel MLP), each
  followed by the activation; the last may skip BN and the activation.
  `init_stds`: the three layers' Gaussian weight stds; None: He-normal.
  `last_bias`: the starting bias of the third layer (it must have one)."""
  features: tuple[int, int, int]
  kernel: int
  stride: int
  padding: int
  batch_norm: bool = False
  activation: str = "relu"
  last_act: bool = True
  dtype: Any = jnp.float32
  axis_name: str | None = None
  init_stds: tuple[float, float, float] | None = None
  last_bias: float = 0.0
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pad = ((self.padding, self.padding),) * 2
    common = dict(dtype=self.dtype, axis_name=self.axis_name,
                  kernels=self.kernels)
    stds = self.init_stds or (None, None, None)
    x = ConvBNAct(self.features[0], (self.kernel, self.kernel),
                  (self.stride, self.stride), pad, self.batch_norm,
                  self.activation, kernel_init=_kernel_init(stds[0]),
                  name="conv", **common)(x, train)
    x = ConvBNAct(self.features[1], (1, 1), batch_norm=self.batch_norm,
                  act=self.activation, kernel_init=_kernel_init(stds[1]),
                  name="mlp1", **common)(x, train)
    # The class maps of the last block are not batch-normalised.
    last_bn = self.batch_norm and self.last_act
    act = self.activation if self.last_act else "identity"
    if self.last_bias:  # ConvBNAct's convolution without BN, another bias
      if last_bn:
        raise ValueError("last_bias needs a third layer without BatchNorm")
      return ConvAct(self.features[2], _kernel_init(stds[2]),
                     nn.initializers.constant(self.last_bias), act,
                     self.dtype, name="mlp2")(x)
    return ConvBNAct(self.features[2], (1, 1), batch_norm=last_bn, act=act,
                     kernel_init=_kernel_init(stds[2]), name="mlp2",
                     **common)(x, train)


class ConvAct(nn.Module):
  """A 1x1 convolution with a bias initialiser, then the activation: the
  parameters (Conv_0/kernel, Conv_0/bias) and output of
  ConvBNAct(batch_norm=False), which starts every bias at 0."""
  features: int
  kernel_init: Callable
  bias_init: Callable
  act: str = "relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, (1, 1), kernel_init=self.kernel_init,
                bias_init=self.bias_init, dtype=self.dtype)(x)
    return activation(self.act)(x)


class NiN(nn.Module):
  """mlpconv blocks with dropout between them; the last block outputs one map
  per class and a global average turns the maps into logits (no FC layer).

  `variant="cifar"`: 32x32 input, 966,986 parameters with 10 classes.
  `variant="imagenet"`: 224x224 input, 7,595,176 parameters.
  Pooling rounds up as Caffe's (32 -> 16 -> 8; 54 -> 27 -> 13 -> 6).
  `class_map_activation=True` keeps the authors' ReLU on the class maps
  before the average; with batch_norm=True the other convolutions are
  conv-BN-activation.

  `weight_init="paper"`: the authors' released Caffe models' N(0, std)
  weights (PAPER_STDS: 0.05 in every CIFAR layer; 0.01 in conv1, conv3 and
  cccp8 of the ImageNet net, 0.05 elsewhere) and zero biases; "he"
  (default): He-normal weights, zero biases.

  `class_map_bias`: the starting bias of the last convolution (the class
  maps; cccp6 in the CIFAR net), 0 in the authors' models. Without
  BatchNorm a ReLU'd class map that is negative everywhere gets no gradient
  again: with "he" a large first step kills them, with "paper" the logits
  start near 0 and the biases' drift kills them on the plateau at
  ln(num_classes) (the authors slowed that layer: a tenth of the rate). A
  positive start (1.0, as Krizhevsky et al. 2012 start ReLU layers' biases,
  for the same reason) keeps them alive; softmax ignores the shared offset.
  It needs class maps with a bias (not batch-normalised).
  """
  num_classes: int = 10
  variant: str = "cifar"
  batch_norm: bool = False
  activation: str = "relu"
  dropout_rate: float = 0.5
  class_map_activation: bool = True
  weight_init: str = "he"
  class_map_bias: float = 0.0
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  def __post_init__(self):
    check_choice("variant", self.variant, tuple(TABLES))
    check_choice("weight_init", self.weight_init, ("he", "paper"))
    check_rate("dropout_rate", self.dropout_rate)
    if (isinstance(self.class_map_bias, bool)
        or not isinstance(self.class_map_bias, (int, float))):
      raise ValueError(f"class_map_bias={self.class_map_bias!r} is not "
                       "valid; choose a number, e.g. 1.0")
    if self.class_map_bias and self.batch_norm and self.class_map_activation:
      raise ValueError(
          f"class_map_bias={self.class_map_bias!r} is not valid with "
          "batch_norm=True: the batch-normalised class maps have no bias; "
          "set class_map_bias=0")
    activation(self.activation)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.astype(self.dtype)
    table = TABLES[self.variant]
    for i, (k, stride, pad, maps, pool, dropout) in enumerate(table, 1):
      last = i == len(table)
      maps = tuple(m or self.num_classes for m in maps)
      stds = (PAPER_STDS[self.variant][i - 1]
              if self.weight_init == "paper" else None)
      x = MlpConv(maps, k, stride, pad, self.batch_norm, self.activation,
                  self.class_map_activation or not last, self.dtype,
                  self.axis_name, stds,
                  float(self.class_map_bias) if last else 0.0,
                  self.kernels, name=f"mlpconv{i}")(x, train)
      if pool is not None:
        x = caffe_pool(x, *pool, kernels=self.kernels)
      if dropout:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return jnp.mean(x, axis=(1, 2))


_PAPER = "Lin, Chen and Yan 2014, Network in network"
# Exact counts of the authors' Caffe networks; the paper gives none.
# Error: Table 1, CIFAR-10 with dropout and translation/flip augmentation.
register_model("nin_cifar", NiN, fields=dict(variant="cifar"), paper=_PAPER,
               input_shape=(32, 32, 3), num_classes=10, params=966_986,
               error=8.81, dataset="cifar10")
register_model("nin_imagenet", NiN, fields=dict(variant="imagenet"),
               paper=_PAPER + " (the authors' ImageNet model)",
               input_shape=(224, 224, 3), num_classes=1000,
               params=7_595_176, dataset="imagenet2012")
