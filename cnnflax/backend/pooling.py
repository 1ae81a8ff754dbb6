"""Max pooling as strided slices with its own VJP ("windows").

XLA:CPU runs a max pool's gradient (select_and_scatter) slowly: forward and
backward of a 3x3/2 pool over 16x112x112x64 take about 230 ms there, more
than ten 3x3 convolutions of the same batch at 56x56x64
(benchmarks/op_costs.py). Here the forward pass is the elementwise maximum
of the window's k*k strided slices, and the backward pass routes each
output's gradient to the first maximum of its window, in the window's
row-major order, as select_and_scatter does: the same values and the same
gradients, ties included, 2-6x faster on that CPU.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from cnnflax.backend.kernels import padding_pairs


def pads_and_outputs(shape, window, strides, padding):
  """Per spatial dim: (low, high) padding and output size. `padding`:
  "SAME", "VALID" or ((top, bottom), (left, right))."""
  pads = padding_pairs(padding, shape, window, strides)
  outs = [(n + lo + hi - k) // s + 1
          for n, k, s, (lo, hi) in zip(shape[1:3], window, strides, pads)]
  return pads, outs


def _padded(x, pads):
  return jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)


def _taps(xp, window, strides, outs):
  """((i, j), the padded input under window tap (i, j) at every output)."""
  (kh, kw), (sh, sw), (oh, ow) = window, strides, outs
  for i in range(kh):
    for j in range(kw):
      yield (i, j), xp[:, i:i + sh * (oh - 1) + 1:sh,
                       j:j + sw * (ow - 1) + 1:sw]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: tuple[int, int],
             strides: tuple[int, int], padding) -> jax.Array:
  """NHWC max pooling; nn.max_pool's result."""
  pads, outs = pads_and_outputs(x.shape, window, strides, padding)
  taps = [t for _, t in _taps(_padded(x, pads), window, strides, outs)]
  return functools.reduce(jnp.maximum, taps)


def _forward(x, window, strides, padding):
  y = max_pool(x, window, strides, padding)
  return y, (x, y)


def _backward(window, strides, padding, saved, g):
  x, y = saved
  pads, outs = pads_and_outputs(x.shape, window, strides, padding)
  xp = _padded(x, pads)
  (sh, sw), (oh, ow) = strides, outs
  zero = jnp.zeros((), g.dtype)
  taken = jnp.zeros(y.shape, bool)
  dxp = jnp.zeros(xp.shape, g.dtype)
  for (i, j), tap in _taps(xp, window, strides, outs):
    first = (tap == y) & ~taken  # the window's first maximum takes it all
    taken = taken | first
    # The transpose of the strided slice: zeros between and around.
    spread = [(0, 0, 0),
              (i, xp.shape[1] - i - (sh * (oh - 1) + 1), sh - 1),
              (j, xp.shape[2] - j - (sw * (ow - 1) + 1), sw - 1),
              (0, 0, 0)]
    dxp = dxp + lax.pad(jnp.where(first, g, zero), zero, spread)
  h, w = x.shape[1:3]
  return (dxp[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + w],)


max_pool.defvjp(_forward, _backward)
