"""One path type for local folders and cloud URLs: etils.epath, which orbax
uses too. Every workdir, data_dir and experiment root goes through here, so
`gs://bucket/run` (or `s3://`, or any fsspec URL) works wherever a local
folder does; nothing calls `open` or `os.path` on them.

Object stores have no appends and no renames, so the helpers below write
whole objects: a JSON file is one upload (atomic on GCS and S3; a temporary
file and a rename on local disks), and an appended log is rewritten whole.
"""
from __future__ import annotations

import os
import socket
from typing import Iterable

import fsspec.config
from etils import epath

from cnnflax.errors import ConfigError

PathLike = str | os.PathLike


def is_url(p: PathLike) -> bool:
  """Whether `p` names a cloud location (gs://, s3://, ...)."""
  return "://" in os.fspath(p)


def path(p: PathLike) -> epath.Path:
  """An epath.Path; local paths are made absolute (runs change folders)."""
  text = os.fspath(p)
  if is_url(text):
    use_emulator_settings()  # before gcsfs or tensorstore first starts
  else:
    text = os.path.abspath(os.path.expanduser(text))
  return epath.Path(text)


def _list_afresh() -> None:
  """fsspec's clients cache folder listings for the life of the process by
  default, so a listing never shows what another process wrote since (a
  checkpoint of another host, or of an earlier run of this workdir): list
  afresh each time. Listings are rare here (checkpoint steps, data files).
  Set on import, before epath makes its first client."""
  for protocol in ("gs", "gcs", "s3", "s3a"):
    fsspec.config.conf.setdefault(protocol, {}).setdefault(
        "use_listings_cache", False)


_list_afresh()


def use_emulator_settings() -> None:
  """With STORAGE_EMULATOR_HOST set (a GCS emulator, as the tests start),
  points orbax's tensorstore at it too, and turns off gcsfs's bucket-layout
  lookup, a gRPC call that an emulator does not answer (60 s per call)."""
  host = os.environ.get("STORAGE_EMULATOR_HOST")
  if not host:
    return
  if "://" not in host:
    host = "http://" + host
  os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", host)
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def cache_dir(*parts: str) -> str:
  """A folder under `$XDG_CACHE_HOME/cnnflax` (else ~/.cache/cnnflax): the
  downloaded datasets, the tfrecord indexes."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "cnnflax", *parts)


def makedirs(folder: PathLike) -> epath.Path:
  """Makes a local folder and its parents. A bucket has no folders, and
  gcsfs's makedirs would create a missing bucket, so URLs are left alone."""
  folder = path(folder)
  if not is_url(folder):
    folder.mkdir(parents=True, exist_ok=True)
  return folder


def check_writable(folder: PathLike, field: str = "--workdir") -> epath.Path:
  """Makes `folder` (a local one) and writes and removes a small object in
  it, so that a bucket that cannot be reached, or missing credentials, is
  one clear line before anything compiles rather than a traceback at the
  first checkpoint."""
  folder = path(folder)
  probe = folder / f".cnnflax-probe-{socket.gethostname()}-{os.getpid()}"
  try:
    makedirs(folder)
    probe.write_text("probe")
    probe.unlink()
  except Exception as e:  # any backend's error: say what it was
    raise ConfigError(f"{field}={folder} cannot be written ({_first_line(e)});"
                      f" {_fix(folder)}") from None
  return folder


def _fix(folder: epath.Path) -> str:
  if is_url(folder):
    return ("check that the bucket exists and that this machine has "
            "credentials for it (GOOGLE_APPLICATION_CREDENTIALS or `gcloud "
            "auth application-default login` for gs://; STORAGE_EMULATOR_HOST "
            "for an emulator), and that gcsfs (gs://) or s3fs (s3://) is "
            "installed")
  return "choose a folder you can write to, or free space on its disk"


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:200]}" if text else \
      type(error).__name__


def write_atomic(target: PathLike, content: str | bytes) -> None:
  """Replaces a file whole: a reader sees the old or the new content."""
  target = path(target)
  write = "write_bytes" if isinstance(content, bytes) else "write_text"
  if is_url(target):
    getattr(target, write)(content)  # one object upload is atomic
    return
  # The pid: processes sharing a disk (hosts of one job) may write at once.
  tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
  getattr(tmp, write)(content)
  os.replace(tmp, target)


class LineLog:
  """A JSONL file that grows by whole lines.

  Local files are appended to. In a bucket, where objects cannot be
  appended, the lines are kept and the object uploaded whole at each
  write: one line per log interval or evaluation, so kilobytes to a few
  megabytes over a run.
  """

  def __init__(self, target: PathLike, lines: Iterable[str] = ()):
    self.path = path(target)
    self._lines = list(lines) if is_url(self.path) else None

  def append(self, line: str) -> None:
    if self._lines is None:
      with self.path.open("a") as f:
        f.write(line + "\n")
      return
    self._lines.append(line)
    self.path.write_text("".join(f"{l}\n" for l in self._lines))


def register_tensorboard() -> None:
  """Lets tensorboardX write event files to any URL that epath reaches.

  tensorboardX's own gs:// writer needs google-cloud-storage and its own
  credentials; this one buffers the events and uploads the file whole at
  each flush (every couple of minutes and at close), as TensorFlow's GCS
  writer does.
  """
  from tensorboardX import record_writer
  for scheme in ("gs", "s3", "az", "hf"):
    record_writer.register_writer_factory(scheme, _EventFiles())


class _EventFiles:

  def open(self, target: str) -> "_EventFile":
    return _EventFile(target)

  def directory_check(self, target: str) -> None:
    del target  # object stores need no folders


class _EventFile:

  def __init__(self, target: str):
    self.path = epath.Path(target)
    self._data = bytearray()
    self._written = 0

  def write(self, data: bytes) -> None:
    self._data += data

  def flush(self) -> None:
    if len(self._data) != self._written:
      self.path.write_bytes(bytes(self._data))
      self._written = len(self._data)

  def close(self) -> None:
    self.flush()
