"""download.fetch against a real HTTP server on localhost, serving small
generated archives in the official layouts."""
import functools
import gzip
import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
import time

import numpy as np
import pytest

from cnnflax.data import download, sources
from cnnflax.errors import DataError


class _Handler(http.server.SimpleHTTPRequestHandler):
  """Serves the server's folder; counts requests; can cut a body short."""

  def do_GET(self):
    self.server.requests.append(self.path)
    hook = self.server.before.get(self.path)
    if hook:
      hook()
    if self.path in self.server.truncate:
      data = (self.server.root / self.path.lstrip("/")).read_bytes()
      self.send_response(200)
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data[:len(data) // 2])
      self.wfile.flush()
      self.close_connection = True
      return
    super().do_GET()

  def log_message(self, *args):
    pass


@pytest.fixture
def server(tmp_path):
  root = tmp_path / "www"
  root.mkdir()
  handler = functools.partial(_Handler, directory=str(root))
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  httpd.root = root
  httpd.requests = []
  httpd.truncate = set()
  httpd.before = {}
  httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
  thread = threading.Thread(target=httpd.serve_forever, args=(0.05,),
                            daemon=True)
  thread.start()
  yield httpd
  httpd.shutdown()
  httpd.server_close()


def _fake(n, shape, classes, seed):
  rng = np.random.default_rng(seed)
  return sources.Arrays(
      rng.integers(0, 256, (n, *shape), dtype=np.uint8),
      rng.integers(0, classes, n).astype(np.int32))


def _archive(path, name, unpack):
  data = path.read_bytes()
  return download.Archive(f"URL/{path.name}", len(data),
                          hashlib.sha256(data).hexdigest(), name, unpack)


def _at(server, archive):
  return download.Archive(server.url + archive.url.split("/", 1)[1],
                          archive.size, archive.sha256, archive.name,
                          archive.unpack)


def _tar(tar_path, folder, arcname, extra=None):
  with tarfile.open(tar_path, "w:gz") as tar:
    tar.add(folder, arcname=arcname)
    if extra is not None:
      info = tarfile.TarInfo(extra)
      info.size = 4
      tar.addfile(info, io.BytesIO(b"evil"))


def _cifar_archive(tmp_path, server, which="cifar10", extra=None):
  """Writes a fake CIFAR archive into the server's folder."""
  if which == "cifar10":
    train, test = _fake(10, (32, 32, 3), 10, 0), _fake(4, (32, 32, 3), 10, 1)
    writer, subdir = sources.write_cifar10, "cifar-10-batches-bin"
  else:
    train, test = _fake(6, (32, 32, 3), 100, 2), _fake(3, (32, 32, 3), 100, 3)
    writer, subdir = sources.write_cifar100, "cifar-100-binary"
  writer(str(tmp_path / "src" / subdir), train, test)
  name = ("cifar-10-binary.tar.gz" if which == "cifar10"
          else "cifar-100-binary.tar.gz")
  tar_path = server.root / name
  _tar(tar_path, tmp_path / "src" / subdir, subdir, extra)
  return _at(server, _archive(tar_path, subdir, True)), train, test


def _assert_same(got, want):
  np.testing.assert_array_equal(got.images, want.images)
  np.testing.assert_array_equal(got.labels, want.labels)


def _one_line(e):
  message = str(e.value)
  assert "\n" not in message
  return message


def _assert_empty(folder):
  assert sorted(os.listdir(folder)) == []


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
def test_download_verify_unpack_and_cache(tmp_path, server, which):
  archive, train, test = _cifar_archive(tmp_path, server, which)
  folder = str(tmp_path / "cache")
  assert download.fetch(which, folder, (archive,), timeout=5) == folder
  reader = getattr(sources, f"read_{which}")
  got_train, got_test = reader(folder)
  _assert_same(got_train, train)
  _assert_same(got_test, test)
  # The archive is deleted once unpacked; no temporary files are left.
  assert os.listdir(folder) == [archive.name]
  assert len(server.requests) == 1
  download.fetch(which, folder, (archive,), timeout=5)
  assert len(server.requests) == 1  # complete: not downloaded again


def test_corrupt_download_is_refused_and_removed(tmp_path, server):
  archive, _, _ = _cifar_archive(tmp_path, server)
  path = server.root / archive.file_name
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF  # same size, other bytes
  path.write_bytes(bytes(data))
  folder = tmp_path / "cache"
  with pytest.raises(DataError) as e:
    download.fetch("cifar10", str(folder), (archive,), timeout=5)
  message = _one_line(e)
  assert archive.url in message and archive.sha256 in message
  assert hashlib.sha256(data).hexdigest() in message
  _assert_empty(folder)
  with pytest.raises(DataError):
    sources.read_cifar10(str(folder))


def test_truncated_download_is_refused(tmp_path, server):
  archive, _, _ = _cifar_archive(tmp_path, server)
  server.truncate.add("/" + archive.file_name)
  folder = tmp_path / "cache"
  with pytest.raises(DataError) as e:
    download.fetch("cifar10", str(folder), (archive,), timeout=5)
  message = _one_line(e)
  assert f"expected {archive.size} bytes" in message
  assert f"got {archive.size // 2} bytes" in message
  _assert_empty(folder)


def test_unreachable_server(tmp_path):
  with socket.socket() as s:  # a port that nothing listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz"
  archive = download.Archive(url, 10, "0" * 64, "cifar-10-batches-bin", True)
  start = time.monotonic()
  with pytest.raises(DataError) as e:
    download.fetch("cifar10", str(tmp_path / "c"), (archive,), timeout=2)
  assert time.monotonic() - start < 5
  message = _one_line(e)
  assert message.startswith(f"cifar10: could not download {url} (")
  assert "--config.dataset.data_dir" in message
  _assert_empty(tmp_path / "c")


def test_http_404(tmp_path, server):
  archive = download.Archive(server.url + "missing.tar.gz", 10, "0" * 64,
                             "cifar-10-batches-bin", True)
  with pytest.raises(DataError) as e:
    download.fetch("cifar10", str(tmp_path / "c"), (archive,), timeout=5)
  assert "HTTP 404" in _one_line(e)
  _assert_empty(tmp_path / "c")


def test_mnist_files(tmp_path, server):
  train, test = _fake(7, (28, 28, 1), 10, 4), _fake(3, (28, 28, 1), 10, 5)
  sources.write_mnist(str(server.root), train, test)
  names = sorted(os.listdir(server.root))
  assert len(names) == 4 and all(n.endswith(".gz") for n in names)
  archives = tuple(_at(server, _archive(server.root / n, n, False))
                   for n in names)
  folder = tmp_path / "cache"
  # One file already in place is not downloaded again.
  folder.mkdir()
  (folder / names[0]).write_bytes((server.root / names[0]).read_bytes())
  download.fetch("mnist", str(folder), archives, timeout=5)
  assert sorted(os.listdir(folder)) == names  # kept .gz, nothing else
  assert sorted(server.requests) == sorted("/" + n for n in names[1:])
  got_train, got_test = sources.read_mnist(str(folder))
  _assert_same(got_train, train)
  _assert_same(got_test, test)
  assert gzip.decompress((folder / names[1]).read_bytes())  # still gzip'd


def test_member_outside_folder_is_refused(tmp_path, server):
  archive, _, _ = _cifar_archive(tmp_path, server, extra="../evil")
  folder = tmp_path / "cache"
  with pytest.raises(DataError) as e:
    download.fetch("cifar10", str(folder), (archive,), timeout=5)
  assert "'../evil'" in _one_line(e)
  _assert_empty(folder)
  assert not (tmp_path / "evil").exists()


def test_unknown_dataset(tmp_path):
  with pytest.raises(DataError) as e:
    download.fetch("imagenet", str(tmp_path))
  message = _one_line(e)
  assert "'imagenet'" in message
  assert "cifar10, cifar100, mnist" in message


def test_user_copy_of_archive_is_used_and_kept(tmp_path, server):
  archive, train, _ = _cifar_archive(tmp_path, server)
  folder = tmp_path / "cache"
  folder.mkdir()
  (folder / archive.file_name).write_bytes(
      (server.root / archive.file_name).read_bytes())
  download.fetch("cifar10", str(folder), (archive,), timeout=5)
  assert server.requests == []
  assert sorted(os.listdir(folder)) == sorted(
      [archive.file_name, archive.name])
  _assert_same(sources.read_cifar10(str(folder))[0], train)


def test_folder_that_appears_meanwhile_is_kept(tmp_path, server):
  """Another process finished first: its folder stays, ours is dropped."""
  archive, _, _ = _cifar_archive(tmp_path, server)
  folder = tmp_path / "cache"
  winner = folder / archive.name

  def other_process_wins():
    winner.mkdir(parents=True)
    (winner / "theirs").write_text("x")

  server.before["/" + archive.file_name] = other_process_wins
  download.fetch("cifar10", str(folder), (archive,), timeout=5)
  assert os.listdir(folder) == [archive.name]
  assert os.listdir(winner) == ["theirs"]


def test_concurrent_fetches(tmp_path, server):
  archive, train, _ = _cifar_archive(tmp_path, server)
  folder = str(tmp_path / "cache")
  errors = []

  def run():
    try:
      download.fetch("cifar10", folder, (archive,), timeout=5)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=run) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert errors == []
  assert os.listdir(folder) == [archive.name]
  _assert_same(sources.read_cifar10(folder)[0], train)


def test_table_matches_readers_and_cache(monkeypatch):
  assert set(download.ARCHIVES) == {"cifar10", "cifar100", "mnist"}
  cifar10, = download.ARCHIVES["cifar10"]
  assert (cifar10.file_name, cifar10.size) == ("cifar-10-binary.tar.gz",
                                               170052171)
  assert cifar10.name == sources._CIFAR10_SUBDIR and cifar10.unpack
  assert download.ARCHIVES["cifar100"][0].name == sources._CIFAR100_SUBDIR
  mnist = download.ARCHIVES["mnist"]
  assert sorted(a.name for a in mnist) == sorted(
      n + ".gz" for pair in sources._MNIST_FILES.values() for n in pair)
  for archives in download.ARCHIVES.values():
    for a in archives:
      assert a.url.startswith("https://") and len(a.sha256) == 64
      assert int(a.sha256, 16) >= 0 and a.size > 0
  monkeypatch.setenv("XDG_CACHE_HOME", "/x")
  assert download.default_cache() == "/x/cnnflax/datasets"
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert download.default_cache() == os.path.expanduser(
      "~/.cache/cnnflax/datasets")


# ------------------------------------------- through data.load, as runs do ----

def _cifar_config(tmp_path, monkeypatch, archive):
  from conftest import tiny_config
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds"))
  monkeypatch.setitem(download.ARCHIVES, "cifar10", (archive,))
  return tiny_config(**{"dataset.name": "cifar10", "dataset.data_dir": "",
                        "dataset.image_size": 32}).dataset


def test_a_run_without_data_downloads_into_the_cache(tmp_path, monkeypatch,
                                                     server):
  from cnnflax import data
  archive, train, test = _cifar_archive(tmp_path, server)
  cfg = _cifar_config(tmp_path, monkeypatch, archive)
  loaded = data.load(cfg)
  _assert_same(loaded.train, train)
  _assert_same(loaded.test, test)
  assert os.listdir(tmp_path / "xdg" / "cnnflax" / "datasets" / "cifar10") == [
      "cifar-10-batches-bin"]
  data.load(cfg)
  assert len(server.requests) == 1  # the second run reads the cache


def test_a_run_offline_says_where_it_looked_and_what_to_put(tmp_path,
                                                            monkeypatch):
  from cnnflax import data
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # closed once the block ends
  archive = download.Archive(f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz",
                             10, "0" * 64, "cifar-10-batches-bin", True)
  cfg = _cifar_config(tmp_path, monkeypatch, archive)
  with pytest.raises(DataError) as info:
    data.load(cfg)
  message = _one_line(info)
  assert "no copy in" in message and "cnnflax/datasets/cifar10" in message
  assert "could not download" in message and "data_dir" in message
  cfg.download = False
  with pytest.raises(DataError, match="data_batch_1.bin"):
    data.load(cfg)
