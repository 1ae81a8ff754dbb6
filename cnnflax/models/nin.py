"""Network in Network (Lin, Chen and Yan 2014)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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


class MlpConv(nn.Module):
  """A spatial convolution and two 1x1 convolutions (the per-pixel MLP), each
  followed by the activation; the last may skip BN and the activation."""
  features: tuple[int, int, int]
  kernel: int
  stride: int
  padding: int
  batch_norm: bool = False
  activation: str = "relu"
  last_act: bool = True
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pad = ((self.padding, self.padding),) * 2
    common = dict(dtype=self.dtype, axis_name=self.axis_name)
    x = ConvBNAct(self.features[0], (self.kernel, self.kernel),
                  (self.stride, self.stride), pad, self.batch_norm,
                  self.activation, name="conv", **common)(x, train)
    x = ConvBNAct(self.features[1], (1, 1), batch_norm=self.batch_norm,
                  act=self.activation, name="mlp1", **common)(x, train)
    # The class maps of the last block are not batch-normalised.
    last_bn = self.batch_norm and self.last_act
    return ConvBNAct(self.features[2], (1, 1), batch_norm=last_bn,
                     act=self.activation if self.last_act else "identity",
                     name="mlp2", **common)(x, train)


class NiN(nn.Module):
  """mlpconv blocks with dropout between them; the last block outputs one map
  per class and a global average turns the maps into logits (no FC layer).

  `variant="cifar"`: 32x32 input, 966,986 parameters with 10 classes.
  `variant="imagenet"`: 224x224 input, 7,595,176 parameters.
  Pooling rounds up as Caffe's (32 -> 16 -> 8; 54 -> 27 -> 13 -> 6).
  `class_map_activation=True` keeps the authors' ReLU on the class maps
  before the average; with batch_norm=True the other convolutions are
  conv-BN-activation.
  """
  num_classes: int = 10
  variant: str = "cifar"
  batch_norm: bool = False
  activation: str = "relu"
  dropout_rate: float = 0.5
  class_map_activation: bool = True
  dtype: Any = jnp.float32
  axis_name: str | None = None

  def __post_init__(self):
    check_choice("variant", self.variant, tuple(TABLES))
    check_rate("dropout_rate", self.dropout_rate)
    activation(self.activation)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.astype(self.dtype)
    table = TABLES[self.variant]
    for i, (k, stride, pad, maps, pool, dropout) in enumerate(table, 1):
      last = i == len(table)
      maps = tuple(m or self.num_classes for m in maps)
      x = MlpConv(maps, k, stride, pad, self.batch_norm, self.activation,
                  self.class_map_activation or not last, self.dtype,
                  self.axis_name, name=f"mlpconv{i}")(x, train)
      if pool is not None:
        x = caffe_pool(x, *pool)
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
