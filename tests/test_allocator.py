"""cnnflax.backend.allocator: which malloc the entry points re-execute with."""
import json
import os
import subprocess
import sys

import pytest

from cnnflax.backend import allocator
from tests.conftest import ROOT

TC = "/opt/lib/libtcmalloc_minimal.so.4"


def plan(environ, tcmalloc=TC, huge_pages=True):
  return allocator.plan(environ, lambda: tcmalloc, lambda: huge_pages)


def test_auto_prefers_tcmalloc_and_keeps_the_users_preloads():
  env = plan({"LD_PRELOAD": "/x/libfoo.so"})
  assert env["LD_PRELOAD"] == f"{TC} /x/libfoo.so"
  assert int(env[allocator.REPORT_THRESHOLD]) >= 1 << 40
  assert env[allocator.ACTIVE] == f"tcmalloc ({TC})"


def test_auto_falls_back_to_huge_pages_and_keeps_the_users_tunables():
  env = plan({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, tcmalloc=None)
  assert env["GLIBC_TUNABLES"] == \
      "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert "huge pages" in env[allocator.ACTIVE]
  assert "LD_PRELOAD" not in env
  assert plan({allocator.ENV: "thp"})["GLIBC_TUNABLES"] == allocator.HUGETLB


@pytest.mark.parametrize("environ, tcmalloc, huge_pages", [
    ({allocator.ENV: "system"}, TC, True),
    ({allocator.ACTIVE: "tcmalloc (x)"}, TC, True),  # already re-executed
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, TC, True),  # the user's
    ({}, None, False),  # nothing here would help
])
def test_nothing_to_change(environ, tcmalloc, huge_pages):
  assert plan(environ, tcmalloc, huge_pages) == {}


@pytest.mark.parametrize("environ, tcmalloc, huge_pages, message", [
    ({allocator.ENV: "jemalloc"}, TC, True,
     "CNNFLAX_ALLOCATOR=jemalloc is not known; choose one of auto, tcmalloc"),
    ({allocator.ENV: "tcmalloc"}, None, True,
     "no tcmalloc library was found; install it (apt install"),
    ({allocator.ENV: "thp"}, TC, False, "no transparent huge pages"),
])
def test_bad_choices_name_the_variable_and_the_fix(environ, tcmalloc,
                                                   huge_pages, message):
  with pytest.raises(ValueError, match=r"^.*CNNFLAX_ALLOCATOR.*$") as e:
    plan(environ, tcmalloc, huge_pages)
  assert message in str(e.value)


# Runs use_fast(), then allocates, touches and frees 256 MB on a thread
# (where XLA allocates a step's temporaries) twice; prints what it ran with
# and the page faults of the second round.
PROBE = """
import ctypes, json, os, resource, sys, threading
from cnnflax.backend import allocator
allocator.use_fast()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
def one_round():
  p = libc.malloc(256 << 20)
  ctypes.memset(p, 1, 256 << 20)
  libc.free(p)
def on_a_thread():
  t = threading.Thread(target=one_round); t.start(); t.join()
on_a_thread()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
on_a_thread()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"argv": sys.argv, "allocator": allocator.describe(),
                  "faults": faults}))
"""


def probe(**env):
  environ = {k: v for k, v in os.environ.items()
             if k not in (allocator.ACTIVE, allocator.ENV, "LD_PRELOAD")}
  proc = subprocess.run([sys.executable, "-c", PROBE, "arg1"], cwd=ROOT,
                        capture_output=True, text=True,
                        env={**environ, **env}, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.splitlines()[-1])


def test_use_fast_reexecutes_once_and_stops_the_page_faults():
  """256 MB is 65,536 pages: glibc faults them all in again each round;
  with tcmalloc (none) or huge pages (128) it does not."""
  expected = allocator.plan(os.environ | {allocator.ENV: "auto"},
                            allocator.find_tcmalloc,
                            allocator.huge_pages_available)
  assert expected, ("neither tcmalloc nor transparent huge pages here; "
                    f"install tcmalloc ({allocator.INSTALL_HINT})")
  fast = probe(**{allocator.ENV: "auto"})
  system = probe(**{allocator.ENV: "system"})
  assert fast["allocator"] == expected[allocator.ACTIVE]
  assert fast["argv"] == system["argv"] == ["-c", "arg1"]
  assert system["allocator"] == "the C library's malloc"
  with open(allocator.THP_SETTING) as f:
    if "[always]" not in f.read():  # else glibc's own mmaps use huge pages
      assert system["faults"] > 60_000, system
  assert fast["faults"] < 2_000, fast
