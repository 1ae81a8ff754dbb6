"""oneDNN convolutions for XLA:CPU, through jax.ffi with their own VJP.

`conv2d(x, kernel, strides, padding)` computes what lax.conv_general_dilated
computes for NHWC inputs, HWIO kernels and one group. conv.cc is compiled on
first use with the system C++ compiler against the oneDNN wheel
(`onednn-cpu-gomp`, `onednn-devel-cpu-gomp`) and cached under
~/.cache/cnnflax (or $CNNFLAX_CACHE). `available()` says whether that worked;
callers fall back to XLA's own convolution when it did not.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import subprocess
import sys
import sysconfig
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging


SOURCE = pathlib.Path(__file__).with_name("conv.cc")
TARGETS = {"forward": "CnnflaxConvForward",
           "backward_data": "CnnflaxConvBackwardData",
           "backward_weights": "CnnflaxConvBackwardWeights"}


def _prefixes() -> list[pathlib.Path]:
  """Where pip put the oneDNN wheel's lib/ and include/."""
  paths = [sys.prefix, sysconfig.get_config_var("userbase") or "",
           os.path.expanduser("~/.local")]
  return [pathlib.Path(p) for p in dict.fromkeys(paths) if p]


def _onednn_prefix() -> pathlib.Path | None:
  for prefix in _prefixes():
    if ((prefix / "include/oneapi/dnnl/dnnl.hpp").exists()
        and (prefix / "lib/libdnnl.so").exists()):
      return prefix
  return None


def _library_path(prefix: pathlib.Path) -> pathlib.Path:
  """The cached build of conv.cc for this source, jaxlib and oneDNN."""
  stamp = hashlib.sha256(SOURCE.read_bytes())
  stamp.update(jax.ffi.include_dir().encode())
  stamp.update(str(prefix).encode())
  cache = pathlib.Path(os.environ.get(
      "CNNFLAX_CACHE", os.path.expanduser("~/.cache/cnnflax")))
  return cache / f"conv_{stamp.hexdigest()[:16]}.so"


def _build(prefix: pathlib.Path, target: pathlib.Path) -> None:
  target.parent.mkdir(parents=True, exist_ok=True)
  # Build beside the target, then rename: parallel test workers may race.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
  os.close(fd)
  cmd = [os.environ.get("CXX", "g++"), "-O2", "-std=c++17", "-shared",
         "-fPIC", f"-I{jax.ffi.include_dir()}", f"-I{prefix / 'include'}",
         str(SOURCE), "-o", tmp, f"-L{prefix / 'lib'}", "-ldnnl",
         f"-Wl,-rpath,{prefix / 'lib'}"]
  try:
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@functools.cache
def available() -> bool:
  """Builds (once) and registers the oneDNN convolutions; False, with the
  reason logged, where there is no oneDNN wheel or no compiler."""
  prefix = _onednn_prefix()
  if prefix is None:
    logging.warning("cnnflax: oneDNN not found (pip install onednn-cpu-gomp "
                    "onednn-devel-cpu-gomp); using XLA's convolutions")
    return False
  path = _library_path(prefix)
  try:
    if not path.exists():
      _build(prefix, path)
    library = ctypes.cdll.LoadLibrary(str(path))
  except (OSError, subprocess.CalledProcessError) as e:
    detail = getattr(e, "stderr", "") or str(e)
    logging.warning("cnnflax: could not build the oneDNN convolution (%s); "
                    "using XLA's convolutions", detail.strip()[-500:])
    return False
  for name, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(
        f"cnnflax_conv_{name}", jax.ffi.pycapsule(getattr(library, symbol)),
        platform="cpu")
  return True


def _call(name, shape, dtype, a, b, strides, padding):
  (pt, pb), (pl, pr) = padding
  attrs = dict(stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
               pad_top=np.int64(pt), pad_bottom=np.int64(pb),
               pad_left=np.int64(pl), pad_right=np.int64(pr))
  # Inside shard_map the result varies over the mesh axes the activation
  # `a` varies over (the first argument is always an activation).
  a_type = jax.typeof(a)
  result = jax.ShapeDtypeStruct(shape, dtype, sharding=a_type.sharding,
                                manual_axis_type=a_type.manual_axis_type)
  call = jax.ffi.ffi_call(f"cnnflax_conv_{name}", result)
  return call(a, b, **attrs)


def output_shape(x_shape, k_shape, strides, padding) -> tuple[int, ...]:
  n, h, w, _ = x_shape
  kh, kw, _, o = k_shape
  (pt, pb), (pl, pr) = padding
  return (n, (h + pt + pb - kh) // strides[0] + 1,
          (w + pl + pr - kw) // strides[1] + 1, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """NHWC x HWIO -> NHWC, one group; strides (h, w), padding ((top, bottom),
  (left, right)). Same result as lax.conv_general_dilated."""
  shape = output_shape(x.shape, kernel.shape, strides, padding)
  return _call("forward", shape, x.dtype, x, kernel, strides, padding)


def _conv2d_fwd(x, kernel, strides, padding):
  return conv2d(x, kernel, strides, padding), (x, kernel)


def _conv2d_bwd(strides, padding, saved, dy):
  x, kernel = saved
  dx = _call("backward_data", x.shape, x.dtype, dy, kernel, strides, padding)
  dk = _call("backward_weights", kernel.shape, kernel.dtype, x, dy, strides,
             padding)
  return dx, dk


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def supports(x: jax.Array, kernel: jax.Array) -> bool:
  """Whether conv2d can run this convolution (NHWC, f32 or bf16, oneDNN
  built). The backend chooses it for XLA:CPU only."""
  return (x.ndim == 4 and x.dtype in (jnp.float32, jnp.bfloat16)
          and kernel.dtype == x.dtype and available())
