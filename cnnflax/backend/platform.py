"""The platforms that programs are being built for.

Implementation choices that depend on the hardware (oneDNN convolutions on
CPU, matmul convolutions inside scanned stages on CPU) are made while a step
is traced. They ask `is_cpu()`, not `jax.default_backend()`, so that a step
lowered for other platforms (`with lowering_for("cuda", "tpu"):`, e.g. to
check on a CPU machine that it lowers there) carries those platforms'
choices. One trace can serve several platforms only where they choose alike;
`is_cpu` refuses a mix of CPU and accelerators.

The platforms must stay the same while one function is traced: jax caches
traces without looking at them.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import jax

# The platform names that `Traced.lower(lowering_platforms=...)` takes.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")

_lowering_for: contextvars.ContextVar[tuple[str, ...]] = (
    contextvars.ContextVar("cnnflax_lowering_for", default=()))


def targets() -> tuple[str, ...]:
  """The platforms being built for: those `lowering_for` names, else this
  process's default backend ("cpu", "gpu" or "tpu")."""
  return _lowering_for.get() or (jax.default_backend(),)


def is_cpu() -> bool:
  """Whether the program being built runs on CPU."""
  kinds = {p == "cpu" for p in targets()}
  if len(kinds) > 1:
    raise ValueError(f"building for {', '.join(targets())} at once, but CPU "
                     "and accelerators choose different implementations; "
                     "lower for them separately")
  return kinds.pop()


@contextlib.contextmanager
def lowering_for(*platforms: str) -> Iterator[None]:
  """Traces inside this block make the choices of `platforms`."""
  bad = [p for p in platforms if p not in PLATFORMS]
  if bad or not platforms:
    raise ValueError(f"platforms {platforms!r} are not valid; choose from "
                     f"{', '.join(PLATFORMS)}")
  token = _lowering_for.set(tuple(platforms))
  try:
    yield
  finally:
    _lowering_for.reset(token)
