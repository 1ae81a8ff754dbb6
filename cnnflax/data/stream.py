"""Streamed datasets (ImageNet size): random access into TFDS array_record
files, decoded and cropped on the host."""
from __future__ import annotations

import concurrent.futures

import numpy as np

from cnnflax.data import augment
from cnnflax.errors import DataError


class RecordSource:
  """One split of a prepared TFDS dataset, read by example index."""

  def __init__(self, name: str, data_dir: str | None, split: str,
               threads: int = 8):
    try:
      import tensorflow_datasets as tfds
      self._source = tfds.data_source(name, split=split, data_dir=data_dir,
                                      download=False)
    except Exception as e:  # tfds raises many types for a missing dataset
      raise DataError(
          f"{name}: no prepared TFDS dataset in "
          f"{data_dir or '~/tensorflow_datasets'} ({type(e).__name__}); "
          f"prepare it with `tfds build {name} --data_dir=DIR` (ImageNet "
          "needs its tars in DIR/downloads/manual) and set "
          "--config.dataset.data_dir=DIR") from None
    self._pool = concurrent.futures.ThreadPoolExecutor(threads)

  def __len__(self) -> int:
    return len(self._source)

  def load(self, indices: np.ndarray, rng: np.random.Generator, train: bool,
           size: int) -> dict[str, np.ndarray]:
    seeds = rng.integers(0, 2**31, len(indices))

    def one(i, seed):
      record = self._source[int(i)]
      image = np.asarray(record["image"])
      if train:
        image = augment.random_resized_crop(np.random.default_rng(seed), image,
                                            size)
      else:
        image = augment.center_crop(image, size)
      return image, record["label"]

    pairs = list(self._pool.map(one, indices, seeds))
    return {"image": np.stack([p[0] for p in pairs]).astype(np.uint8),
            "label": np.asarray([p[1] for p in pairs], np.int32)}
