"""MobileNets: depthwise-separable convolutions.

* MobileNet v1 (Howard et al. 2017): Table 1's 28 layers, a 3x3/2 conv and
  13 depthwise-separable layers (layers.DepthwiseSeparable), average pool,
  linear; `width_multiplier` alpha thins every layer. The resolution
  multiplier is the input size (config.dataset.image_size).
* MobileNet v2 (Sandler et al. 2018): Table 2's inverted residual blocks
  with linear bottlenecks, `expansion` factor t = 6, ReLU6.

Both count as the standard implementations do: convolutions without bias
(BN follows), BN scale and offset, the classifier with bias.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnflax.backend.kernels import Kernels
from cnnflax.models import register_model
from cnnflax.models.layers import (Conv, DepthwiseSeparable, activation,
                                   batch_norm, check_at_least,
                                   check_rate)

# Table 1 after the first conv: (pointwise maps, depthwise stride). The
# table's second-to-last "Conv dw / s2" is stride 1 (its output is 7x7).
V1_LAYERS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2),
             (1024, 1))
# Table 2: expansion t (the `expansion` field replaces its 6s), output
# maps c, repeats n, stride s of the first.
V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

he_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def make_divisible(value: float, divisor: int = 8) -> int:
  """The standard implementation's channel rounding: to the nearest multiple
  of `divisor`, at least `divisor`, never more than 10% below `value`."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


def check_width(value: float) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      value <= 0):
    raise ValueError(f"width_multiplier={value!r} is not valid; choose "
                     "alpha > 0 (the paper: 1.0, 0.75, 0.5, 0.25)")


def stem(x: jax.Array, width: int, act, train: bool, dtype: Any,
         axis_name: str | None, kernels: Kernels) -> jax.Array:
  """Both tables' first layer: 3x3/2 conv, BN, activation."""
  x = Conv(width, (3, 3), (2, 2), 1, use_bias=False, kernels=kernels,
           kernel_init=he_init, dtype=dtype, name="conv1")(x.astype(dtype))
  return act(batch_norm(train, dtype, axis_name, kernels,
                        name="conv1_bn")(x))


def classifier(x: jax.Array, num_classes: int, dropout_rate: float,
               train: bool, dtype: Any) -> jax.Array:
  """Global average pool, dropout, linear."""
  x = nn.Dropout(dropout_rate, deterministic=not train)(jnp.mean(x, (1, 2)))
  return nn.Dense(num_classes, dtype=dtype, name="head")(x)


class MobileNetV1(nn.Module):
  """Table 1 layer for layer; 224x224 input gives 7x7x1024 before the pool."""
  num_classes: int = 1000
  width_multiplier: float = 1.0  # alpha
  min_depth: int = 8  # no layer thinner than this (TF-slim's min_depth)
  activation: str = "relu"
  dropout_rate: float = 0.001  # before the classifier (TF-slim keeps 0.999)
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  def __post_init__(self):
    check_width(self.width_multiplier)
    check_at_least("min_depth", self.min_depth, 1)
    check_rate("dropout_rate", self.dropout_rate)
    activation(self.activation)
    super().__post_init__()

  def width(self, maps: int) -> int:
    """alpha * maps, rounded down (TF-slim)."""
    return max(int(maps * self.width_multiplier), self.min_depth)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = stem(x, self.width(32), activation(self.activation), train,
             self.dtype, self.axis_name, self.kernels)
    for i, (maps, stride) in enumerate(V1_LAYERS):
      x = DepthwiseSeparable(
          self.width(maps), stride, self.activation, self.activation,
          he_init, self.dtype, self.axis_name, self.kernels,
          name=f"separable{i + 1}")(x, train)
    return classifier(x, self.num_classes, self.dropout_rate, train,
                      self.dtype)


class InvertedResidual(nn.Module):
  """1x1 expansion to t * in maps, BN, ReLU6; 3x3 depthwise, BN, ReLU6;
  1x1 linear projection, BN; the input added where the shape is kept."""
  features: int
  strides: int = 1
  expansion: int = 6
  activation: str = "relu6"
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = x
    if self.expansion != 1:
      y = Conv(x.shape[-1] * self.expansion, (1, 1), use_bias=False,
               kernels=self.kernels, kernel_init=he_init, dtype=self.dtype,
               name="expand")(y)
      y = batch_norm(train, self.dtype, self.axis_name, self.kernels,
                     name="expand_bn")(y)
      y = activation(self.activation)(y)
    y = DepthwiseSeparable(self.features, self.strides, self.activation,
                           "identity", he_init, self.dtype, self.axis_name,
                           self.kernels, name="separable")(y, train)
    if self.strides == 1 and x.shape[-1] == self.features:
      return x + y
    return y


class MobileNetV2(nn.Module):
  """Table 2 layer for layer; 224x224 input gives 7x7x320, then 1x1 conv to
  1280 maps, average pool, linear."""
  num_classes: int = 1000
  width_multiplier: float = 1.0  # alpha
  expansion: int = 6  # t of every block but the first (t = 1)
  round_to: int = 8  # widths are multiples of this (make_divisible)
  last_width: int = 1280  # the final 1x1 conv; thinned only for alpha > 1
  activation: str = "relu6"
  dropout_rate: float = 0.2  # before the classifier (standard code)
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  def __post_init__(self):
    check_width(self.width_multiplier)
    check_at_least("expansion", self.expansion, 1)
    check_at_least("round_to", self.round_to, 1)
    check_at_least("last_width", self.last_width, 1)
    check_rate("dropout_rate", self.dropout_rate)
    activation(self.activation)
    super().__post_init__()

  def width(self, maps: int) -> int:
    return make_divisible(maps * self.width_multiplier, self.round_to)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    act = activation(self.activation)
    x = stem(x, self.width(32), act, train, self.dtype, self.axis_name,
             self.kernels)
    b = 0
    for t, c, n, s in V2_BLOCKS:
      t = 1 if t == 1 else self.expansion
      for i in range(n):
        b += 1
        x = InvertedResidual(
            self.width(c), s if i == 0 else 1, t, self.activation,
            self.dtype, self.axis_name, self.kernels, name=f"block{b}")(
                x, train)
    last = make_divisible(self.last_width * max(1.0, self.width_multiplier),
                          self.round_to)
    x = Conv(last, (1, 1), use_bias=False, kernels=self.kernels,
             kernel_init=he_init, dtype=self.dtype, name="conv_last")(x)
    x = act(batch_norm(train, self.dtype, self.axis_name, self.kernels,
                       name="conv_last_bn")(x))
    return classifier(x, self.num_classes, self.dropout_rate, train,
                      self.dtype)


def _register():
  imagenet = dict(input_shape=(224, 224, 3), num_classes=1000,
                  dataset="imagenet2012")
  # Table 8 of v1 (1.0 MobileNet-224: 70.6% top-1, 4.2M, 569M mult-adds).
  register_model("mobilenet_v1", MobileNetV1, fields={},
                 paper="Howard et al. 2017, MobileNets", params=4_231_976,
                 params_paper=4.2e6, flops=569_000_000, error=29.4,
                 **imagenet)
  # Table 4 of v2: 72.0% top-1, 300M mult-adds, "3.4M" parameters; the
  # standard code's count (torchvision's, with the 1280-map last conv) is
  # 3.50M, 3% above, so the paper's figure is left out of the check.
  register_model("mobilenet_v2", MobileNetV2, fields={},
                 paper="Sandler et al. 2018, MobileNetV2", params=3_504_872,
                 flops=300_000_000, error=28.0, **imagenet)


_register()
