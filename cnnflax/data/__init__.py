"""Datasets by name, the order examples are visited in, and preprocessing.

This package knows nothing of models or devices. It gives:
  * `load(cfg)`: a `Dataset` with train and test splits in host memory
    (small datasets) or as random-access record sources (streamed ones);
  * `TrainOrder`: which examples make up global step s (a fresh permutation
    each epoch, a pure function of seed and step, so resuming is exact);
  * `eval_batches`: the whole test split in padded, masked batches;
  * `host_batch` / `device_preprocess`: the host part and the on-device
    (pure jax) part of turning examples into a normalised batch.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Iterator

import jax.numpy as jnp
import ml_collections
import numpy as np

from cnnflax import paths
from cnnflax.data import augment, download, sources, tfds_files
from cnnflax.data.sources import Arrays
from cnnflax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Spec:
  """What is known of a dataset without reading it."""
  channels: int
  num_classes: int
  native_size: int | None  # stored image side; None: varies (streamed)
  reader: Callable[[str], tuple[Arrays, Arrays]] | None = None
  tfds_name: str | None = None
  files_hint: str = ""

  @property
  def streamed(self) -> bool:
    return self.native_size is None


DATASETS: dict[str, Spec] = {
    "digits": Spec(1, 10, 8),
    "mnist": Spec(1, 10, 28, sources.read_mnist, "mnist",
                  "the four MNIST idx files (train-images-idx3-ubyte.gz ...)"),
    "cifar10": Spec(3, 10, 32, sources.read_cifar10, "cifar10",
                    "cifar-10-batches-bin/data_batch_1.bin ... test_batch.bin"),
    "cifar100": Spec(3, 100, 32, sources.read_cifar100, "cifar100",
                     "cifar-100-binary/train.bin and test.bin"),
    "svhn_cropped": Spec(3, 10, 32, None, "svhn_cropped"),
    "imagenet2012": Spec(3, 1000, None, None, "imagenet2012"),
    "synthetic": Spec(3, 10, None),
}


def get_spec(name: str) -> Spec:
  if name.startswith("tfds:") and len(name) > 5:
    # Any prepared TFDS image classification dataset; its channels and
    # classes come from its features.json (see `prepared`).
    return Spec(0, 0, None, None, name[5:])
  if name not in DATASETS:
    raise DataError(f"config.dataset.name={name!r} is not a known dataset; "
                    f"choose one of: {', '.join(DATASETS)}, or tfds:NAME for "
                    "any prepared TFDS image classification dataset")
  return DATASETS[name]


def prepared(cfg: ml_collections.ConfigDict) -> tfds_files.Prepared:
  """The prepared TFDS copy of a streamed dataset."""
  return tfds_files.find(get_spec(cfg.name).tfds_name, cfg.data_dir or None,
                         cfg.version)


def image_shape(cfg: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """The (H, W, C) that the model sees for this dataset config."""
  spec = get_spec(cfg.name)
  if cfg.name == "synthetic":
    channels = cfg.synthetic_channels
  else:
    channels = spec.channels or prepared(cfg).channels
  return (cfg.image_size, cfg.image_size, channels)


def num_classes(cfg: ml_collections.ConfigDict) -> int:
  if cfg.name == "synthetic":
    return cfg.synthetic_num_classes
  return get_spec(cfg.name).num_classes or prepared(cfg).num_classes


@dataclasses.dataclass
class Dataset:
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  train: Any  # Arrays, or a tfds_files.Split for streamed datasets
  test: Any
  mean: np.ndarray  # per channel, 0..255 pixel units
  std: np.ndarray

  @property
  def num_train(self) -> int:
    return len(self.train.labels) if isinstance(self.train, Arrays) else len(
        self.train)

  @property
  def num_test(self) -> int:
    return len(self.test.labels) if isinstance(self.test, Arrays) else len(
        self.test)


def load(cfg: ml_collections.ConfigDict) -> Dataset:
  """Reads the named dataset; raises DataError saying what to put where."""
  spec = get_spec(cfg.name)
  shape = image_shape(cfg)
  if cfg.name == "synthetic":
    train = sources.synthetic(cfg.synthetic_train_size, shape,
                              num_classes(cfg), seed=1)
    test = sources.synthetic(cfg.synthetic_test_size, shape,
                             num_classes(cfg), seed=2)
  elif cfg.name == "digits":
    train, test = sources.load_digits(cfg.test_fraction, cfg.split_seed,
                                      cfg.image_size)
  elif spec.streamed:
    found = prepared(cfg)
    test_split = "validation" if "validation" in found.splits else "test"
    return Dataset(cfg.name, found.num_classes, shape, found.split("train"),
                   found.split(test_split), augment.IMAGENET_MEAN,
                   augment.IMAGENET_STD)
  else:
    train, test = _read_local_or_tfds(cfg, spec)
  train, test = (_fit(a, cfg.image_size, cfg.name) for a in (train, test))
  mean, std = _channel_stats(train.images, cfg.normalize)
  return Dataset(cfg.name, num_classes(cfg), shape, train, test, mean, std)


def _read_local_or_tfds(cfg, spec: Spec) -> tuple[Arrays, Arrays]:
  """The official files in data_dir (or, without one, in the download
  cache), else a prepared TFDS copy, else the official files downloaded."""
  folder = cfg.data_dir or os.path.join(download.default_cache(), cfg.name)
  local_error = None
  if spec.reader is not None and (cfg.data_dir or os.path.isdir(folder)):
    try:
      return spec.reader(folder)
    except DataError as e:
      local_error = e
  try:
    return (sources.read_tfds(spec.tfds_name, cfg.data_dir or None, "train"),
            sources.read_tfds(spec.tfds_name, cfg.data_dir or None, "test"))
  except DataError as tfds_error:
    if spec.reader is not None and cfg.download and not paths.is_url(folder):
      return spec.reader(_download(cfg.name, folder))
    if local_error is not None:
      raise local_error from None
    if spec.reader is not None:
      raise DataError(
          f"{cfg.name}: no local copy and no prepared TFDS dataset "
          f"({tfds_error}); put {spec.files_hint} in a folder and set "
          "--config.dataset.data_dir to it, or set "
          "--config.dataset.download=True to fetch them") from None
    raise


def _download(name: str, folder: str) -> str:
  try:
    return download.fetch(name, folder)
  except DataError as e:  # offline, most often: say where we looked too
    reason = str(e).removeprefix(f"{name}: ")
    raise DataError(f"{name}: no copy in {folder} and no prepared TFDS "
                    f"dataset; {reason}") from None


def _fit(arrays: Arrays, size: int, name: str) -> Arrays:
  """Zero-pads smaller images to size x size, centred (MNIST 28 -> 32)."""
  h, w = arrays.images.shape[1:3]
  if (h, w) == (size, size):
    return arrays
  if h > size or w > size:
    raise DataError(f"config.dataset.image_size={size} is smaller than "
                    f"{name}'s {h}x{w} images; set it to at least {max(h, w)}")
  top, left = (size - h) // 2, (size - w) // 2
  pad = ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0))
  return Arrays(np.pad(arrays.images, pad), arrays.labels)


def _channel_stats(images: np.ndarray, normalize: bool):
  channels = images.shape[-1]
  if not normalize:
    return np.zeros(channels, np.float32), np.full(channels, 255., np.float32)
  flat = images.reshape(-1, channels)
  # Chunked so that CIFAR-size arrays are not copied to float64 whole.
  total = np.zeros(channels)
  squares = np.zeros(channels)
  for start in range(0, len(flat), 1 << 20):
    chunk = flat[start:start + (1 << 20)].astype(np.float64)
    total += chunk.sum(0)
    squares += (chunk ** 2).sum(0)
  mean = total / len(flat)
  std = np.sqrt(np.maximum(squares / len(flat) - mean ** 2, 1e-6))
  return mean.astype(np.float32), std.astype(np.float32)


# --- which examples each step sees ------------------------------------------


class TrainOrder:
  """Global step -> example indices: a new permutation every epoch, the last
  partial batch of an epoch dropped, all a pure function of (seed, step)."""

  def __init__(self, num_examples: int, batch_size: int, seed: int):
    if batch_size > num_examples:
      raise DataError(f"config.batch_size={batch_size} exceeds the "
                      f"{num_examples} training examples; lower batch_size")
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.seed = seed
    self.steps_per_epoch = num_examples // batch_size
    self._epoch, self._perm = -1, None

  def indices(self, step: int) -> np.ndarray:
    epoch, pos = divmod(step, self.steps_per_epoch)
    if epoch != self._epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._epoch, self._perm = epoch, rng.permutation(self.num_examples)
    start = pos * self.batch_size
    return self._perm[start:start + self.batch_size].astype(np.int32)


def eval_batches(num_examples: int,
                 batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(indices, mask) covering every example once; the last batch is padded
  with index 0 and mask 0 so that no example is dropped."""
  for start in range(0, num_examples, batch_size):
    idx = np.arange(start, min(start + batch_size, num_examples))
    mask = np.ones(batch_size, np.float32)
    mask[len(idx):] = 0.
    yield np.pad(idx, (0, batch_size - len(idx))).astype(np.int32), mask


def num_eval_batches(num_examples: int, batch_size: int) -> int:
  return math.ceil(num_examples / batch_size)


# --- turning examples into batches -----------------------------------------


def on_device(dataset: Dataset, cfg: ml_collections.ConfigDict) -> bool:
  return isinstance(dataset.train, Arrays) and cfg.on_device


def host_batch(dataset: Dataset, cfg, train: bool,
               indices: np.ndarray) -> dict[str, np.ndarray]:
  """What the host sends for one batch of an in-memory dataset: indices only
  when the data lives on the devices, else the uint8 images and labels.
  (Streamed datasets make their batches in `stream`.)"""
  if on_device(dataset, cfg):
    return {"index": indices}
  split = dataset.train if train else dataset.test
  return {"image": split.images[indices], "label": split.labels[indices]}


def device_preprocess(dataset: Dataset, cfg, train: bool, dtype=jnp.float32):
  """The jax half of the input pipeline, run inside the compiled step:
  gathers from device-resident data, augments and normalises.

  Returns fn(arrays, batch, words) -> (images, labels); `arrays` holds the
  split's images/labels for on-device data (else None), `words` the uint32
  [batch, augment.WORDS] random words of each example's augmentation.
  """
  mean = jnp.asarray(dataset.mean)
  std = jnp.asarray(dataset.std)
  kind = cfg.augment if train else "none"

  def fn(arrays, batch, words):
    if arrays is not None:
      images = arrays["images"][batch["index"]]
      labels = arrays["labels"][batch["index"]]
    else:
      images, labels = batch["image"], batch["label"]
    images = augment.augment_batch(words, images, kind, cfg.crop_padding,
                                   cfg.flip)
    return augment.normalize(images, mean, std, dtype,
                             batch.get("colour_offset")), labels

  return fn


def device_arrays(dataset: Dataset, cfg, train: bool) -> dict | None:
  if not on_device(dataset, cfg):
    return None
  split = dataset.train if train else dataset.test
  return {"images": split.images, "labels": split.labels}
