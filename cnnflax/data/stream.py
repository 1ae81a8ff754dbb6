"""Streamed datasets (ImageNet size): prepared TFDS splits read by index,
decoded and cropped in grain worker processes.

Each element of the grain pipeline is one host batch: `TrainBatch(step)` or
`EvalBatch(number)`, a pure function of its argument. So

  * the visiting order is `TrainOrder`'s, a pure function of (seed, step):
    resuming at step s just starts the range at s, no iterator state;
  * the crop of each example is drawn from (seed, step, its position in the
    global batch): the same pixels for any number of workers or hosts;
  * each host decodes only its own rows of the global batch.

grain gives worker k the elements k, k + n, ... of n workers and returns
them in order; a batch travels from its worker once, whole.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable, Iterator

import numpy as np

from cnnflax.data import augment
from cnnflax.errors import DataError


def default_workers() -> int:
  """One worker per core this process may use (a SLURM or taskset binding
  counts), leaving one for the training loop."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  return max(1, cores - 1)


class TrainBatch:
  """Global step -> this host's rows of its training batch: uint8 crops,
  labels, and with `pca_noise` each image's RGB shift (added on the
  device, before normalising)."""

  def __init__(self, split, order, rows: slice, size: int, channels: int,
               seed: int, crop: str = "random_resized",
               scale_range=(256, 512), pca_noise: float = 0.0):
    self.split, self.order, self.rows = split, order, rows
    self.size, self.channels, self.seed = size, channels, seed
    self.crop, self.scale_range = crop, tuple(scale_range)
    self.pca_noise = pca_noise

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    step = int(step)
    indices = self.order.indices(step)
    positions = np.arange(len(indices))[self.rows]
    rngs = [np.random.default_rng([self.seed, step, p]) for p in positions]
    batch = _decode(self.split, indices[positions], rngs, self.size,
                    self.channels, self.crop, self.scale_range)
    if self.pca_noise > 0:  # drawn after the crop: crops stay as they were
      batch["colour_offset"] = np.stack(
          [augment.pca_offset(rng, self.pca_noise) for rng in rngs])
    return batch


class EvalBatch:
  """Batch number -> this host's rows of that evaluation batch: every
  example once, the last batch padded with example 0 and masked."""

  def __init__(self, split, batch_size: int, rows: slice, size: int,
               channels: int, limit: int | None = None):
    self.split, self.batch_size, self.rows = split, batch_size, rows
    self.size, self.channels = size, channels
    self.num = len(split) if limit is None else min(limit, len(split))

  def __len__(self) -> int:
    return -(-self.num // self.batch_size)

  def __call__(self, number: int) -> dict[str, np.ndarray]:
    start = int(number) * self.batch_size
    indices = np.arange(start, start + self.batch_size)
    mask = (indices < self.num).astype(np.float32)
    indices = np.where(mask > 0, indices, 0)
    batch = _decode(self.split, indices[self.rows], None, self.size,
                    self.channels)
    batch["mask"] = mask[self.rows]
    return batch


def _decode(split, indices: np.ndarray, rngs, size: int, channels: int,
            crop: str = "random_resized",
            scale_range=(256, 512)) -> dict[str, np.ndarray]:
  images = np.empty((len(indices), size, size, channels), np.uint8)
  labels = np.empty(len(indices), np.int32)
  for k, index in enumerate(indices):
    encoded, labels[k] = split[int(index)]
    images[k] = augment.decode_crop(encoded, size, channels,
                                    rngs[k] if rngs else None, crop,
                                    scale_range)
  return {"image": images, "label": labels}


def _worker_init(index: int, count: int) -> None:
  """Runs first in each worker. Stop signals (SIGTERM from a scheduler,
  Ctrl-C) reach the whole process group, but are the training process's to
  handle: it saves, then closes the workers. A worker whose training process
  is gone (killed with SIGKILL, say) ends instead of running on as an
  orphan."""
  del index, count
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(1)
    os._exit(1)

  threading.Thread(target=watch, daemon=True).start()


def batches(make: Callable[[int], dict], first: int, stop: int,
            workers: int, buffer: int = 2) -> Iterator[dict]:
  """make(first), ..., make(stop - 1), computed by `workers` grain worker
  processes (0: in this process) and yielded in order."""
  try:
    import grain
  except ImportError:
    raise DataError("streamed datasets decode in grain worker processes; "
                    "pip install 'cnnflax[imagenet]' (or -e '.[imagenet]')"
                    ) from None
  from absl import flags
  if not flags.FLAGS.is_parsed():  # grain reads its absl flags; library use
    flags.FLAGS.mark_as_parsed()
  dataset = grain.MapDataset.range(first, stop).map(make)
  # One batch at a time in each process: its decoding is the parallelism.
  pipeline = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=buffer))
  if workers > 0:
    pipeline = pipeline.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=buffer),
        worker_init_fn=_worker_init)
  iterator = iter(pipeline)
  try:
    for batch in iterator:
      # Out of the worker's shared memory at once, so that grain frees it
      # now rather than when jax lets go of the batch.
      yield {key: np.array(value) for key, value in batch.items()}
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()  # stops the worker processes now, not at garbage collection
