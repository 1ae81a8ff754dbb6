"""Memory: what a compiled step plans to use, and whether the machine has it.

XLA plans every buffer of a compiled program before it runs (its memory
analysis). A train step whose plan exceeds what the devices have would fail
after compiling with RESOURCE_EXHAUSTED, or, on a CPU, get the process
killed by the kernel; `check_step` refuses it first, with the figures and
the fields that shrink it. Where the plan or the memory is unknown it says
nothing rather than guess.
"""
from __future__ import annotations

import resource

import jax
import ml_collections

from cnnflax.errors import ConfigError

GB = 1e9


def compiled_memory(compiled) -> dict:
  """temp, argument, output and alias bytes of a compiled step (per
  device), as XLA's buffer assignment plans them; {} where unknown."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}  # some backends do not implement it
  if stats is None:
    return {}
  kinds = ("temp", "argument", "output", "alias")
  return {f"{k}_bytes": int(getattr(stats, f"{k}_size_in_bytes"))
          for k in kinds}


def peak_memory() -> dict:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return {"peak_device_bytes": int(stats["peak_bytes_in_use"])}
  # CPU backends report nothing; the process's peak resident set stands in.
  return {"peak_host_rss_bytes":
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def host_available_bytes() -> int | None:
  """Memory this process can still take: the kernel's MemAvailable, capped
  by the cgroup's limit less its usage (containers, SLURM jobs)."""
  free = _meminfo_available()
  cap = _cgroup_headroom()
  known = [v for v in (free, cap) if v is not None]
  return min(known) if known else None


def _meminfo_available() -> int | None:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _cgroup_headroom() -> int | None:
  for limit_file, usage_file in (
      ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
      ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
       "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
    try:
      limit = open(limit_file).read().strip()
      usage = int(open(usage_file).read().strip())
    except (OSError, ValueError):
      continue
    if limit == "max" or int(limit) >= 1 << 60:  # no limit set
      return None
    return max(int(limit) - usage, 0)
  return None


def need_and_room(plan: dict, devices: list) -> tuple[int, int, str] | None:
  """(bytes the step still needs, bytes there are, where) or None.

  Accelerators: the whole plan per device against its memory limit. CPU
  devices share the host: the arguments (the state, the data) are in
  memory already, so what the step adds, times the local devices, against
  what the host has free."""
  # Other hosts' devices cannot be asked (and plan alike).
  local = [d for d in devices if d.process_index == jax.process_index()]
  if not plan or not local:
    return None
  stats = local[0].memory_stats() or {}
  added = plan["temp_bytes"] + plan["output_bytes"] - plan["alias_bytes"]
  if "bytes_limit" in stats:
    need = added + plan["argument_bytes"]
    return need, int(stats["bytes_limit"]), f"per {local[0].platform} device"
  room = host_available_bytes()
  if room is None:
    return None
  return added * len(local), room, "in host memory"


def check_step(compiled, devices: list, config: ml_collections.ConfigDict,
               model_fields: list[str]) -> None:
  """Raises ConfigError when the compiled step cannot fit."""
  plan = compiled_memory(compiled)
  figures = need_and_room(plan, devices)
  if figures is None:
    return
  need, room, where = figures
  if need <= room:
    return
  raise ConfigError(
      f"the train step needs {need / GB:.1f} GB {where} by XLA's plan "
      f"(temporaries {plan['temp_bytes'] / GB:.1f} GB) but "
      f"{room / GB:.1f} GB {'is the limit' if 'device' in where else 'is free'}"
      f"; {_remedies(config, model_fields)}")


def _remedies(config: ml_collections.ConfigDict, model_fields: list[str]
              ) -> str:
  """The fields that shrink a step, those this run can still change."""
  steps = [f"lower config.batch_size (now {config.batch_size})"]
  for field in ("memory_efficient", "scan_blocks"):
    if field in model_fields and not config.model.get(field):
      steps.append(f"set config.model.{field}=True")
  if not config.half_precision:
    steps.append("set config.half_precision=True")
  return ", or ".join(steps)
