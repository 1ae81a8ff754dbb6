"""Every platform-specific choice of a run, resolved once from config.backend.

  platform      auto: where this process runs (jax's default backend); or
                cpu | cuda | rocm | tpu, or several (`cuda,tpu`) to lower a
                run's steps for them from another machine
  conv          auto: oneDNN's convolutions on CPU where they are built, else
                XLA's; or onednn | xla | matmul (see kernels.py)
  scanned_conv  convolutions inside scanned stages; auto: oneDNN's where conv
                is onednn, else matmul on CPU (XLA:CPU's convolution is slow
                inside loops), xla elsewhere
  depthwise     auto: matmul (the weighted sum) on CPU, xla elsewhere
  batch_norm    auto: vjp (norm.py's hand-written VJP); or autodiff
  allocator     auto | tcmalloc | thp | system (allocator.py); chosen when
                the process starts, so set it on the command line
                (--config.backend.allocator=...) or with CNNFLAX_ALLOCATOR
  xla_defaults  add CPU_XLA_FLAGS to XLA_FLAGS before jax starts its backend
                (CNNFLAX_XLA_DEFAULTS=0 makes False the default)

`resolve` turns the section into a `Backend`: the models get its `kernels`
(run.build_model), and `record()` is what config.json keeps under
`backend`, so that a workdir says what ran. Entry points call `start()`
first, which re-executes the process with the chosen allocator.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Mapping

from cnnflax.backend import allocator  # no jax: start() runs before it

if TYPE_CHECKING:
  from cnnflax.backend.kernels import Kernels

# The platform names that `Traced.lower(lowering_platforms=...)` takes.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")

# XLA:CPU options that make convolution nets train faster on CPUs (measured
# in benchmarks/): Eigen convolutions instead of YNNPACK's, and the compile
# preset that stops XLA from fusing whole residual chains into transposes.
# The third keeps the optimisation barriers of jax.checkpoint (remat): by
# default XLA:CPU removes them and merges the recomputation back into the
# forward pass, so the memory-efficient DenseNet saved nothing (DenseNet-BC
# L=190 k=40, batch 64: 33.4 GB of temporaries either way, 12.5 GB with it).
# They only touch the CPU backend; a value the user gave for one wins.
CPU_XLA_FLAGS = {
    "--xla_cpu_opt_preset": "FAST_COMPILE",
    "--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution",
    "--xla_disable_hlo_passes": "cse_barrier_expander",
}


@dataclasses.dataclass(frozen=True)
class Backend:
  platforms: tuple[str, ...]
  kernels: Kernels
  allocator: str  # what this process runs with
  xla_flags: tuple[str, ...]  # XLA_FLAGS as jax's backend got them
  # The cores this process may run on: XLA:CPU sizes its thread pools to
  # them, and a sweep may pin its runs to a share (experiments/sweep.py).
  cpu_cores: int = 0

  def record(self) -> dict:
    """config.json's `backend`: the resolved values."""
    return {"platform": ",".join(self.platforms),
            **dataclasses.asdict(self.kernels),
            "allocator": self.allocator, "xla_flags": list(self.xla_flags),
            "cpu_cores": self.cpu_cores}


def start() -> None:
  """The entry points' first call, before jax loads: re-executes the process
  once with the chosen allocator (nothing before this call survives)."""
  allocator.use_fast(_argv_value("--config.backend.allocator"))


def _argv_value(flag: str) -> str | None:
  """`flag`'s value on the command line (--flag=value or --flag value)."""
  args = sys.argv[1:]
  for i, arg in enumerate(args):
    if arg.startswith(flag + "="):
      return arg.split("=", 1)[1]
    if arg == flag and i + 1 < len(args):
      return args[i + 1]
  return None


def resolve(section: Mapping, check_process: bool = True) -> Backend:
  """The section's choices for its platforms, validated (ValueError naming
  the field). With `check_process`, also this process's: the XLA flags are
  set if jax's backend has not started yet, and the allocator must be the
  one the section names."""
  flags = os.environ.get("XLA_FLAGS", "")
  active = allocator.kind()
  if check_process:  # first: asking jax for its platform starts its backend
    flags = _apply_xla_flags(bool(section["xla_defaults"]))
    _check_allocator(section["allocator"], active)
  platforms = parse_platforms(section["platform"])
  kernels = resolve_kernels(section, platforms)
  return Backend(platforms, kernels, active, tuple(flags.split()),
                 len(os.sched_getaffinity(0)))


def parse_platforms(value: str) -> tuple[str, ...]:
  if value == "auto":
    import jax
    return (jax.default_backend(),)
  names = tuple(p.strip() for p in value.split(","))
  bad = [p for p in names if p not in PLATFORMS]
  if bad or not names:
    raise ValueError(f"backend.platform={value!r} is not valid; choose auto "
                     f"or of: {', '.join(PLATFORMS)} (a comma list lowers "
                     "for several)")
  if "cpu" in names and len(names) > 1:
    raise ValueError(f"backend.platform={value!r} mixes CPU and "
                     "accelerators, which choose different kernels; lower "
                     "for them separately")
  return names


def resolve_kernels(section: Mapping, platforms: tuple[str, ...]) -> Kernels:
  from cnnflax.backend.kernels import Kernels
  cpu = platforms == ("cpu",)
  conv = section["conv"]
  if conv == "auto":
    conv = "onednn" if cpu and _onednn_built() else "xla"
  elif conv == "onednn" and not cpu:
    raise ValueError(f"backend.conv='onednn' runs on XLA:CPU only, not on "
                     f"{','.join(platforms)}; use auto or xla")
  elif conv == "onednn" and not _onednn_built():
    raise ValueError("backend.conv='onednn' but the oneDNN convolutions "
                     "could not be built here (the log says why); use auto "
                     "or xla")
  scanned = section["scanned_conv"]
  if scanned == "auto":
    scanned = "onednn" if conv == "onednn" else "matmul" if cpu else "xla"
  depthwise = section["depthwise"]
  if depthwise == "auto":
    depthwise = "matmul" if cpu else "xla"
  batch_norm = section["batch_norm"]
  max_pool = section.get("max_pool", "auto")
  if max_pool == "auto":
    max_pool = "windows" if cpu else "xla"
  return Kernels(conv, scanned, depthwise,
                 "vjp" if batch_norm == "auto" else batch_norm, max_pool)


def _onednn_built() -> bool:
  from cnnflax.backend import native
  return native.available()


def with_xla_defaults(flags: str, on: bool = True) -> str:
  """XLA_FLAGS with CPU_XLA_FLAGS added (on) or removed (off); a value the
  user gave for one of them is kept either way."""
  tokens = flags.split()
  ours = {f"{k}={v}" for k, v in CPU_XLA_FLAGS.items()}
  if on:
    tokens += [f"{k}={v}" for k, v in CPU_XLA_FLAGS.items()
               if not any(t.split("=")[0] == k for t in tokens)]
  else:
    tokens = [t for t in tokens if t not in ours]
  return " ".join(tokens)


def _apply_xla_flags(on: bool) -> str:
  """Sets XLA_FLAGS where jax's backend has not read them yet; returns what
  the backend runs with."""
  from absl import logging
  from jax._src import xla_bridge
  current = os.environ.get("XLA_FLAGS", "")
  wanted = with_xla_defaults(current, on)
  if wanted == current:
    return current
  if not xla_bridge.backends_are_initialized():
    os.environ["XLA_FLAGS"] = wanted
    return wanted
  logging.warning("backend.xla_defaults=%s is not in effect: jax started its "
                  "backend with XLA_FLAGS=%r before the run was set up", on,
                  current)
  return current


def _check_allocator(choice: str, active: str) -> None:
  if choice not in allocator.CHOICES:
    raise ValueError(f"backend.allocator={choice!r} is not valid; choose "
                     f"one of: {', '.join(allocator.CHOICES)}")
  if choice not in ("auto", active):
    raise ValueError(
        f"backend.allocator={choice!r} but this process runs with {active}: "
        "the allocator is chosen when the process starts; pass "
        f"--config.backend.allocator={choice} on the command line or set "
        f"{allocator.ENV}={choice}")
