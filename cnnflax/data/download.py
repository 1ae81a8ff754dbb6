"""Downloads the official MNIST, CIFAR-10 and CIFAR-100 files, verified.

`fetch(dataset, folder)` makes a local folder hold the layout that
`sources.read_*` reads: `cifar-10-batches-bin/`, `cifar-100-binary/`, or the
four MNIST idx .gz files. Every file is checked against the size and sha256
that TFDS registers for it before anything is used, and every file or folder
appears in `folder` by one atomic rename, so a reader never sees a partial
download or a half-unpacked archive, even after a kill or with several
processes (hosts of one job on a shared disk) fetching at once.

Downloads go to local disk only (the default is `default_cache()`); to train
from a bucket, fetch once and copy the folder there.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib

from absl import logging

from cnnflax import paths
from cnnflax.errors import DataError

__all__ = ["Archive", "ARCHIVES", "default_cache", "fetch"]

_CHUNK = 1 << 20
_FIX = "set --config.dataset.data_dir to it"


@dataclasses.dataclass(frozen=True)
class Archive:
  """One official file.

  `name` is what the file leaves in the folder: for an archive that is
  unpacked, the top-level folder it holds; else the file itself, kept as
  downloaded (the MNIST readers read .gz).
  """
  url: str
  size: int  # bytes
  sha256: str  # hex
  name: str
  unpack: bool

  @property
  def file_name(self) -> str:
    return self.url.rsplit("/", 1)[-1]


_KRIZ = "https://www.cs.toronto.edu/~kriz/"
_MNIST = "https://storage.googleapis.com/cvdf-datasets/mnist/"


def _mnist(name: str, size: int, sha256: str) -> Archive:
  return Archive(_MNIST + name, size, sha256, name, unpack=False)


# As TFDS registers them (its url_checksums for cifar10, cifar100 and mnist).
ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "cifar10": (Archive(
        _KRIZ + "cifar-10-binary.tar.gz", 170052171,
        "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        "cifar-10-batches-bin", unpack=True),),
    "cifar100": (Archive(
        _KRIZ + "cifar-100-binary.tar.gz", 168513733,
        "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
        "cifar-100-binary", unpack=True),),
    "mnist": (
        _mnist("t10k-images-idx3-ubyte.gz", 1648877,
               "8d422c7b0a1c1c79245a5bcf07fe86e3"
               "3eeafee792b84584aec276f5a2dbc4e6"),
        _mnist("t10k-labels-idx1-ubyte.gz", 4542,
               "f7ae60f92e00ec6debd23a6088c31dbd"
               "2371eca3ffa0defaefb259924204aec6"),
        _mnist("train-images-idx3-ubyte.gz", 9912422,
               "440fcabf73cc546fa21475e81ea37026"
               "5605f56be210a4024d2ca8f203523609"),
        _mnist("train-labels-idx1-ubyte.gz", 28881,
               "3552534a0a558bbed6aed32b30c495cc"
               "a23d567ec52cac8be1a0730e8010255c"),
    ),
}


def default_cache() -> str:
  """`$XDG_CACHE_HOME/cnnflax/datasets`, else `~/.cache/cnnflax/datasets`."""
  return paths.cache_dir("datasets")


def fetch(dataset: str, folder: str,
          archives: tuple[Archive, ...] | None = None,
          timeout: float = 30.0) -> str:
  """Makes local `folder` hold the official layout of `dataset`.

  Downloads only what is missing; returns `folder` as an absolute path, which
  the readers accept as data_dir (e.g. `sources.read_cifar10(fetch(...))`).
  `archives` replaces the table entry (tests serve their own files).
  `timeout` is in seconds, per connection attempt and per read.

  A tar.gz archive is deleted once unpacked (it would double the disk used).
  One that the user put in `folder` under its official name is verified and
  unpacked instead of downloading, and kept. A layout is complete when its
  unpacked folder or file is present: each appears only by an atomic rename
  after verification, so its presence is the marker. Temporary files and
  folders are named `NAME.part-<pid>-*` and `.NAME.unpack-<pid>-*`; a killed
  process may leave one behind, which readers ignore and which can be deleted.

  Raises DataError for an unknown dataset, a network failure, a download that
  does not match its size or sha256, or an archive with unsafe members.
  """
  if archives is None:
    if dataset not in ARCHIVES:
      raise DataError(f"download: no official files known for {dataset!r}; "
                      f"choose one of: {', '.join(ARCHIVES)}")
    archives = ARCHIVES[dataset]
  if paths.is_url(folder):
    raise DataError(
        f"{dataset}: downloads go to a local folder, not {folder}; fetch into "
        f"a local folder, copy it to {folder} and {_FIX}")
  folder = os.path.abspath(os.path.expanduser(folder))
  os.makedirs(folder, exist_ok=True)
  for archive in archives:
    if os.path.exists(os.path.join(folder, archive.name)):
      logging.info("%s: %s already in %s", dataset, archive.name, folder)
      continue
    _fetch_one(dataset, folder, archive, archives, timeout)
  return folder


def _fetch_one(dataset: str, folder: str, archive: Archive,
               archives: tuple[Archive, ...], timeout: float) -> None:
  """Downloads (or reuses a user's copy of) one file and puts it in place."""
  user_copy = os.path.join(folder, archive.file_name)
  if archive.unpack and os.path.isfile(user_copy):
    logging.info("%s: using %s", dataset, user_copy)
    _verify(dataset, user_copy, archive, folder, user_copy=True)
    _unpack(dataset, user_copy, archive, folder)
    return
  part = _temp_file(folder, archive.file_name)
  try:
    _download(dataset, archive, part, folder, archives, timeout)
    if archive.unpack:
      _unpack(dataset, part, archive, folder)
    else:
      _rename_into_place(part, os.path.join(folder, archive.name))
  finally:
    _remove(part)


def _temp_file(folder: str, name: str) -> str:
  # mkstemp is unique even among threads and hosts sharing the folder (the
  # pid alone is not); the pid in the name says who left it.
  fd, part = tempfile.mkstemp(prefix=f"{name}.part-{os.getpid()}-",
                              dir=folder)
  os.close(fd)
  return part


def _files_hint(archives: tuple[Archive, ...]) -> str:
  return ", ".join(
      f"{a.name}/ (unpacked from {a.file_name})" if a.unpack else a.name
      for a in archives)


def _download(dataset: str, archive: Archive, part: str, folder: str,
              archives: tuple[Archive, ...], timeout: float) -> None:
  """Writes `archive.url` to `part` and verifies it; DataError if it fails."""
  logging.info("%s: downloading %s (%.1f MB) into %s", dataset, archive.url,
               archive.size / 1e6, folder)
  request = urllib.request.Request(archive.url,
                                   headers={"User-Agent": "cnnflax"})
  with open(part, "wb") as out:
    try:
      with urllib.request.urlopen(request, timeout=timeout) as response:
        size, sha256 = _copy(dataset, archive, response, out, folder)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
      raise DataError(
          f"{dataset}: could not download {archive.url} ({_reason(e)}); "
          f"check the network, or put {_files_hint(archives)} in a folder "
          f"and {_FIX}") from None
  _check(dataset, archive, size, sha256, archive.url, folder)
  os.chmod(part, 0o644)  # mkstemp makes it private; a cache is shared


def _copy(dataset: str, archive: Archive, response, out,
          folder: str) -> tuple[int, str]:
  """Copies the response body to `out`; returns its size and sha256.

  Reads at most one byte more than expected: enough to tell that the file is
  too long, without filling the disk. Logs progress every 10%.
  """
  digest = hashlib.sha256()
  got = 0
  next_log = 10
  while got <= archive.size:
    chunk = response.read(min(_CHUNK, archive.size + 1 - got))
    if not chunk:
      break
    try:
      out.write(chunk)
    except OSError as e:  # a disk error, not a network one
      raise DataError(f"{dataset}: cannot write {out.name} ({e.strerror}); "
                      f"free space in {folder} or fetch into another folder"
                      ) from None
    digest.update(chunk)
    got += len(chunk)
    percent = 100 * got // max(archive.size, 1)
    if percent >= next_log:
      logging.info("%s: %s %d%% (%.1f of %.1f MB)", dataset,
                   archive.file_name, percent, got / 1e6, archive.size / 1e6)
      next_log = percent // 10 * 10 + 10
  return got, digest.hexdigest()


def _reason(e: Exception) -> str:
  """A short one-line cause of a failed download."""
  if isinstance(e, urllib.error.HTTPError):
    return f"HTTP {e.code} {e.reason}"
  if isinstance(e, urllib.error.URLError):
    e = e.reason if isinstance(e.reason, Exception) else e
  text = str(e) or type(e).__name__
  return " ".join(text.split())  # one line, whatever the server said


def _verify(dataset: str, path: str, archive: Archive, folder: str,
            user_copy: bool = False) -> None:
  """Checks size and sha256 of a file already on disk."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  _check(dataset, archive, os.path.getsize(path), digest.hexdigest(), path,
         folder, user_copy)


def _check(dataset: str, archive: Archive, size: int, sha256: str,
           source: str, folder: str, user_copy: bool = False) -> None:
  if size == archive.size and sha256 == archive.sha256:
    return
  fix = (f"delete it and rerun to download {archive.url}" if user_copy else
         f"retry, or download it yourself into {folder}")
  raise DataError(
      f"{dataset}: {source} is corrupt or truncated: expected {archive.size} "
      f"bytes with sha256 {archive.sha256}, got {size} bytes with sha256 "
      f"{sha256}; {fix}, or unpack it into a folder and {_FIX}")


def _unpack(dataset: str, tar_path: str, archive: Archive,
            folder: str) -> None:
  """Unpacks into a temporary folder, then renames `archive.name` into place.

  The temporary folder is inside `folder` (same file system, so the rename is
  atomic) and is never a name a reader looks for.
  """
  scratch = tempfile.mkdtemp(prefix=f".{archive.name}.unpack-{os.getpid()}-",
                             dir=folder)
  try:
    _extract(dataset, tar_path, scratch)
    unpacked = os.path.join(scratch, archive.name)
    if not os.path.isdir(unpacked):
      raise DataError(
          f"{dataset}: {archive.url} holds no {archive.name}/ folder; the "
          f"archive is not the official one")
    _rename_into_place(unpacked, os.path.join(folder, archive.name))
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def _extract(dataset: str, tar_path: str, into: str) -> None:
  """Extracts a tar.gz, refusing anything but plain files and folders inside
  `into` (the official archives hold nothing else)."""
  try:
    with tarfile.open(tar_path, "r:gz") as tar:
      members = tar.getmembers()
      for member in members:
        _check_member(dataset, tar_path, member)
      if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
        tar.extractall(into, members=members, filter="data")
      else:
        tar.extractall(into, members=members)
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    raise DataError(f"{dataset}: cannot unpack {tar_path} "
                    f"({_reason(e)}); delete it and rerun") from None


def _check_member(dataset: str, tar_path: str, member: tarfile.TarInfo):
  name = member.name
  parts = name.replace("\\", "/").split("/")
  if os.path.isabs(name) or name.startswith("/") or ".." in parts:
    raise DataError(f"{dataset}: {tar_path} has member {name!r} that points "
                    f"outside the folder; refusing to unpack it")
  if not (member.isfile() or member.isdir()):
    raise DataError(f"{dataset}: {tar_path} has member {name!r} that is not "
                    f"a plain file or folder; refusing to unpack it")


def _rename_into_place(source: str, target: str) -> None:
  """Atomically moves `source` to `target`, unless `target` already exists.

  Another process may have finished first; its copy was verified too, and a
  reader may be using it, so it stays.
  """
  if os.path.exists(target):
    logging.info("%s appeared meanwhile; keeping it", target)
    return
  try:
    os.replace(source, target)
  except OSError:
    # A folder renamed onto a non-empty folder fails: it appeared just now.
    if not os.path.exists(target):
      raise


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass
