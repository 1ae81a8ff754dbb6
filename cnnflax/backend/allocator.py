"""The process's memory allocator, chosen before jax starts.

XLA:CPU allocates each step's temporaries as one block on a worker thread
(ResNet-20 at batch 128: 240 MB; DenseNet-BC-100: 4.3 GB) and frees it when
the step ends. glibc serves a block that big from a fresh mmap and unmaps it
on free, so every step faults all of its pages in again: for ResNet-20, 61k
page faults and a quarter of the step's CPU time spent in the kernel.
tcmalloc keeps freed memory for reuse (no faults after the first step).
Where there is no tcmalloc, glibc's `hugetlb` tunable backs those mmaps with
2 MB transparent huge pages, 512x fewer faults.

Both are chosen when a process starts (LD_PRELOAD, GLIBC_TUNABLES), so the
entry points (main.py, python -m cnnflax.benchmark ...) call
`cnnflax.backend.start()` first, which re-executes them once with them set.
config.backend.allocator (given on the command line), else
CNNFLAX_ALLOCATOR, picks:

  auto      tcmalloc where found, else glibc with huge pages (the default)
  tcmalloc  tcmalloc, or a clear error where it is not installed
  thp       glibc with huge pages
  system    whatever the process started with
"""
from __future__ import annotations

import ctypes.util
import glob
import os
import sys
from typing import Callable, Mapping

ENV = "CNNFLAX_ALLOCATOR"
CHOICES = ("auto", "tcmalloc", "thp", "system")
# Set in the re-executed process: what it runs with, and "do not re-exec".
ACTIVE = "CNNFLAX_ALLOCATOR_ACTIVE"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
HUGETLB = "glibc.malloc.hugetlb=1"
# Allocators a user may have preloaded themselves: theirs wins.
KNOWN_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")
# tcmalloc prints a warning for every block past this size; DenseNet's
# 4.3 GB of temporaries are expected, not a leak.
REPORT_THRESHOLD = "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"
INSTALL_HINT = ("apt install libtcmalloc-minimal4, or conda install "
                "gperftools")


def find_tcmalloc() -> str | None:
  """The tcmalloc library: the system's, else one in this environment."""
  for name in ("tcmalloc_minimal", "tcmalloc"):
    found = ctypes.util.find_library(name)
    if found:
      return found
  prefixes = dict.fromkeys([sys.prefix, os.environ.get("CONDA_PREFIX", "")])
  for prefix in filter(None, prefixes):
    for path in sorted(glob.glob(os.path.join(prefix, "lib",
                                              "libtcmalloc*.so*"))):
      if "debug" not in os.path.basename(path):
        return path
  return None


def huge_pages_available() -> bool:
  """glibc (the tunable's reader) and a kernel that grants huge pages on
  madvise, or always."""
  try:
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    with open(THP_SETTING) as f:
      setting = f.read()
  except (OSError, ValueError, AttributeError):
    return False
  return libc.startswith("glibc") and "[never]" not in setting


def plan(environ: Mapping[str, str], tcmalloc: Callable[[], str | None],
         huge_pages: Callable[[], bool]) -> dict[str, str]:
  """The environment to re-execute with; {} where nothing is to change."""
  choice = environ.get(ENV, "auto")
  if choice not in CHOICES:
    raise ValueError(f"{ENV}={choice} is not known; choose one of "
                     f"{', '.join(CHOICES)}")
  preload = environ.get("LD_PRELOAD", "")
  if (choice == "system" or ACTIVE in environ
      or any(name in preload for name in KNOWN_ALLOCATORS)):
    return {}
  if choice in ("auto", "tcmalloc"):
    path = tcmalloc()
    if path:
      return {"LD_PRELOAD": " ".join(filter(None, [path, preload])),
              REPORT_THRESHOLD: environ.get(REPORT_THRESHOLD, str(1 << 40)),
              ACTIVE: f"tcmalloc ({path})"}
    if choice == "tcmalloc":
      raise ValueError(f"{ENV}=tcmalloc but no tcmalloc library was found; "
                       f"install it ({INSTALL_HINT}) or set {ENV}=auto")
  if huge_pages():
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" not in tunables:
      tunables = ":".join(filter(None, [tunables, HUGETLB]))
    return {"GLIBC_TUNABLES": tunables,
            ACTIVE: "glibc malloc with transparent huge pages"}
  if choice == "thp":
    raise ValueError(f"{ENV}=thp but this system has no glibc or no "
                     f"transparent huge pages ({THP_SETTING}); set {ENV}=auto")
  return {}


def use_fast(choice: str | None = None) -> None:
  """Re-executes this program once with the allocator `choice` (default:
  $CNNFLAX_ALLOCATOR, else auto) names where it helps. Call it first thing
  in an entry point: nothing before it survives."""
  environ = dict(os.environ) if choice is None else {**os.environ,
                                                     ENV: choice}
  try:
    extra = plan(environ, find_tcmalloc, huge_pages_available)
  except ValueError as e:
    sys.exit(f"error: {e}")
  if not extra:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
              {**os.environ, **extra})
  except OSError as e:  # carry on with the allocator we have
    print(f"cnnflax: could not re-execute with {extra[ACTIVE]}: {e}",
          file=sys.stderr)


def describe() -> str:
  """The allocator this process runs with, for the log."""
  return os.environ.get(ACTIVE, "the C library's malloc")


def kind() -> str:
  """The allocator this process runs with, as config.backend.allocator
  names it: tcmalloc, thp or system (or an allocator the user preloaded)."""
  active = os.environ.get(ACTIVE, "")
  if active.startswith("tcmalloc"):
    return "tcmalloc"
  if "huge pages" in active:
    return "thp"
  preload = os.environ.get("LD_PRELOAD", "")
  return next((name for name in KNOWN_ALLOCATORS if name in preload),
              "system")
