"""The implementations a model's layers run, chosen by the backend.

A model describes its paper's network; how a convolution or a BatchNorm is
computed is a `Kernels` value that the backend resolves for the platform
(cnnflax.backend.resolve) and the run hands to the model as its `kernels`
field. Every implementation computes the same function, to float rounding;
only speed differs. The default, `Kernels()`, runs XLA's own convolutions on
any platform.

Convolutions (`conv2d`):
  xla     lax.conv_general_dilated
  onednn  oneDNN's, through jax.ffi (cnnflax.backend.native; XLA:CPU only,
          one group, f32/bf16; others fall back to xla). On a 2-core AVX-512
          CPU the train step runs 1.12-1.84x faster with them (benchmarks/).
  matmul  the input's patches times one matmul. Inside a scanned loop XLA:CPU
          runs lax.conv with a naive kernel, about 20x slower than this form.
A depthwise convolution (groups == input == output channels) runs
`depthwise`: xla, or matmul, the shifted inputs weighted per channel and
summed in float32 (XLA:CPU's own depthwise convolutions are 7-30x slower).
BatchNorm: vjp (norm.py's hand-written VJP with the ReLU fused) or autodiff.
Max pooling (`pool_max`): xla (reduce_window; its gradient is
select_and_scatter, slow on XLA:CPU) or windows (strided slices with their
own VJP, cnnflax.backend.pooling: the same values and gradients).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV = ("xla", "onednn", "matmul")
DEPTHWISE = ("xla", "matmul")
BATCH_NORM = ("vjp", "autodiff")
MAX_POOL = ("xla", "windows")


@dataclasses.dataclass(frozen=True)
class Kernels:
  conv: str = "xla"  # every convolution of one group (CONV)
  scanned_conv: str = "xla"  # those inside nn.scan stages (CONV)
  depthwise: str = "xla"  # DEPTHWISE
  batch_norm: str = "vjp"  # BATCH_NORM
  max_pool: str = "xla"  # MAX_POOL

  def __post_init__(self):
    for field, options in (("conv", CONV), ("scanned_conv", CONV),
                           ("depthwise", DEPTHWISE),
                           ("batch_norm", BATCH_NORM),
                           ("max_pool", MAX_POOL)):
      value = getattr(self, field)
      if value not in options:
        raise ValueError(f"backend.{field}={value!r} is not valid; choose "
                         f"one of: {', '.join(options)}")

  def in_scan(self) -> Kernels:
    """The kernels of layers inside a scanned loop."""
    return dataclasses.replace(self, conv=self.scanned_conv)

  def conv2d(self, x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
             padding, groups: int) -> jax.Array:
    """NHWC x HWIO -> NHWC. `padding`: zeros on every side (an int),
    "SAME" or "VALID" as nn.Conv takes them, or ((top, bottom), (left,
    right))."""
    pads = padding_pairs(padding, x.shape, kernel.shape, strides)
    depthwise = groups == x.shape[-1] == kernel.shape[-1] and groups > 1
    if depthwise and self.depthwise == "matmul":
      return _weighted_sum(x, kernel, strides, pads)
    if groups == 1 and self.conv == "onednn":
      from cnnflax.backend import native
      if native.supports(x, kernel):
        return native.conv2d(x, kernel, strides, pads)
    if groups == 1 and self.conv == "matmul":
      return _matmul(x, kernel, strides, pads)
    return jax.lax.conv_general_dilated(
        x, kernel, strides, list(pads),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups)


  def pool_max(self, x: jax.Array, window: tuple[int, int],
               strides: tuple[int, int], padding="VALID") -> jax.Array:
    """NHWC max pooling; `padding` as nn.max_pool takes it."""
    if self.max_pool == "windows":
      from cnnflax.backend import pooling
      if not isinstance(padding, str):
        padding = tuple(tuple(p) for p in padding)
      return pooling.max_pool(x, tuple(window), tuple(strides), padding)
    return nn.max_pool(x, tuple(window), tuple(strides), padding)


def padding_pairs(padding, x_shape, kernel_shape, strides
                  ) -> tuple[tuple[int, int], tuple[int, int]]:
  """((top, bottom), (left, right)) of an int, "SAME", "VALID" or pairs.
  SAME puts the odd zero at the end, as XLA and TensorFlow do."""
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  if padding == "VALID":
    return ((0, 0), (0, 0))
  if padding == "SAME":
    pairs = []
    for size, k, s in zip(x_shape[1:3], kernel_shape[:2], strides):
      total = max((-(-size // s) - 1) * s + k - size, 0)
      pairs.append((total // 2, total - total // 2))
    return tuple(pairs)
  if isinstance(padding, (tuple, list)) and len(padding) == 2:
    return tuple((int(p), int(p)) if isinstance(p, int) else
                 (int(p[0]), int(p[1])) for p in padding)
  raise ValueError(f"padding={padding!r} is not valid; give an int, SAME, "
                   "VALID or ((top, bottom), (left, right))")


def _windows(x, kernel, strides, pads):
  """((i, j), the input under kernel tap (i, j) at every output place)."""
  kh, kw = kernel.shape[:2]
  sh, sw = strides
  if any(p for pair in pads for p in pair):
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  oh = (x.shape[1] - kh) // sh + 1
  ow = (x.shape[2] - kw) // sw + 1
  rows, cols = sh * (oh - 1) + 1, sw * (ow - 1) + 1
  return [((i, j), x[:, i:i + rows:sh, j:j + cols:sw])
          for i in range(kh) for j in range(kw)]


def _weighted_sum(x, kernel, strides, pads):
  """The depthwise convolution as a sum of shifted inputs weighted per
  channel, in float32 at least. Summed in bfloat16 on XLA:CPU, MobileNet
  v2's half-precision train step ran at a quarter of its fp32 rate; in
  float32 it runs 4.2x faster (benchmarks/README.md)."""
  wide = jnp.promote_types(x.dtype, jnp.float32)
  total = sum(w * kernel[i, j, 0].astype(wide) for (i, j), w in
              _windows(x.astype(wide), kernel, strides, pads))
  return total.astype(jnp.result_type(x, kernel))


def _matmul(x, kernel, strides, pads):
  kh, kw, cin, cout = kernel.shape
  windows = [w for _, w in _windows(x, kernel, strides, pads)]
  patches = windows[0] if len(windows) == 1 else jnp.concatenate(
      windows, axis=-1)
  return patches @ kernel.reshape(kh * kw * cin, cout)
