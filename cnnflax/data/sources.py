"""Dataset sources: read datasets from disk into numpy arrays.

Every reader returns `Arrays` with contiguous uint8 NHWC images and int32
labels. Readers know nothing of devices, batching or models. The official file
layouts are read directly (CIFAR binary batches, MNIST idx files), so training
works offline, without TensorFlow. The writers produce the same layouts: tests
use them, and users can use them to package their own data. Folders may be
local or bucket URLs (`cnnflax.paths`).
"""
from __future__ import annotations

import dataclasses
import gzip
import zlib

import numpy as np
from etils import epath

from cnnflax import paths
from cnnflax.errors import DataError

__all__ = [
    "Arrays", "DataError", "read_cifar10", "read_cifar100", "read_mnist",
    "load_digits", "synthetic", "read_tfds", "write_cifar10",
    "write_cifar100", "write_mnist",
]

_FIX = "set --config.dataset.data_dir to the folder that holds them"


@dataclasses.dataclass
class Arrays:
  """One split of a dataset, held in memory."""
  images: np.ndarray  # uint8, [N, H, W, C]
  labels: np.ndarray  # int32, [N]

  def __post_init__(self):
    if self.images.ndim != 4 or self.labels.ndim != 1:
      raise ValueError(
          f"Arrays wants images [N, H, W, C] and labels [N], got shapes "
          f"{self.images.shape} and {self.labels.shape}")
    if len(self.images) != len(self.labels):
      raise ValueError(
          f"Arrays has {len(self.images)} images but {len(self.labels)} labels")


def _arrays(images: np.ndarray, labels: np.ndarray) -> Arrays:
  return Arrays(images=np.ascontiguousarray(images, dtype=np.uint8),
                labels=np.ascontiguousarray(labels, dtype=np.int32))


# ---------------------------------------------------------------- CIFAR ----

_CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR10_TEST = "test_batch.bin"
_CIFAR10_SUBDIR = "cifar-10-batches-bin"
_CIFAR100_SUBDIR = "cifar-100-binary"
_PIXELS = 32 * 32 * 3


def _find_dir(data_dir: str, subdir: str,
              names: tuple[str, ...]) -> epath.Path:
  """Returns `data_dir` or `data_dir/subdir`, whichever holds the files.

  Users point at either the unpacked folder or its parent; the folder that
  already holds the first expected file wins.
  """
  top = paths.path(data_dir)
  nested = top / subdir
  if nested.is_dir() and not (top / names[0]).is_file():
    return nested
  return top


def _missing(folder: epath.Path, names: tuple[str, ...]) -> list[str]:
  return [n for n in names if not (folder / n).is_file()]


def _read_records(path: epath.Path, dataset: str, num_labels: int,
                  num_classes: tuple[int, ...]
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Reads one CIFAR binary file: label byte(s), then R, G, B 32x32 planes."""
  record = num_labels + _PIXELS
  data = path.read_bytes()
  size = len(data)
  if size == 0 or size % record:
    raise DataError(
        f"{dataset}: {path} is {size} bytes, not a whole number of "
        f"{record}-byte records (truncated, or not a {dataset} binary file)")
  rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
  labels = rows[:, :num_labels]
  for column, limit in enumerate(num_classes):
    bad = labels[:, column] >= limit
    if bad.any():
      raise DataError(
          f"{dataset}: {path} has label {labels[bad, column][0]} in record "
          f"{int(np.argmax(bad))}, above the {limit} classes; the file is "
          f"corrupt or from another dataset")
  images = rows[:, num_labels:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def read_cifar10(data_dir: str) -> tuple[Arrays, Arrays]:
  """Reads the unpacked `cifar-10-binary.tar.gz` into (train, test).

  `data_dir` is the folder that holds the .bin files, or its parent that holds
  `cifar-10-batches-bin/`.
  """
  names = _CIFAR10_TRAIN + (_CIFAR10_TEST,)
  folder = _find_dir(data_dir, _CIFAR10_SUBDIR, names)
  missing = _missing(folder, names)
  expected = ("expected data_batch_1.bin ... data_batch_5.bin and "
              "test_batch.bin, as unpacked from cifar-10-binary.tar.gz")
  if len(missing) == len(names):
    raise DataError(
        f"cifar10: no CIFAR-10 binary batches in {data_dir} or "
        f"{paths.path(data_dir) / _CIFAR10_SUBDIR} ({expected}); {_FIX}")
  if missing:
    raise DataError(
        f"cifar10: {folder} lacks {', '.join(missing)} ({expected}); {_FIX}")
  parts = [_read_records(folder / n, "cifar10", 1, (10,))
           for n in names]
  train_images = np.concatenate([p[0] for p in parts[:-1]])
  train_labels = np.concatenate([p[1][:, 0] for p in parts[:-1]])
  test_images, test_labels = parts[-1]
  return (_arrays(train_images, train_labels),
          _arrays(test_images, test_labels[:, 0]))


def read_cifar100(data_dir: str, label: str = "fine") -> tuple[Arrays, Arrays]:
  """Reads the unpacked `cifar-100-binary.tar.gz` into (train, test).

  `label` picks the 100 fine classes or the 20 coarse superclasses.
  """
  if label not in ("fine", "coarse"):
    raise DataError(
        f"cifar100: label must be 'fine' or 'coarse', got {label!r}")
  names = ("train.bin", "test.bin")
  folder = _find_dir(data_dir, _CIFAR100_SUBDIR, names)
  missing = _missing(folder, names)
  if missing:
    where = (f"{data_dir} or {paths.path(data_dir) / _CIFAR100_SUBDIR}"
             if len(missing) == len(names) else folder)
    raise DataError(
        f"cifar100: no {' or '.join(missing)} in {where} (expected train.bin "
        f"and test.bin, as unpacked from cifar-100-binary.tar.gz); {_FIX}")
  column = 1 if label == "fine" else 0  # each record starts coarse, fine
  splits = []
  for name in names:
    images, labels = _read_records(
        folder / name, "cifar100", 2, (20, 100))
    splits.append(_arrays(images, labels[:, column]))
  return splits[0], splits[1]


def _cifar_bytes(images: np.ndarray, labels: list[np.ndarray]) -> bytes:
  """Packs images [N, 32, 32, 3] and label columns into CIFAR records."""
  images = np.asarray(images)
  if images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
    raise ValueError(
        f"CIFAR records hold uint8 [N, 32, 32, 3] images, got "
        f"{images.dtype} {images.shape}")
  columns = []
  for values in labels:
    values = np.asarray(values)
    if values.min(initial=0) < 0 or values.max(initial=0) > 255:
      raise ValueError("CIFAR labels must fit in one byte (0..255)")
    columns.append(values.astype(np.uint8).reshape(-1, 1))
  planes = images.transpose(0, 3, 1, 2).reshape(len(images), _PIXELS)
  return np.concatenate(columns + [planes], axis=1).tobytes()


def write_cifar10(directory: str, train: Arrays, test: Arrays) -> str:
  """Writes the CIFAR-10 binary layout into `directory`; returns it.

  The train split is cut into 5 consecutive batches, as the official data is.
  """
  folder = paths.makedirs(directory)
  chunks = np.array_split(np.arange(len(train.labels)), len(_CIFAR10_TRAIN))
  for name, index in zip(_CIFAR10_TRAIN, chunks):
    data = _cifar_bytes(train.images[index], [train.labels[index]])
    (folder / name).write_bytes(data)
  (folder / _CIFAR10_TEST).write_bytes(
      _cifar_bytes(test.images, [test.labels]))
  return directory


def write_cifar100(directory: str, train: Arrays, test: Arrays,
                   train_coarse: np.ndarray | None = None,
                   test_coarse: np.ndarray | None = None) -> str:
  """Writes the CIFAR-100 binary layout into `directory`; returns it.

  `labels` are the fine labels. Coarse labels default to fine // 5, a
  placeholder: the real fine-to-coarse map is not that simple.
  """
  folder = paths.makedirs(directory)
  for name, split, coarse in (("train.bin", train, train_coarse),
                              ("test.bin", test, test_coarse)):
    coarse = split.labels // 5 if coarse is None else coarse
    (folder / name).write_bytes(
        _cifar_bytes(split.images, [coarse, split.labels]))
  return directory


# ---------------------------------------------------------------- MNIST ----

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_IMAGES = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _mnist_path(data_dir: str, name: str) -> epath.Path | None:
  for candidate in (name + ".gz", name):
    path = paths.path(data_dir) / candidate
    if path.is_file():
      return path
  return None


def _read_idx(path: epath.Path, magic: int) -> np.ndarray:
  """Reads an idx file (gzipped if named .gz) and checks its header."""
  try:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
      data = gzip.decompress(data)
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f"mnist: cannot read {path}: {e}") from None
  found = int.from_bytes(data[:4], "big")
  if found != magic:
    raise DataError(
        f"mnist: {path} has magic number {found}, expected {magic}; it is not "
        f"an idx {'image' if magic == _IDX_IMAGES else 'label'} file")
  ndim = magic & 0xFF  # the low byte of the magic number counts dimensions
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(
        f"mnist: {path} is {len(data)} bytes, shorter than its idx header")
  dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
  want = int(np.prod(dims))
  if len(data) - header != want:
    raise DataError(
        f"mnist: {path} holds {len(data) - header} data bytes but its header "
        f"promises {want} (dims {dims}); the file is truncated or corrupt")
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def read_mnist(data_dir: str) -> tuple[Arrays, Arrays]:
  """Reads the four MNIST idx files (raw or .gz) into (train, test).

  Fashion-MNIST ships with the same file names and format, so it reads too.
  """
  names = [n for pair in _MNIST_FILES.values() for n in pair]
  missing = [n for n in names if _mnist_path(data_dir, n) is None]
  if missing:
    what = ("no MNIST idx files" if len(missing) == len(names)
            else f"no {', '.join(missing)} (raw or .gz)")
    raise DataError(
        f"mnist: {what} in {data_dir} (expected {', '.join(names)}, each "
        f"raw or with .gz, as the official downloads are); {_FIX}")
  splits = []
  for split, (image_name, label_name) in _MNIST_FILES.items():
    image_path = _mnist_path(data_dir, image_name)
    label_path = _mnist_path(data_dir, label_name)
    images = _read_idx(image_path, _IDX_IMAGES)
    labels = _read_idx(label_path, _IDX_LABELS)
    if len(images) != len(labels):
      raise DataError(
          f"mnist: {split} split has {len(images)} images in {image_path} but "
          f"{len(labels)} labels in {label_path}")
    splits.append(_arrays(images[..., None], labels))
  return splits[0], splits[1]


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
  array = np.asarray(array)
  if not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"idx files hold unsigned bytes, got {array.dtype}")
  if array.min(initial=0) < 0 or array.max(initial=0) > 255:
    raise ValueError("idx values must fit in one byte (0..255)")
  header = np.array([magic, *array.shape], dtype=">u4").tobytes()
  return header + array.astype(np.uint8).tobytes()


def write_mnist(directory: str, train: Arrays, test: Arrays,
                compress: bool = True) -> str:
  """Writes the four MNIST idx files into `directory`; returns it.

  Images must be [N, H, W, 1]. With `compress`, files get the official .gz
  names; without, the raw names.
  """
  folder = paths.makedirs(directory)
  for split, arrays in (("train", train), ("test", test)):
    if arrays.images.shape[-1] != 1:
      raise ValueError(f"MNIST images are grey [N, H, W, 1], got "
                       f"{arrays.images.shape}")
    image_name, label_name = _MNIST_FILES[split]
    for name, data in (
        (image_name, _idx_bytes(arrays.images[..., 0], _IDX_IMAGES)),
        (label_name, _idx_bytes(arrays.labels, _IDX_LABELS))):
      if compress:
        # mtime=0 keeps the output byte-identical from run to run.
        (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
      else:
        (folder / name).write_bytes(data)
  return directory


# --------------------------------------------------------------- digits ----

def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] weights of 1-D bilinear resampling.

  Uses half-pixel centres (as PIL and tf.image do), so the image is not
  shifted; sample points past the edge clamp to the edge pixel.
  """
  centres = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
  centres = np.clip(centres, 0, size_in - 1)
  low = np.floor(centres).astype(int)
  high = np.minimum(low + 1, size_in - 1)
  frac = centres - low
  weights = np.zeros((size_out, size_in))
  rows = np.arange(size_out)
  np.add.at(weights, (rows, low), 1 - frac)
  np.add.at(weights, (rows, high), frac)
  return weights


def _resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes float images [N, H, W] to [N, size, size], one axis at a time."""
  rows = _bilinear_matrix(images.shape[1], size)
  cols = _bilinear_matrix(images.shape[2], size)
  return np.einsum("ah,nhw,bw->nab", rows, images, cols)


def load_digits(test_fraction: float = 0.2, seed: int = 0,
                image_size: int = 32) -> tuple[Arrays, Arrays]:
  """scikit-learn's bundled 8x8 digits, made to look like small MNIST.

  Each digit is scaled to 0..255, resized bilinearly to 3/4 of `image_size`
  and centred on a zero field of `image_size` (as MNIST centres its 20x20
  digits in 28x28). A permutation from `seed` splits off `test_fraction`.
  Needs no files and no network: a smoke-test dataset.
  """
  if not 0 < test_fraction < 1:
    raise DataError(
        f"digits: test_fraction must be between 0 and 1, got {test_fraction}")
  inner = image_size * 3 // 4
  if inner < 1:
    raise DataError(f"digits: image_size must be at least 2, got {image_size}")
  from sklearn import datasets  # lazy: only this loader needs scikit-learn

  digits = datasets.load_digits()
  pixels = digits.images.astype(np.float64) * (255.0 / 16.0)  # values 0..16
  pixels = _resize_bilinear(pixels, inner)
  pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
  before = (image_size - inner) // 2
  after = image_size - inner - before
  pixels = np.pad(pixels, ((0, 0), (before, after), (before, after)))
  images = pixels[..., None]
  labels = digits.target

  order = np.random.default_rng(seed).permutation(len(labels))
  num_test = int(round(len(labels) * test_fraction))
  test, train = order[:num_test], order[num_test:]
  return (_arrays(images[train], labels[train]),
          _arrays(images[test], labels[test]))


# ------------------------------------------------------------ synthetic ----

def synthetic(num_examples: int, image_shape: tuple[int, int, int],
              num_classes: int, seed: int) -> Arrays:
  """Uniform random images and labels, the same for the same seed."""
  if num_examples < 0 or num_classes < 1 or len(image_shape) != 3:
    raise DataError(
        f"synthetic: need num_examples >= 0, num_classes >= 1 and an (H, W, C) "
        f"image_shape, got {num_examples}, {num_classes}, {image_shape}")
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(num_examples, *image_shape),
                        dtype=np.uint8)
  labels = rng.integers(0, num_classes, size=num_examples, dtype=np.int32)
  return _arrays(images, labels)


# ----------------------------------------------------------------- TFDS ----

def read_tfds(name: str, data_dir: str | None, split: str) -> Arrays:
  """Reads a split of a prepared TFDS dataset (array_record or tfrecord)
  whole, without TensorFlow or tfds (`tfds_files`).

  Never downloads: on a machine without network a missing dataset must fail
  at once with the fix, not hang on a download.
  """
  from cnnflax.data import tfds_files
  records = tfds_files.find(name, data_dir).split(split)
  return _records_to_arrays([_decode_image(records[i], name)
                             for i in range(len(records))], name)


def _decode_image(record: tuple[bytes, int], name: str) -> dict:
  import io
  from PIL import Image, UnidentifiedImageError
  encoded, label = record
  try:
    return {"image": np.asarray(Image.open(io.BytesIO(encoded))),
            "label": label}
  except UnidentifiedImageError:
    raise DataError(f"tfds: {name!r} has an image that Pillow cannot decode; "
                    "the copy is corrupt: prepare it again") from None


def _records_to_arrays(records: list[dict], name: str) -> Arrays:
  """Stacks TFDS records ({'image': [H, W, C], 'label': int}) into Arrays."""
  if not records:
    raise DataError(f"tfds: {name!r} split has no records")
  if "image" not in records[0] or "label" not in records[0]:
    raise DataError(
        f"tfds: {name!r} records have keys {sorted(records[0])}, not 'image' "
        f"and 'label'")
  images = np.stack([np.asarray(r["image"]) for r in records])
  if images.ndim == 3:  # grey images stored without a channel axis
    images = images[..., None]
  if images.dtype != np.uint8:
    raise DataError(f"tfds: {name!r} images are {images.dtype}, not uint8")
  labels = np.array([int(r["label"]) for r in records])
  return _arrays(images, labels)
