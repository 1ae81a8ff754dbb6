"""Pieces that several model families share."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnflax.backend.kernels import Kernels
from cnnflax.models.norm import BatchNorm

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
  """Convolution, optional BatchNorm, activation: the stem of most families.
  `epsilon`: BatchNorm's (torch/Caffe 1e-5; Google's TF-slim nets 1e-3)."""
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
  epsilon: float = 1e-5
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = Conv(self.features, self.kernel_size, self.strides, self.padding,
             use_bias=not self.batch_norm, groups=self.groups,
             kernels=self.kernels, kernel_init=self.kernel_init,
             dtype=self.dtype)(x)
    if self.batch_norm:
      return bn_act(train, self.dtype, self.axis_name, self.kernels, self.act,
                    epsilon=self.epsilon)(x)
    return activation(self.act)(x)


def batch_norm(train: bool, dtype: Dtype, axis_name: str | None,
               kernels: Kernels, epsilon: float = 1e-5,
               **kwargs: Any) -> BatchNorm:
  """BatchNorm with the torch/Caffe momentum (0.9) and, by default, their
  epsilon (1e-5); the Inception family passes TF-slim's 1e-3.

  `axis_name` set: statistics are computed over the global batch (synchronised
  across replicas); None: over each device's part of it. `relu=True` fuses a
  ReLU after it (see norm.py). `kernels.batch_norm` says how it is
  differentiated.
  """
  return BatchNorm(use_running_average=not train, momentum=0.9,
                   epsilon=epsilon, dtype=dtype, axis_name=axis_name,
                   impl=kernels.batch_norm, **kwargs)


def bn_act(train: bool, dtype: Dtype, axis_name: str | None,
           kernels: Kernels, act: str,
           **kwargs: Any) -> Callable[[jax.Array], jax.Array]:
  """BatchNorm then the named activation; a ReLU runs inside BatchNorm."""
  if act == "relu":
    return batch_norm(train, dtype, axis_name, kernels, relu=True, **kwargs)
  fn = activation(act)
  bn = batch_norm(train, dtype, axis_name, kernels, **kwargs)
  return lambda x: fn(bn(x))


def check_rate(field: str, value: float) -> None:
  """Refuses a dropout rate outside [0, 1) in the usual one-line form."""
  if isinstance(value, bool) or not 0 <= value < 1:
    raise ValueError(f"{field}={value!r} is not valid; choose a rate in [0, 1)")


def check_at_least(field: str, value: int, minimum: int) -> None:
  """Refuses a whole-number field below `minimum`."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{field}={value!r} is not valid; choose a whole number "
                     f">= {minimum}")


# --- residual unit wrappers --------------------------------------------------


def drop_path(module: nn.Module, branch: jax.Array, survival: Any,
              train: bool, per_sample: bool = False) -> jax.Array:
  """Stochastic depth (Huang et al. 2016): in training the whole branch is
  kept with probability `survival` (for the mini-batch, or for each example
  with `per_sample`), else zeroed; at test it is scaled by `survival`.
  `module` supplies the "dropout" RNG stream."""
  p = jnp.asarray(survival, branch.dtype)
  if not train:
    return branch * p
  shape = (branch.shape[0],) + (1,) * (branch.ndim - 1) if per_sample else ()
  alive = jax.random.bernoulli(module.make_rng("dropout"), p, shape)
  return branch * alive.astype(branch.dtype)


def residual_merge(module: nn.Module, branch: jax.Array,
                   shortcut: jax.Array | None, train: bool, *,
                   scale: Any = 1.0, survival: Any = None,
                   per_sample: bool = False,
                   after: Callable[[jax.Array], jax.Array] | None = None
                   ) -> jax.Array:
  """The end of every residual unit: after(shortcut + scale * branch).

  `survival`: None, or stochastic depth's keep probability (`drop_path`);
  `scale`: a number or an array (Inception-ResNet's residual scaling, a
  lesion's 0/1); `shortcut=None`: a plain unit, no addition; `after`: what
  follows the addition (an activation, BN then activation, or nothing).
  A plain function, so the caller's parameter names and RNG stream stay
  its own.
  """
  if survival is not None:
    branch = drop_path(module, branch, survival, train, per_sample)
  if not (isinstance(scale, (int, float)) and scale == 1.0):
    branch = branch * jnp.asarray(scale, branch.dtype)
  y = branch if shortcut is None else branch + shortcut
  return y if after is None else after(y)


class LRN(nn.Module):
  """Local response normalisation across channels (Krizhevsky et al. 2012):

    b_i = a_i / (k + alpha * sum_{|j - i| <= size // 2} a_j^2) ** beta

  `alpha` multiplies the plain sum as in the paper; Caffe and torch divide
  their alpha by `size` first, so their alpha=1e-4 is alpha=2e-5 here.
  """
  size: int = 5
  k: float = 2.0
  alpha: float = 1e-4
  beta: float = 0.75

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # float32 inside: the power of a bfloat16 sum loses too much.
    squares = jnp.square(x.astype(jnp.float32))
    half = self.size // 2
    padded = jnp.pad(squares, [(0, 0)] * (x.ndim - 1) +
                     [(half, self.size - 1 - half)])
    channels = x.shape[-1]
    # A few shifted slices: XLA fuses them into one elementwise pass.
    window = sum(padded[..., i:i + channels] for i in range(self.size))
    scale = (self.k + self.alpha * window) ** self.beta
    return (x.astype(jnp.float32) / scale).astype(x.dtype)


class SplitConv(nn.Module):
  """A grouped convolution written as `groups` ordinary convolutions on slices
  of the channels, concatenated: the parameters and the result of
  feature_group_count=groups, but XLA:CPU runs grouped convolutions ~40x
  slower. (AlexNet's two columns, one per GPU.)"""
  features: int
  kernel_size: tuple[int, int]
  groups: int = 2
  strides: tuple[int, int] = (1, 1)
  padding: Any = "SAME"
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.he_normal()
  bias_init: Callable = nn.initializers.zeros
  dtype: Dtype = jnp.float32
  kernels: Kernels = Kernels()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.features % self.groups or x.shape[-1] % self.groups:
      raise ValueError(
          f"groups={self.groups} must divide the {x.shape[-1]} input and "
          f"{self.features} output channels")
    outs = [Conv(self.features // self.groups, self.kernel_size,
                 self.strides, self.padding, use_bias=self.use_bias,
                 kernels=self.kernels, kernel_init=self.kernel_init,
                 bias_init=self.bias_init, dtype=self.dtype,
                 name=f"group{i}")(part)
            for i, part in enumerate(jnp.split(x, self.groups, axis=-1))]
    return jnp.concatenate(outs, axis=-1)


def caffe_pool(x: jax.Array, kind: str, window: int, stride: int,
               kernels: Kernels = Kernels()) -> jax.Array:
  """Max or average pooling without padding, rounding the output size up as
  Caffe does: ceil((n - window) / stride) + 1, the last window hanging over
  the edge (an average then covers only the pixels inside). NiN's and
  GoogLeNet's layer tables assume this rounding."""
  pads = []
  for n in x.shape[1:3]:
    out = -(-(n - window) // stride) + 1
    if (out - 1) * stride >= n:  # a window must start inside the image
      out -= 1
    pads.append((0, max(0, (out - 1) * stride + window - n)))
  if kind == "max":
    return kernels.pool_max(x, (window, window), (stride, stride), pads)
  if kind == "avg":
    return nn.avg_pool(x, (window, window), (stride, stride), pads,
                       count_include_pad=False)
  raise ValueError(f"pooling kind={kind!r} is not valid; choose max or avg")


class Conv(nn.Module):
  """A convolution with nn.Conv's parameters (kernel HWIO, bias), computed
  as `kernels` says (cnnflax/backend/kernels.py: the same maths, XLA's,
  oneDNN's or matmul implementations)."""
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  # zeros on each side (an int), "SAME", "VALID" or ((top, bottom), (left,
  # right)): kernels.padding_pairs
  padding: Any = 0
  use_bias: bool = True
  groups: int = 1
  kernels: Kernels = Kernels()
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    kernel = self.param("kernel", self.kernel_init,
                        (kh, kw, x.shape[-1] // self.groups, self.features))
    y = self.kernels.conv2d(x.astype(self.dtype), kernel.astype(self.dtype),
                            self.strides, self.padding, self.groups)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init,
                         (self.features,)).astype(self.dtype)
    return y

  def flops_per_image(self, output) -> int:
    kernel = self.variables["params"]["kernel"].shape
    return int(output.shape[1] * output.shape[2] * output.shape[3]
               * kernel[0] * kernel[1] * kernel[2])


class DepthwiseSeparable(nn.Module):
  """A 3x3 depthwise convolution (one filter per channel), BN, activation,
  then a 1x1 pointwise convolution to `features` maps, BN, activation
  (MobileNet v1, Fig. 3). MobileNet v2's inverted residual ends with it,
  the pointwise one linear (`pointwise_act="identity"`)."""
  features: int
  strides: int = 1
  act: str = "relu"
  pointwise_act: str = "relu"
  kernel_init: Callable = nn.initializers.variance_scaling(
      2.0, "fan_out", "normal")
  dtype: Dtype = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    channels = x.shape[-1]
    s = self.strides
    common = dict(use_bias=False, kernels=self.kernels,
                  kernel_init=self.kernel_init, dtype=self.dtype)
    x = Conv(channels, (3, 3), (s, s), 1, groups=channels, **common,
             name="depthwise")(x)
    x = bn_act(train, self.dtype, self.axis_name, self.kernels, self.act,
               name="depthwise_bn")(x)
    x = Conv(self.features, (1, 1), **common, name="pointwise")(x)
    return bn_act(train, self.dtype, self.axis_name, self.kernels,
                  self.pointwise_act, name="pointwise_bn")(x)
