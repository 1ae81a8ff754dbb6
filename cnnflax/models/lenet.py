"""LeNet-5 (LeCun, Bottou, Bengio and Haffner 1998) and its modern twin."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnflax.backend.kernels import Kernels
from cnnflax.models import register_model
from cnnflax.models.layers import (activation, batch_norm, check_choice,
                                   lecun98_uniform)

# Table I of the paper: which S2 maps each C3 map sees, by fan-in group.
C3_TABLE = (
    tuple((i, (i + 1) % 6, (i + 2) % 6) for i in range(6)),
    tuple((i, (i + 1) % 6, (i + 2) % 6, (i + 3) % 6) for i in range(6)),
    ((0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5)),
    ((0, 1, 2, 3, 4, 5),),
)


class Subsample(nn.Module):
  """S2/S4: sum of each 2x2 window times a trainable coefficient plus a bias,
  one pair per feature map."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    maps = x.shape[-1]
    coef = self.param("coefficient", nn.initializers.ones, (maps,))
    bias = self.param("bias", nn.initializers.zeros, (maps,))
    pooled = nn.avg_pool(x, (2, 2), (2, 2)) * 4.0
    return pooled * coef.astype(x.dtype) + bias.astype(x.dtype)


class SparseC3(nn.Module):
  """C3 with the paper's partial connection table (1,516 parameters).

  Only the 60 connected 5x5 kernels are parameters; they are scattered into a
  dense 6->16 kernel so that C3 runs as one ordinary convolution (grouped
  convolutions are slow on XLA:CPU).
  """
  dtype: Any = jnp.float32
  paper_init: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pairs = [(i, o) for o, inputs in enumerate(_c3_inputs()) for i in inputs]
    ins, outs = np.array(pairs).T
    fan_in = np.array([25 * len(_c3_inputs()[o]) for o in outs], np.float32)

    def init(key, shape, dtype=jnp.float32):
      if self.paper_init:  # uniform +-2.4/fan_in of the receiving map
        return jax.random.uniform(key, shape, dtype, -1, 1) * 2.4 / fan_in
      return jax.random.normal(key, shape, dtype) / np.sqrt(fan_in)

    compact = self.param("kernel", init, (5, 5, len(pairs)))
    bias = self.param("bias", nn.initializers.zeros, (16,))
    kernel = jnp.zeros((5, 5, 6, 16), compact.dtype).at[:, :, ins, outs].set(
        compact)
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(self.dtype), (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


  def flops_per_image(self, output) -> int:
    return math.prod(output.shape[1:3]) * 25 * sum(map(len, _c3_inputs()))


def _c3_inputs() -> list[tuple[int, ...]]:
  return [inputs for group in C3_TABLE for inputs in group]


class LeNet5(nn.Module):
  """C1 6@5x5, S2, C3 16@5x5, S4, C5 120@5x5, F6 84, output; 32x32 input.

  The paper's network: scaled tanh, trainable subsampling, the sparse C3
  table. The modern twin: relu, max-pooling, full C3. The output is a linear
  layer trained with softmax cross-entropy (the paper's fixed RBF output units
  are not reproduced).
  """
  num_classes: int = 10
  activation: str = "scaled_tanh"
  pooling: str = "subsample"  # subsample | avg | max
  connection_table: bool = True
  batch_norm: bool = False
  weight_init: str = "lecun98"  # lecun98 | lecun_normal
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  def __post_init__(self):
    check_choice("pooling", self.pooling, ("subsample", "avg", "max"))
    check_choice("weight_init", self.weight_init, ("lecun98", "lecun_normal"))
    activation(self.activation)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.shape[-3:-1] != (32, 32):
      raise ValueError(f"LeNet-5 takes 32x32 inputs, got {x.shape[-3:-1]}; "
                       "set config.dataset.image_size=32")
    act = activation(self.activation)
    init = (lecun98_uniform if self.weight_init == "lecun98"
            else nn.initializers.lecun_normal())
    x = x.astype(self.dtype)
    x = self._conv(6, init, train)(x)
    x = self._pool(x, train, act, name="S2")
    if self.connection_table:
      x = SparseC3(self.dtype, self.weight_init == "lecun98", name="C3")(x)
      x = self._norm_act(x, train, act)
    else:
      x = self._conv(16, init, train, name="C3")(x)
    x = self._pool(x, train, act, name="S4")
    x = self._conv(120, init, train, name="C5")(x)
    x = x.reshape(x.shape[0], -1)
    x = act(nn.Dense(84, dtype=self.dtype, kernel_init=init, name="F6")(x))
    return nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=init,
                    name="output")(x)

  def _conv(self, features, init, train, name=None):
    conv = nn.Conv(features, (5, 5), padding="VALID", dtype=self.dtype,
                   kernel_init=init, name=name or "C1")
    act = activation(self.activation)
    return lambda x: self._norm_act(conv(x), train, act)

  def _norm_act(self, x, train, act):
    if self.batch_norm:
      x = batch_norm(train, self.dtype, self.axis_name, self.kernels)(x)
    return act(x)

  def _pool(self, x, train, act, name):
    if self.pooling == "subsample":
      return act(Subsample(name=name)(x))
    pool = nn.avg_pool if self.pooling == "avg" else nn.max_pool
    return pool(x, (2, 2), (2, 2))


register_model(
    "lenet5", LeNet5, paper="LeCun et al. 1998, Gradient-based learning "
    "applied to document recognition", input_shape=(32, 32, 1),
    num_classes=10, params=60_850, params_paper=60_000, flops=None,
    error=0.95, dataset="mnist")
register_model(
    "lenet5_modern", LeNet5,
    fields=dict(activation="relu", pooling="max", connection_table=False,
                weight_init="lecun_normal"),
    paper="LeNet-5 with relu, max-pooling and a full C3", input_shape=(32, 32, 1),
    num_classes=10, params=61_706, dataset="mnist")
