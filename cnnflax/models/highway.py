"""Highway networks (Srivastava, Greff and Schmidhuber 2015) and plain twins."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnflax.backend.kernels import Kernels
from cnnflax.models import register_model
from cnnflax.models.layers import (activation, batch_norm, check_at_least,
                                   check_choice, check_rate)

# Conv net: three stages with FitNet-4's width proportions (Romero et al.
# 2015: 32, 80 and 128 maps), 2x2 max-pooling between them.
STAGE_WIDTHS = (1.0, 2.5, 4.0)
# Stacks of at least this many identical layers compile once under nn.scan
# (unrolled, the 100-layer dense net's train step took ~100 s to compile
# on a 2-core CPU; scanned, ~2 s).
SCAN_THRESHOLD = 10


class HighwayLayer(nn.Module):
  """y = H(x) T(x) + x (1 - T(x)), H = act(W_H x + b_H),
  T = sigmoid(W_T x + b_T); `plain=True` is the ordinary layer y = H(x)
  (no gate parameters). `kind` picks fully connected or 3x3 convolutional
  H and T; both keep the input's width, so that x can be carried."""
  kind: str = "dense"
  plain: bool = False
  activation: str = "relu"
  gate_bias_init: float = -2.0
  batch_norm: bool = False
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    h = self._linear(x.shape[-1], "transform", nn.initializers.he_normal(),
                     nn.initializers.zeros, not self.batch_norm)(x)
    if self.batch_norm:
      h = batch_norm(train, self.dtype, self.axis_name, self.kernels)(h)
    h = activation(self.activation)(h)
    if self.plain:
      return h
    # A negative gate bias starts the layer close to carrying x unchanged.
    t = nn.sigmoid(self._linear(
        x.shape[-1], "gate", nn.initializers.lecun_normal(),
        nn.initializers.constant(self.gate_bias_init), True)(x))
    return h * t + x * (1 - t)

  def _linear(self, features, name, kernel_init, bias_init, use_bias):
    if self.kind == "dense":
      return nn.Dense(features, use_bias=use_bias, kernel_init=kernel_init,
                      bias_init=bias_init, dtype=self.dtype, name=name)
    return nn.Conv(features, (3, 3), use_bias=use_bias,
                   kernel_init=kernel_init, bias_init=bias_init,
                   dtype=self.dtype, name=name)


class ScannedLayers(nn.Module):
  """The identical layers of a stack under nn.scan: (carry, nothing)."""
  fields: tuple  # HighwayLayer's fields as sorted (name, value) pairs

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    return HighwayLayer(**dict(self.fields), name="layer")(x, train), None


class Highway(nn.Module):
  """Highway networks and their plain twins of equal depth.

  kind="dense" (Section 4.1, MNIST): a plain fully connected layer to
  `width` units ("to change dimensionality"), then depth - 1 highway (or,
  with plain=True, plain) layers of `width` units, then the linear softmax
  layer. The paper compares width 50 highway with width 71 plain nets at
  depths 10, 20, 50 and 100. The input is flattened, whatever its size.

  kind="conv" (Section 4.2 style, CIFAR-10): three stages of depth / 3
  3x3 convolutional layers each, the first of every stage plain (it changes
  the width), the rest highway; widths width x (1, 2.5, 4) = 32, 80, 128;
  2x2 max-pooling between stages, global average pooling, dropout, linear.
  depth=18 (19 layers with the classifier) has 2.26M parameters, about the
  paper's 19-layer 2.3M network; its exact layer table was not available
  to us, so this is our table in the paper's FitNet-based style.

  `scan_blocks` (None: when a stack has SCAN_THRESHOLD or more identical
  layers) compiles the layers after a stack's first one once, under nn.scan:
  same maths and parameters, stacked as `<stack>_rest/layer` along axis 0.
  """
  num_classes: int = 10
  kind: str = "dense"
  depth: int = 10
  width: int = 50
  plain: bool = False
  activation: str = "relu"
  gate_bias_init: float = -2.0
  batch_norm: bool = False
  dropout_rate: float = 0.0
  scan_blocks: bool | None = None
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  def __post_init__(self):
    check_choice("kind", self.kind, ("dense", "conv"))
    check_at_least("depth", self.depth, 1 if self.kind == "dense" else 3)
    if self.kind == "conv" and self.depth % 3:
      raise ValueError(f"depth={self.depth!r} is not valid for kind='conv'; "
                       "choose a multiple of 3 (three equal stages)")
    check_at_least("width", self.width, 1)
    check_rate("dropout_rate", self.dropout_rate)
    activation(self.activation)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.astype(self.dtype)
    if self.kind == "dense":
      x = x.reshape(x.shape[0], -1)
      x = self._layers(x, self.width, self.depth, "layer", train)
    else:
      per_stage = self.depth // 3
      for s, scale in enumerate(STAGE_WIDTHS, 1):
        if s > 1:
          x = nn.max_pool(x, (2, 2), (2, 2))
        x = self._layers(x, int(self.width * scale), per_stage,
                         f"stage{s}_layer", train)
      x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x)

  @property
  def layers_per_stack(self) -> int:
    return self.depth if self.kind == "dense" else self.depth // 3

  @property
  def scanned(self) -> bool:
    if self.scan_blocks is None:
      return self.layers_per_stack - 1 >= SCAN_THRESHOLD
    return self.scan_blocks

  def _layers(self, x, width, count, prefix, train):
    """A plain layer to `width`, then count - 1 highway (or plain) layers."""
    x = self._plain_projection(x, width, f"{prefix}1", train)
    fields = dict(kind=self.kind, plain=self.plain, activation=self.activation,
                  gate_bias_init=self.gate_bias_init,
                  batch_norm=self.batch_norm, dtype=self.dtype,
                  axis_name=self.axis_name, kernels=self.kernels)
    if self.scanned and count > 1:
      scan = nn.scan(ScannedLayers,
                     variable_axes={"params": 0, "batch_stats": 0},
                     split_rngs={"params": True, "dropout": True},
                     in_axes=nn.broadcast, length=count - 1)
      x, _ = scan(tuple(sorted(fields.items())), name=f"{prefix}_rest")(
          x, train)
      return x
    for i in range(2, count + 1):
      x = HighwayLayer(**fields, name=f"{prefix}{i}")(x, train)
    return x

  def _plain_projection(self, x, width, name, train):
    kwargs = dict(use_bias=not self.batch_norm, dtype=self.dtype,
                  kernel_init=nn.initializers.he_normal(), name=name)
    if self.kind == "dense":
      x = nn.Dense(width, **kwargs)(x)
    else:
      x = nn.Conv(width, (3, 3), **kwargs)(x)
    if self.batch_norm:
      x = batch_norm(train, self.dtype, self.axis_name, self.kernels)(x)
    return activation(self.activation)(x)


_PAPER = "Srivastava, Greff and Schmidhuber 2015, Training very deep networks"
# Exact counts of these nets at the paper's input sizes (MNIST 28x28: 784
# inputs); the paper gives no count for the MNIST nets of Figure 1.
register_model("highway_mnist", Highway,
               fields=dict(kind="dense", depth=100, width=50), paper=_PAPER,
               input_shape=(28, 28, 1), num_classes=10, params=544_660,
               dataset="mnist")
register_model("plain_mnist", Highway,
               fields=dict(kind="dense", depth=100, width=71, plain=True),
               paper=_PAPER + " (plain twin)", input_shape=(28, 28, 1),
               num_classes=10, params=562_543, dataset="mnist")
# Table 3: highway network, 19 layers, 2.3M parameters, 92.40% accuracy.
register_model("highway_cifar", Highway,
               fields=dict(kind="conv", depth=18, width=32), paper=_PAPER,
               input_shape=(32, 32, 3), num_classes=10, params=2_262_714,
               params_paper=2.3e6, error=7.60, dataset="cifar10")
register_model("plain_cifar", Highway,
               fields=dict(kind="conv", depth=18, width=32, plain=True),
               paper=_PAPER + " (plain twin)", input_shape=(32, 32, 3),
               num_classes=10, params=1_190_154, dataset="cifar10")
