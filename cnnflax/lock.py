"""One training run per workdir: a lock file that names its holder.

Two runs on one workdir would interleave their checkpoints and logs. A run
takes `WORKDIR/lock.json` before it reads a checkpoint and gives it back when
it ends, however it ends; a second run refuses in one line naming the first
run's host and process. The file holds that run's host, pid, SLURM job and a
heartbeat time that a thread renews every `HEARTBEAT_S` seconds.

A lock whose run is gone is stale and is taken over with a warning:
- the same host, and its process no longer exists;
- the same SLURM job, at a lower restart count (SLURM ends a job's run before
  it requeues it, on any node);
- or, from anywhere, no heartbeat for `STALE_S` seconds (a host that died).

The same code works on a local or shared disk and on a bucket, where there
is no atomic create that every store (or emulator) honours. So the lock is
taken as in Fischer's mutual exclusion: read it, write our own record if it
is free or stale, wait `settle` seconds, and read it again; we hold it if
our record is still there. Two runs racing for it both write, and only the
last write survives the wait, provided each run wrote within `settle`
seconds of its read (milliseconds on a disk, under a second to a bucket).
Before every checkpoint the run checks that the lock is still its own.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Iterator

import numpy as np
from absl import logging

from cnnflax import paths
from cnnflax.errors import CnnflaxError

NAME = "lock.json"
HEARTBEAT_S = 30.0
STALE_S = 120.0
SETTLE_S = {"disk": 0.5, "bucket": 3.0}


class WorkdirLocked(CnnflaxError):
  """Another run holds the workdir, or took it over from this one."""


def own_record(token: str) -> dict[str, Any]:
  now = time.time()
  return {"host": socket.gethostname(), "pid": os.getpid(), "token": token,
          "started": now, "heartbeat": now,
          "slurm_job": os.environ.get("SLURM_JOB_ID", ""),
          "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)}


def stale_reason(held: dict[str, Any], now: float | None = None,
                 stale_s: float = STALE_S) -> str | None:
  """Why the run that wrote `held` is gone, or None if it may be alive."""
  now = time.time() if now is None else now
  if held.get("host") == socket.gethostname() and not _alive(held.get("pid")):
    return f"its process {held.get('pid')} on this host is gone"
  job = os.environ.get("SLURM_JOB_ID", "")
  if job and held.get("slurm_job") == job and int(
      held.get("slurm_restart", 0)) < int(
          os.environ.get("SLURM_RESTART_COUNT", "0") or 0):
    return f"it is an earlier run of this SLURM job {job}"
  age = now - float(held.get("heartbeat", 0))
  if age > stale_s:
    return f"its last heartbeat was {age:.0f} s ago"
  return None


def _alive(pid: Any) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, TypeError, ValueError):
    return True  # someone else's process, or no pid: assume alive
  return True


def describe(held: dict[str, Any], now: float | None = None) -> str:
  now = time.time() if now is None else now
  job = f", SLURM job {held['slurm_job']}" if held.get("slurm_job") else ""
  started = time.strftime("%Y-%m-%d %H:%M:%S",
                          time.localtime(float(held.get("started", 0))))
  age = now - float(held.get("heartbeat", 0))
  return (f"host {held.get('host')} pid {held.get('pid')}{job}, started "
          f"{started}, last heartbeat {age:.0f} s ago")


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the workdir for the block."""

  def __init__(self, workdir: str, heartbeat_s: float = HEARTBEAT_S,
               stale_s: float = STALE_S, settle_s: float | None = None):
    self.workdir = workdir
    self.target = paths.path(workdir) / NAME
    self.token = uuid.uuid4().hex
    self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
    self.settle_s = settle_s if settle_s is not None else SETTLE_S[
        "bucket" if paths.is_url(workdir) else "disk"]
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.taken_by: dict[str, Any] | None = None  # who took it from us

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def read(self) -> dict[str, Any] | None:
    """The record in the lock file; None when there is none. A record that
    cannot be parsed counts as stale: writes replace the file whole."""
    try:
      text = self.target.read_text()
    except FileNotFoundError:
      return None
    try:
      held = json.loads(text)
      if not isinstance(held, dict):
        raise ValueError("not an object")
      return held
    except ValueError:
      return {"host": "?", "pid": "?", "token": "", "heartbeat": 0,
              "started": 0}

  def acquire(self) -> None:
    for _ in range(5):
      held = self.read()
      if held is not None:
        why = stale_reason(held, stale_s=self.stale_s)
        if why is None:
          raise WorkdirLocked(
              f"--workdir={self.workdir} is in use by another run ("
              f"{describe(held)}); wait for it to end or stop it, or use "
              f"another --workdir; if that run is gone, its lock is taken "
              f"over once its heartbeat is {self.stale_s:.0f} s old, or "
              f"delete {self.target}")
        logging.warning("taking over the lock %s of %s: %s", self.target,
                        describe(held), why)
      record = own_record(self.token)
      paths.write_atomic(self.target, json.dumps(record))
      time.sleep(self.settle_s)
      now_held = self.read()
      if now_held is not None and now_held.get("token") == self.token:
        self._start_heartbeat()
        return
      # Another run wrote after us: the next round sees whether it is live.
    raise WorkdirLocked(f"--workdir={self.workdir}: could not take "
                        f"{self.target} after 5 rounds of other runs taking "
                        "it; start one run per workdir")

  def check(self) -> None:
    """Raises WorkdirLocked when another run has taken the lock over."""
    held = self.read()
    if held is None or held.get("token") != self.token:
      self.taken_by = held or {"host": "?", "pid": "?"}
    if self.taken_by is not None:
      raise WorkdirLocked(
          f"the lock on --workdir={self.workdir} was taken over by "
          f"{describe(self.taken_by)} (this run's heartbeat stalled for over "
          f"{self.stale_s:.0f} s, or the file was removed); this run stops "
          "without writing more, so the two do not interleave")

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=10)
    held = self.read()
    if held is not None and held.get("token") == self.token:
      try:
        self.target.unlink()
      except FileNotFoundError:
        pass

  def _start_heartbeat(self) -> None:
    self._thread = threading.Thread(target=self._beat, daemon=True,
                                    name="workdir-lock")
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        held = self.read()
        if held is None or held.get("token") != self.token:
          self.taken_by = held or {"host": "?", "pid": "?"}
          return
        held["heartbeat"] = time.time()
        paths.write_atomic(self.target, json.dumps(held))
      except Exception as e:  # pylint: disable=broad-except
        # A bucket hiccup: the next beat retries; STALE_S spans several.
        logging.warning("workdir lock heartbeat failed: %s", e)


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[WorkdirLock | None]:
  """Holds `workdir` for one run. Process 0 takes the lock for all hosts
  and tells the others whether it got it (they get None)."""
  import jax
  lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
  error = None
  if lock is not None:
    try:
      lock.acquire()
    except WorkdirLocked as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    held = bool(multihost_utils.broadcast_one_to_all(
        np.int32(error is None)))
    if not held and error is None:
      error = WorkdirLocked(f"--workdir={workdir} is in use by another run; "
                            "process 0's log names it")
  if error is not None:
    raise error
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
