"""Where a train step's time goes, one operation at a time, fp32 against bf16.

  python benchmarks/op_costs.py [--batch=16] [--repeats=5] [--ops=a,b]

Each row times one operation of the ImageNet families at a shape it has in
them, forward and backward (the gradient of its summed output with respect
to its input), jitted with cnnflax's XLA options and kernels, best of
--repeats calls after a compiling one; in float32 and in bfloat16 (what
`half_precision` runs). A bf16/fp32 ratio above 1 is an operation that
`half_precision` makes slower; the share of a model's step that such
operations take is what makes the whole step slower. Prints a markdown table.
"""
from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cnnflax import backend  # noqa: E402  (sets nothing yet)

os.environ["XLA_FLAGS"] = backend.with_xla_defaults(
    os.environ.get("XLA_FLAGS", ""))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

from cnnflax.backend.kernels import Kernels  # noqa: E402
from cnnflax.models import layers, norm  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 16, "Images per call.")
flags.DEFINE_integer("repeats", 5, "Timed calls; the best counts.")
flags.DEFINE_list("ops", [], "Only these rows (default: all).")

KERNELS = Kernels(conv="onednn", scanned_conv="onednn", depthwise="matmul")


def conv(k, cout, stride=1):
  def op(x):
    kernel = jnp.ones((k, k, x.shape[-1], cout), x.dtype) * 0.01
    return KERNELS.conv2d(x, kernel, (stride, stride), "SAME", 1)
  return op


def depthwise(x):
  kernel = jnp.ones((3, 3, 1, x.shape[-1]), x.dtype) * 0.1
  return KERNELS.conv2d(x, kernel, (1, 1), 1, x.shape[-1])


def max_pool(window, stride):
  return lambda x: nn.max_pool(x, (window, window), (stride, stride), "SAME")


def avg_pool(x):
  return nn.avg_pool(x, (3, 3), (1, 1), "SAME", count_include_pad=False)


def concat(x):
  parts = [x[..., :64] * 1.5, x[..., 64:192] * 0.5, x[..., 192:224] + 1,
           x[..., 224:] - 1]
  return jnp.concatenate(parts, axis=-1)


def bn_relu(x):
  scale = jnp.ones(x.shape[-1:], jnp.float32)
  return norm.normalize(x, scale, jnp.zeros_like(scale), True, 1e-5, None,
                        x.dtype)[0]  # (y, mean, var)


def dense(x):
  w = jnp.ones((x.shape[-1], 4096), x.dtype) * 1e-3
  return x @ w


def lrn(x):
  return layers.LRN(size=5, k=2.0, alpha=1e-4, beta=0.75).apply({}, x)


OPS = {  # name: (function, input shape without the batch)
    "conv3x3 56x56x64->64 (onednn)": (conv(3, 64), (56, 56, 64)),
    "conv1x1 28x28x256->128 (onednn)": (conv(1, 128), (28, 28, 256)),
    "conv1x7 17x17x192->192 (onednn)": (
        lambda x: KERNELS.conv2d(x, jnp.ones((1, 7, 192, 192), x.dtype)
                                 * 0.01, (1, 1), "SAME", 1), (17, 17, 192)),
    "depthwise3x3 56x56x144 (matmul)": (depthwise, (56, 56, 144)),
    "max_pool 3x3/2 112x112x64": (max_pool(3, 2), (112, 112, 64)),
    "max_pool 3x3/1 28x28x192": (max_pool(3, 1), (28, 28, 192)),
    "max_pool 2x2/2 112x112x128 (VGG)": (max_pool(2, 2), (112, 112, 128)),
    "avg_pool 3x3/1 35x35x288": (avg_pool, (35, 35, 288)),
    "concat 4 branches 28x28x256": (concat, (28, 28, 256)),
    "bn+relu 56x56x256 (vjp)": (bn_relu, (56, 56, 256)),
    "relu6 56x56x144": (jax.nn.relu6, (56, 56, 144)),
    "dense 4096->4096": (dense, (4096,)),
    "lrn 55x55x96": (lrn, (55, 55, 96)),
}


def seconds(op, shape, dtype) -> float:
  x = jnp.ones((FLAGS.batch, *shape), dtype)
  step = jax.jit(jax.grad(lambda v: op(v).astype(jnp.float32).sum()))
  step(x).block_until_ready()
  best = float("inf")
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    step(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return best


def main(argv):
  del argv
  print(f"batch {FLAGS.batch}, best of {FLAGS.repeats}, forward + backward, "
        f"ms; jax {jax.__version__}")
  print("| operation | fp32 ms | bf16 ms | bf16 / fp32 |")
  print("|---|---:|---:|---:|")
  for name, (op, shape) in OPS.items():
    if FLAGS.ops and not any(o in name for o in FLAGS.ops):
      continue
    fp32 = seconds(op, shape, jnp.float32)
    bf16 = seconds(op, shape, jnp.bfloat16)
    print(f"| {name} | {fp32 * 1e3:.2f} | {bf16 * 1e3:.2f} | "
          f"{bf16 / fp32:.2f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
