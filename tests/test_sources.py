"""Tests for cnnflax.data.sources: generated files only, never the real data."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from cnnflax.data import sources
from cnnflax.data.sources import Arrays, DataError


def _random_arrays(num: int, shape: tuple[int, int, int], num_classes: int,
                   seed: int) -> Arrays:
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(num, *shape), dtype=np.uint8)
  labels = rng.integers(0, num_classes, size=num).astype(np.int32)
  return Arrays(images, labels)


def _assert_same(got: Arrays, want: Arrays) -> None:
  assert got.images.dtype == np.uint8 and got.labels.dtype == np.int32
  assert got.images.flags.c_contiguous
  np.testing.assert_array_equal(got.images, want.images)
  np.testing.assert_array_equal(got.labels, want.labels)


def _mark(arrays: Arrays) -> Arrays:
  """Zeroes image 0 and puts 200 in its blue channel at row 1, column 2.

  A reader that mixes up planes, rows and columns moves that value.
  """
  arrays.images[0] = 0
  arrays.images[0, 1, 2, -1] = 200
  return arrays


def _check_mark(images: np.ndarray) -> None:
  assert images[0, 1, 2, -1] == 200
  assert np.count_nonzero(images[0]) == 1


# -------------------------------------------------------------- CIFAR-10 ----

def _cifar10_data():
  train = _mark(_random_arrays(15, (32, 32, 3), 10, seed=1))  # 3 per batch
  test = _random_arrays(4, (32, 32, 3), 10, seed=2)
  return train, test


def test_cifar10_round_trip_in_folder(tmp_path):
  train, test = _cifar10_data()
  sources.write_cifar10(str(tmp_path), train, test)
  assert os.path.getsize(tmp_path / "data_batch_1.bin") == 3 * 3073
  got_train, got_test = sources.read_cifar10(str(tmp_path))
  _assert_same(got_train, train)
  _assert_same(got_test, test)
  _check_mark(got_train.images)


def test_cifar10_round_trip_in_parent(tmp_path):
  train, test = _cifar10_data()
  sources.write_cifar10(str(tmp_path / "cifar-10-batches-bin"), train, test)
  got_train, got_test = sources.read_cifar10(str(tmp_path))
  _assert_same(got_train, train)
  _assert_same(got_test, test)


def test_cifar10_record_layout(tmp_path):
  # Built by hand, not with the writer: label byte, then R, G, B planes.
  record = np.zeros(3073, np.uint8)
  record[0] = 7
  record[1 + 1024 * 2 + 32 * 1 + 2] = 200  # blue plane, row 1, column 2
  record[1 + 1024 * 0 + 32 * 3 + 4] = 100  # red plane, row 3, column 4
  for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
    record.tofile(tmp_path / name)
  train, test = sources.read_cifar10(str(tmp_path))
  assert train.images.shape == (5, 32, 32, 3)
  assert test.images.shape == (1, 32, 32, 3)
  np.testing.assert_array_equal(train.labels, [7] * 5)
  image = test.images[0]
  assert image[1, 2, 2] == 200 and image[3, 4, 0] == 100
  assert np.count_nonzero(image) == 2


def test_cifar10_empty_dir(tmp_path):
  with pytest.raises(DataError) as info:
    sources.read_cifar10(str(tmp_path))
  message = str(info.value)
  for part in ("cifar10", str(tmp_path), "data_batch_1.bin", "test_batch.bin",
               "data_dir"):
    assert part in message
  assert "\n" not in message


def test_cifar10_one_batch_missing(tmp_path):
  train, test = _cifar10_data()
  sources.write_cifar10(str(tmp_path), train, test)
  os.remove(tmp_path / "data_batch_3.bin")
  with pytest.raises(DataError, match="data_batch_3.bin") as info:
    sources.read_cifar10(str(tmp_path))
  assert "data_dir" in str(info.value)


def test_cifar10_truncated(tmp_path):
  train, test = _cifar10_data()
  sources.write_cifar10(str(tmp_path), train, test)
  path = tmp_path / "test_batch.bin"
  path.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(DataError, match="test_batch.bin"):
    sources.read_cifar10(str(tmp_path))


def test_cifar10_label_out_of_range(tmp_path):
  train, test = _cifar10_data()
  train.labels[4] = 12
  sources.write_cifar10(str(tmp_path), train, test)
  with pytest.raises(DataError, match="label 12"):
    sources.read_cifar10(str(tmp_path))


# ------------------------------------------------------------- CIFAR-100 ----

def _cifar100_data():
  train = _mark(_random_arrays(6, (32, 32, 3), 100, seed=3))
  test = _random_arrays(3, (32, 32, 3), 100, seed=4)
  coarse = (np.arange(6) * 3 % 20, np.array([19, 0, 7]))
  return train, test, coarse


@pytest.mark.parametrize("nested", [False, True])
def test_cifar100_round_trip(tmp_path, nested):
  train, test, (train_coarse, test_coarse) = _cifar100_data()
  folder = tmp_path / "cifar-100-binary" if nested else tmp_path
  sources.write_cifar100(str(folder), train, test, train_coarse, test_coarse)
  got_train, got_test = sources.read_cifar100(str(tmp_path))
  _assert_same(got_train, train)
  _assert_same(got_test, test)
  _check_mark(got_train.images)
  coarse_train, coarse_test = sources.read_cifar100(
      str(tmp_path), label="coarse")
  np.testing.assert_array_equal(coarse_train.labels, train_coarse)
  np.testing.assert_array_equal(coarse_test.labels, test_coarse)
  np.testing.assert_array_equal(coarse_train.images, train.images)


def test_cifar100_missing(tmp_path):
  with pytest.raises(DataError) as info:
    sources.read_cifar100(str(tmp_path))
  message = str(info.value)
  for part in ("cifar100", "train.bin", "test.bin", "data_dir"):
    assert part in message


def test_cifar100_truncated(tmp_path):
  train, test, _ = _cifar100_data()
  sources.write_cifar100(str(tmp_path), train, test)
  path = tmp_path / "train.bin"
  path.write_bytes(path.read_bytes()[:3074 + 100])
  with pytest.raises(DataError, match="train.bin"):
    sources.read_cifar100(str(tmp_path))


def test_cifar100_bad_label_choice(tmp_path):
  with pytest.raises(DataError, match="fine"):
    sources.read_cifar100(str(tmp_path), label="medium")


# ----------------------------------------------------------------- MNIST ----

def _mnist_data():
  train = _mark(_random_arrays(5, (28, 28, 1), 10, seed=5))
  test = _random_arrays(3, (28, 28, 1), 10, seed=6)
  return train, test


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_round_trip(tmp_path, compress):
  train, test = _mnist_data()
  sources.write_mnist(str(tmp_path), train, test, compress=compress)
  suffix = ".gz" if compress else ""
  assert (tmp_path / f"t10k-labels-idx1-ubyte{suffix}").is_file()
  got_train, got_test = sources.read_mnist(str(tmp_path))
  assert got_train.images.shape == (5, 28, 28, 1)
  _assert_same(got_train, train)
  _assert_same(got_test, test)
  _check_mark(got_train.images)


def test_mnist_idx_header(tmp_path):
  train, test = _mnist_data()
  sources.write_mnist(str(tmp_path), train, test, compress=False)
  data = (tmp_path / "train-images-idx3-ubyte").read_bytes()
  # Big-endian magic 2051, then 5 x 28 x 28, then the pixels row by row.
  assert data[:16] == bytes.fromhex("00000803 00000005 0000001c 0000001c")
  assert data[16 + 28 * 1 + 2] == 200


def test_mnist_missing_file(tmp_path):
  train, test = _mnist_data()
  sources.write_mnist(str(tmp_path), train, test)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(DataError) as info:
    sources.read_mnist(str(tmp_path))
  message = str(info.value)
  assert "no t10k-labels-idx1-ubyte" in message
  assert str(tmp_path) in message and "data_dir" in message


def test_mnist_empty_dir(tmp_path):
  with pytest.raises(DataError) as info:
    sources.read_mnist(str(tmp_path))
  for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "data_dir"):
    assert name in str(info.value)


def test_mnist_truncated(tmp_path):
  train, test = _mnist_data()
  sources.write_mnist(str(tmp_path), train, test)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  data = gzip.decompress(path.read_bytes())
  path.write_bytes(gzip.compress(data[:-1]))
  with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*truncated"):
    sources.read_mnist(str(tmp_path))


def test_mnist_wrong_magic(tmp_path):
  train, test = _mnist_data()
  sources.write_mnist(str(tmp_path), train, test, compress=False)
  # A label file where an image file belongs.
  os.replace(tmp_path / "t10k-labels-idx1-ubyte",
             tmp_path / "t10k-images-idx3-ubyte")
  sources.write_mnist(str(tmp_path / "other"), train, test, compress=False)
  os.replace(tmp_path / "other" / "t10k-labels-idx1-ubyte",
             tmp_path / "t10k-labels-idx1-ubyte")
  with pytest.raises(DataError,
                     match="t10k-images-idx3-ubyte has magic number 2049"):
    sources.read_mnist(str(tmp_path))


def test_mnist_broken_gzip(tmp_path):
  train, test = _mnist_data()
  sources.write_mnist(str(tmp_path), train, test)
  (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
  with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
    sources.read_mnist(str(tmp_path))


# ---------------------------------------------------------------- digits ----

def test_load_digits_shapes_and_split():
  train, test = sources.load_digits()
  assert len(train.labels) + len(test.labels) == 1797
  assert len(test.labels) == round(1797 * 0.2)
  assert train.images.shape[1:] == (32, 32, 1)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  assert set(np.unique(train.labels)) == set(range(10))
  assert train.images.max() == 255  # 16 scales to 255
  # The 24x24 digit sits centred: a 4-pixel zero border all round.
  border = np.ones((32, 32), bool)
  border[4:28, 4:28] = False
  assert not train.images[:, border].any()
  assert train.images[:, 4:28, 4:28].any()


def test_load_digits_deterministic():
  a_train, a_test = sources.load_digits(seed=3)
  b_train, b_test = sources.load_digits(seed=3)
  _assert_same(a_train, b_train)
  _assert_same(a_test, b_test)
  c_train, _ = sources.load_digits(seed=4)
  assert not np.array_equal(a_train.labels, c_train.labels)


def test_load_digits_other_size_and_fraction():
  train, test = sources.load_digits(test_fraction=0.5, image_size=28)
  assert train.images.shape == (899, 28, 28, 1)
  assert test.images.shape == (898, 28, 28, 1)  # round(898.5) == 898


def test_load_digits_train_test_disjoint():
  train, test = sources.load_digits(image_size=8)  # 6x6 digits, 1-pixel border
  train_set = {x.tobytes() for x in train.images}
  # Digits data has a few exact duplicates, so allow a handful of overlaps.
  assert sum(x.tobytes() in train_set for x in test.images) < 10


def test_bilinear_resize():
  ramp = np.arange(4, dtype=float)[None, None, :].repeat(4, axis=1)
  out = sources._resize_bilinear(ramp, 8)
  # Half-pixel centres: edges clamp, the middle interpolates evenly.
  np.testing.assert_allclose(
      out[0, 0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])
  np.testing.assert_allclose(sources._resize_bilinear(ramp, 4), ramp)


# ------------------------------------------------------------- synthetic ----

def test_synthetic_deterministic():
  a = sources.synthetic(6, (5, 4, 3), num_classes=7, seed=11)
  b = sources.synthetic(6, (5, 4, 3), num_classes=7, seed=11)
  c = sources.synthetic(6, (5, 4, 3), num_classes=7, seed=12)
  _assert_same(a, b)
  assert a.images.shape == (6, 5, 4, 3)
  assert a.labels.min() >= 0 and a.labels.max() < 7
  assert not np.array_equal(a.images, c.images)
