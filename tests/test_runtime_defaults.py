"""cnnflax's process-wide CPU defaults, set on import."""
import os
import subprocess
import sys

import pytest

# Allocates, touches and frees 64 MB twice; prints the minor page faults of
# the second round (a fresh mmap faults in all ~16k pages again).
PROBE = """
import ctypes, resource, cnnflax
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
def round_():
  p = libc.malloc(64 << 20)
  ctypes.memset(p, 1, 64 << 20)
  libc.free(p)
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def second_round_faults(**env) -> int:
  out = subprocess.run([sys.executable, "-c", PROBE], check=True, text=True,
                       capture_output=True, env={**os.environ, **env})
  return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the malloc defaults are glibc's")
def test_malloc_defaults_keep_large_freed_blocks_mapped():
  assert second_round_faults() < 1000
  assert second_round_faults(CNNFLAX_MALLOC_DEFAULTS="0") > 10000
