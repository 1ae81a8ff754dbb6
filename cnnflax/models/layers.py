"""Pieces that several model families share."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def scaled_tanh(x: jax.Array) -> jax.Array:
  """LeCun et al. 1998's squashing function f(a) = 1.7159 tanh(2a/3)."""
  return 1.7159 * jnp.tanh(x * (2.0 / 3.0))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "relu6": nn.relu6,
    "tanh": jnp.tanh,
    "scaled_tanh": scaled_tanh,
    "sigmoid": nn.sigmoid,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "swish": nn.swish,
    "identity": lambda x: x,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"activation={name!r} is unknown; choose one of: "
                     f"{', '.join(sorted(ACTIVATIONS))}")
  return ACTIVATIONS[name]


def check_choice(field: str, value: Any, choices: tuple) -> None:
  """Raises the one-line error every model uses for a bad enumerated field."""
  if value not in choices:
    raise ValueError(f"{field}={value!r} is not valid; choose one of: "
                     f"{', '.join(map(str, choices))}")


def lecun98_uniform(key, shape, dtype=jnp.float32):
  """LeNet-5's init: uniform in +-2.4 / fan_in (LeCun et al. 1998, App. A)."""
  fan_in = 1
  for d in shape[:-1]:
    fan_in *= d
  limit = 2.4 / fan_in
  return jax.random.uniform(key, shape, dtype, -limit, limit)


class ConvBNAct(nn.Module):
  """Convolution, optional BatchNorm, activation: the stem of most families."""
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: Any = "SAME"
  batch_norm: bool = True
  act: str = "relu"
  groups: int = 1
  dtype: Dtype = jnp.float32
  axis_name: str | None = None
  kernel_init: Callable = nn.initializers.he_normal()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(self.features, self.kernel_size, self.strides, self.padding,
                feature_group_count=self.groups, use_bias=not self.batch_norm,
                kernel_init=self.kernel_init, dtype=self.dtype)(x)
    if self.batch_norm:
      x = batch_norm(train, self.dtype, self.axis_name)(x)
    return activation(self.act)(x)


def batch_norm(train: bool, dtype: Dtype, axis_name: str | None,
               **kwargs: Any) -> nn.BatchNorm:
  """BatchNorm with the torch/Caffe momentum (0.9) and epsilon (1e-5).

  `axis_name` set: statistics are computed over the global batch (synchronised
  across replicas); None: over each device's part of it.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, axis_name=axis_name, **kwargs)
