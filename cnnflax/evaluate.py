"""The papers' evaluation protocols on any workdir's checkpoint: the centre
crop, 10-crop, VGG's dense multi-scale evaluation, and ensembles.

  python -m cnnflax.evaluate --workdir=DIR                      # centre crop
  python -m cnnflax.evaluate --workdir=DIR --protocol=10crop   # AlexNet, ResNet
  python -m cnnflax.evaluate --workdir=DIR --protocol=dense --scales=256,384,512
  python -m cnnflax.evaluate --workdir=DIR --ensemble=DIR2,DIR3 --protocol=dense

A workdir is what main.py (or a weight converter) writes: `config.json` and
`checkpoints/<step>`; nothing else is read. Every example of the split is
scored once (the last batch padded and masked); top-1, top-5 and the loss
(the negative log of the label's averaged probability) are printed as one
JSON line and written to DIR/eval_<protocol>[_<split>][_ensemble].json.

Protocols (each averages softmax probabilities, never logits, across views):

  center  what training's evaluation computes: the central crop covering
          0.875 of the short side, resized to image_size (in-memory
          datasets: the stored image).
  10crop  Krizhevsky et al. 2012 and He et al. 2016: the image rescaled to
          short side S (--resize; default: the training scale S when
          config.dataset.train_crop is VGG's `scale` or AlexNet's `square`,
          else image_size / 0.875, i.e. 256 for 224), the four corner crops
          and the centre crop of image_size, and their mirror images: 10
          softmaxes averaged. The corners are those of the whole image, or,
          for AlexNet's `square` training crops, of its central square (the
          paper's 256x256 image). The crops are cut from the stored image
          and resized in one step, as the training crops are, so the centre
          one is the `center` crop when S = image_size / 0.875.
          In-memory datasets (CIFAR, MNIST ...): the corners and centre of
          the image zero-padded by config.dataset.crop_padding (the extreme
          positions of training's random crops; no padding unless
          config.dataset.augment is `cifar`), and their mirror images.
  dense   Simonyan and Zisserman 2015, Sec. 3.2: the whole image rescaled to
          short side Q, the fully connected layers applied as convolutions
          (VGG, AlexNet: `dense=True`), the class score map averaged over
          its positions, the softmax of the mirrored image averaged in, and
          the softmaxes of every Q in --scales averaged. The long side is
          rounded to a multiple of --dense_round pixels (default 32, the
          network's stride) so that images of similar shape share one
          compiled program; --dense_round=1 keeps every aspect exactly.
          Default --scales: the paper's multi-scale rule for the training
          scale (fixed S: S-32, S, S+32; S jittered in [a, b]: a, (a+b)/2,
          b), where the config trains on VGG's `scale` crops; otherwise the
          one scale image_size / 0.875 (in-memory datasets: the stored
          size). Scales below image_size are refused.

--ensemble=DIR2,DIR3 averages the members' probabilities (each member
evaluated with its own config, all on the same split): the ensembles of
VGG (Sec. 4.4) and GoogLeNet (Sec. 7). Members must share the dataset, its
classes and its examples.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import json
import math
import time
from typing import Any, Callable, Iterator, Sequence

if __name__ == "__main__":  # before jax loads: nothing before it survives
  from cnnflax import backend
  backend.start()

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from jax import lax

from cnnflax import cli, data, paths, train
from cnnflax import run as run_lib
from cnnflax import step as step_lib
from cnnflax.data import stream
from cnnflax.data.sources import Arrays
from cnnflax.errors import CheckpointError, ConfigError, DataError

PROTOCOLS = ("center", "10crop", "dense")
CROP_FRACTION = 0.875  # the centre crop's share of the short side


@dataclasses.dataclass(frozen=True)
class Options:
  """How to evaluate; the CLI flags of the same names."""
  protocol: str = "center"
  scales: tuple[int, ...] = ()  # dense: short sides Q; (): see module doc
  resize: float = 0.  # 10crop: short side S; 0: see module doc
  flip: bool = True  # 10crop and dense: average the mirror images in
  split: str = ""  # "": the split training evaluated on
  step: int | None = None  # None: the newest checkpoint of each workdir
  data_dir: str = ""  # "": config.dataset.data_dir of each workdir
  batch_size: int = 0  # examples per global batch; 0: from eval_batch_size
  workers: int = -1  # grain workers; -1: config.dataset.workers
  limit: int = 0  # > 0: only the first `limit` examples (a quick look)
  dense_round: int = 32  # dense: round the long side to this many pixels


# --- workdirs ----------------------------------------------------------------


class Member:
  """One workdir: its run (model, data, devices), the chosen split and step."""

  def __init__(self, workdir: str, options: Options, devices=None):
    self.workdir = workdir
    config = run_lib.saved_config(workdir)
    if options.data_dir:
      config.dataset.data_dir = options.data_dir
    if options.workers >= 0:
      config.dataset.workers = options.workers
    self.config = config
    self.run = run_lib.Run(config, workdir, devices)
    self.split = options.split or _default_split(self.run)
    self.run.dataset = dataclasses.replace(
        self.run.dataset, test=_split(self.run, self.split))
    self.step = self._find_step(options.step)

  @property
  def name(self) -> str:
    return self.config.model.name

  @property
  def num_classes(self) -> int:
    return self.run.dataset.num_classes

  @property
  def streamed(self) -> bool:
    return not isinstance(self.run.dataset.test, Arrays)

  def _find_step(self, step: int | None) -> int:
    folder = paths.path(self.workdir) / "checkpoints"
    steps = sorted(int(p.name) for p in folder.iterdir()
                   if p.name.isdigit()) if folder.is_dir() else []
    if not steps:
      raise CheckpointError(
          f"--workdir={self.workdir} holds no checkpoint (nothing in "
          f"{folder}); train it (python main.py --workdir=...) or convert "
          "weights into it first")
    if step is None:
      return steps[-1]
    if step not in steps:
      raise CheckpointError(
          f"--step={step}: {folder} has no such checkpoint (it has "
          f"{', '.join(map(str, steps))})")
    return step

  def variables(self) -> dict:
    """{"params", "batch_stats"} of the checkpoint, on the host, restored
    into a template built without running the initialiser."""
    shapes = jax.eval_shape(self.run.init_state)
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    ckpts = self.run.checkpoints(read_only=True)  # training may be saving
    try:
      state, _ = ckpts.restore(template, self.step)
    finally:
      ckpts.close()
    return {"params": state.params, "batch_stats": state.batch_stats}


def _default_split(run: run_lib.Run) -> str:
  if isinstance(run.dataset.test, Arrays):
    return "test"
  return "validation" if "validation" in data.prepared(
      run.config.dataset).splits else "test"


def _split(run: run_lib.Run, name: str):
  if isinstance(run.dataset.test, Arrays):
    if name not in ("train", "test"):
      raise ConfigError(f"--split={name}: {run.config.dataset.name} is held "
                        "in memory with the splits train and test")
    return run.dataset.train if name == "train" else run.dataset.test
  return data.prepared(run.config.dataset).split(name)


# --- geometry (host side, in grain workers for streamed datasets) ----------


class ArraySource:
  """An in-memory split read like a streamed one: [i] -> (image, label)."""

  def __init__(self, arrays: Arrays):
    self.arrays = arrays

  def __len__(self) -> int:
    return len(self.arrays.labels)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self.arrays.images[index], int(self.arrays.labels[index])


def _open(item, channels: int):
  from PIL import Image
  if isinstance(item, np.ndarray):
    return Image.fromarray(item[..., 0] if channels == 1 else item)
  return Image.open(io.BytesIO(item))


def _as_array(image, channels: int) -> np.ndarray:
  out = np.asarray(image)
  return out[..., None] if channels == 1 else out


def ten_crop_boxes(width: int, height: int, size: int, resize: float,
                   square: bool = False) -> list[tuple[float, ...]]:
  """The centre and four corner boxes (left, top, side, side) of the stored
  image that become size x size crops of the image rescaled to short side
  `resize`; the corners are those of the whole image, or with `square`
  those of its central square (AlexNet's 256 x 256 image)."""
  side = size * min(width, height) / resize
  if square:
    short = min(width, height)
    x0, y0, w, h = (width - short) / 2, (height - short) / 2, short, short
  else:
    x0, y0, w, h = 0., 0., width, height
  left, right = x0, x0 + w - side
  top, bottom = y0, y0 + h - side
  return [((width - side) / 2, (height - side) / 2, side, side),
          (left, top, side, side), (right, top, side, side),
          (left, bottom, side, side), (right, bottom, side, side)]


def five_crops(item, size: int, channels: int, resize: float,
               square: bool) -> np.ndarray:
  """[5, size, size, channels] uint8: `ten_crop_boxes` of an encoded image,
  each resized in one Pillow call after the same JPEG draft as
  augment.decode_crop."""
  from PIL import Image
  image = _open(item, channels)
  width, height = image.size
  boxes = ten_crop_boxes(width, height, size, resize, square)
  mode = "L" if channels == 1 else "RGB"
  scale = size / boxes[0][2]
  if scale < 1:
    image.draft(mode, (int(np.ceil(width * scale)),
                       int(np.ceil(height * scale))))
  sx, sy = image.size[0] / width, image.size[1] / height
  if image.mode != mode:
    image = image.convert(mode)
  crops = [image.resize((size, size), Image.BILINEAR,
                        box=(x * sx, y * sy, (x + w) * sx, (y + h) * sy))
           for x, y, w, h in boxes]
  return np.stack([_as_array(c, channels) for c in crops])


def padded_crops(image: np.ndarray, padding: int) -> np.ndarray:
  """[5, H, W, C]: the centre and corner H x W crops of `image` zero-padded
  by `padding` (in-memory datasets: where training's random crops reach)."""
  h, w = image.shape[:2]
  p = padding
  big = np.pad(image, ((p, p), (p, p), (0, 0)))
  at = [(p, p), (0, 0), (0, 2 * p), (2 * p, 0), (2 * p, 2 * p)]
  return np.stack([big[y:y + h, x:x + w] for y, x in at])


def dense_shape(width: int, height: int, scale: int,
                step: int) -> tuple[int, int]:
  """(H, W) of the whole image rescaled to short side `scale`, the long side
  rounded to a multiple of `step` pixels (at least `scale`)."""
  short, long = min(width, height), max(width, height)
  side = max(scale, int(step * round(scale * long / short / step)))
  return (side, scale) if height > width else (scale, side)


def rescale(item, shape: tuple[int, int], channels: int) -> np.ndarray:
  """The whole image resized to shape (H, W), uint8 [H, W, C]."""
  from PIL import Image
  image = _open(item, channels)
  width, height = image.size
  mode = "L" if channels == 1 else "RGB"
  if (height, width) == tuple(shape) and image.mode == mode:
    return _as_array(image, channels)
  if shape[0] < height and shape[1] < width:
    image.draft(mode, (shape[1], shape[0]))
  if image.mode != mode:
    image = image.convert(mode)
  return _as_array(image.resize((shape[1], shape[0]), Image.BILINEAR),
                   channels)


class CropBatch:
  """Batch number -> this host's rows of that batch of five crops each:
  {"image": [rows, 5, size, size, C], "label", "mask"}."""

  def __init__(self, source, num: int, batch_size: int, rows: slice,
               size: int, channels: int, resize: float, square: bool,
               padding: int):
    self.source, self.num, self.batch_size, self.rows = (
        source, num, batch_size, rows)
    self.size, self.channels, self.resize = size, channels, resize
    self.square, self.padding = square, padding

  def __len__(self) -> int:
    return -(-self.num // self.batch_size)

  def __call__(self, number: int) -> dict[str, np.ndarray]:
    indices, mask = _padded(int(number) * self.batch_size, self.batch_size,
                            self.num)
    indices = indices[self.rows]
    images = np.empty((len(indices), 5, self.size, self.size, self.channels),
                      np.uint8)
    labels = np.empty(len(indices), np.int32)
    for k, index in enumerate(indices):
      item, labels[k] = self.source[int(index)]
      if isinstance(item, np.ndarray):
        images[k] = padded_crops(item, self.padding)
      else:
        images[k] = five_crops(item, self.size, self.channels, self.resize,
                               self.square)
    return {"image": images, "label": labels, "mask": mask[self.rows]}


class DenseBatch:
  """Batch number -> this host's rows of that planned batch of whole images
  at one shape: {"image": [rows, H, W, C], "label", "mask"}."""

  def __init__(self, source, plan: list, rows: list[slice], channels: int):
    self.source, self.plan, self.rows = source, plan, rows
    self.channels = channels

  def __len__(self) -> int:
    return len(self.plan)

  def __call__(self, number: int) -> dict[str, np.ndarray]:
    shape, indices, mask = self.plan[int(number)]
    rows = self.rows[int(number)]
    indices = indices[rows]
    images = np.empty((len(indices), *shape, self.channels), np.uint8)
    labels = np.empty(len(indices), np.int32)
    for k, index in enumerate(indices):
      item, labels[k] = self.source[int(index)]
      images[k] = rescale(item, shape, self.channels)
    return {"image": images, "label": labels, "mask": mask[rows]}


class ImageSizes:
  """Chunk number -> (width, height) of those examples (headers only)."""

  def __init__(self, source, num: int, chunk: int, channels: int):
    self.source, self.num, self.chunk = source, num, chunk
    self.channels = channels

  def __len__(self) -> int:
    return -(-self.num // self.chunk)

  def __call__(self, number: int) -> dict[str, np.ndarray]:
    start = int(number) * self.chunk
    stop = min(start + self.chunk, self.num)
    sizes = [_open(self.source[i][0], self.channels).size
             for i in range(start, stop)]
    return {"size": np.array(sizes, np.int32).reshape(-1, 2)}


def _padded(start: int, batch_size: int,
            num: int) -> tuple[np.ndarray, np.ndarray]:
  indices = np.arange(start, start + batch_size)
  mask = (indices < num).astype(np.float32)
  return np.where(mask > 0, indices, 0), mask


# --- the device programs -----------------------------------------------------


def _log_mean_exp(x: jax.Array, axis: int) -> jax.Array:
  return jax.nn.logsumexp(x, axis=axis) - math.log(x.shape[axis])


def _gather(x: jax.Array) -> jax.Array:
  """Every device's rows, in device order, on every device: a psum of
  zeros elsewhere (exact, and replicated as the mapping's output must be)."""
  count, index = lax.axis_size(step_lib.AXIS), lax.axis_index(step_lib.AXIS)
  rows = jnp.zeros((count, *x.shape), x.dtype).at[index].set(x)
  return lax.psum(rows, step_lib.AXIS).reshape(-1, *x.shape[1:])


# Compiled programs by everything they depend on: ensemble members of one
# architecture (and the scales of one member) compile each shape once.
_PROGRAMS: dict[tuple, Callable] = {}


def _program(run: run_lib.Run, kind: str, flip: bool) -> Callable:
  """(variables, arrays, batch) -> {"logp": each example's log averaged
  probabilities, "label", "mask"}, all gathered over the devices in global
  batch order. kind: center (one view), crops ([b, 5, h, w, c] crops and
  their mirror images), dense (whole images, FC layers as convolutions)."""
  key = (kind, flip, run.model, str(run.dtype),
         json.dumps(run.config.dataset.to_dict(), sort_keys=True, default=str),
         run.dataset.mean.tobytes(), run.dataset.std.tobytes(),
         run.devices.parallelism, tuple(d.id for d in run.devices.devices))
  if key not in _PROGRAMS:
    _PROGRAMS[key] = _make_program(run, kind, flip)
  return _PROGRAMS[key]


def _make_program(run: run_lib.Run, kind: str, flip: bool) -> Callable:
  model = run.model
  pre = data.device_preprocess(run.dataset, run.config.dataset, False,
                               run.dtype)

  def scores(variables, images):
    if kind == "dense":
      out = model.apply(variables, images, train=False, dense=True)
      logits = jnp.mean(out.astype(jnp.float32), axis=(1, 2))
    else:
      out = model.apply(variables, images, train=False)
      logits = step_lib.split_outputs(out)[0].astype(jnp.float32)
    return jax.nn.log_softmax(logits)

  def program(variables, arrays, batch):
    local = batch["mask"].shape[0]
    if kind == "center":
      images, labels = pre(arrays, batch, step_lib.no_augmentation(local))
      logp = scores(variables, images)
    else:
      views = batch["image"]
      if kind == "crops":  # [b, 5, h, w, c] -> [5b, h, w, c]
        views = views.reshape(-1, *views.shape[2:])
      images, labels = pre(None, {"image": views, "label": batch["label"]},
                           step_lib.no_augmentation(views.shape[0]))
      if flip:
        images = jnp.concatenate([images, images[:, :, ::-1]])
      logp = scores(variables, images)
      # rows [mirror][example][crop] -> [example, views]
      per_example = 5 if kind == "crops" else 1
      logp = logp.reshape(-1, local, per_example, logp.shape[-1])
      logp = logp.transpose(1, 0, 2, 3).reshape(local, -1, logp.shape[-1])
      logp = _log_mean_exp(logp, axis=1)
    out = {"logp": logp, "label": labels, "mask": batch["mask"]}
    return jax.tree.map(_gather, out)

  return run.devices.map_eval(program)


def _collect(run: run_lib.Run, fn: Callable, variables, arrays,
             batches: Iterator[tuple[dict, np.ndarray, np.ndarray,
                                     np.ndarray]]) -> None:
  """Runs `fn` on each (host batch, its global indices, out, labels) and
  writes each example's log probabilities into out[index] and its label
  into labels[index]; one batch in flight."""

  def store(result, indices, out, labels):
    result = jax.device_get(run.devices.first(result))
    keep = result["mask"] > 0
    out[indices[keep]] = result["logp"][keep]
    labels[indices[keep]] = result["label"][keep]

  pending = None
  for batch, *targets in batches:
    result = fn(variables, arrays, run.devices.shard(batch))
    if pending is not None:
      store(*pending)
    pending = (result, *targets)
  if pending is not None:
    store(*pending)


def _host_batches(make, count: int, workers: int,
                  prefetch: int) -> Iterator[dict]:
  if workers > 0:
    items = stream.batches(make, 0, count, workers)
  else:
    items = (make(i) for i in range(count))
  return train.prefetch(items, prefetch)


# --- the protocols ----------------------------------------------------------


def _per_batch(size: int, multiple: int) -> int:
  """`size` rounded down to a multiple of `multiple`, at least `multiple`."""
  return max(multiple, size // multiple * multiple)


def _round_up(size: int, multiple: int) -> int:
  return -(-size // multiple) * multiple


def center_scores(member: Member, variables, options: Options,
                  num: int) -> tuple[np.ndarray, np.ndarray]:
  """What training's evaluation computes (Run.eval_batches, the same
  preprocessing), kept per example."""
  run = member.run
  if options.batch_size:
    run.eval_batch_size = options.batch_size
  size = run.eval_batch_size
  arrays = run.devices.replicate(
      data.device_arrays(run.dataset, run.config.dataset, False))
  out, labels = _empty(num, member.num_classes)
  batches = train.prefetch(run.eval_batches(num), run.config.dataset.prefetch)
  pairs = ((b, _padded(k * size, size, num)[0], out, labels)
           for k, b in enumerate(batches))
  try:
    _collect(run, _program(run, "center", False), variables, arrays, pairs)
  finally:
    batches.close()
  return out, labels


def _workers(member: Member) -> int:
  return member.run.workers if member.streamed else 0


def _source(member: Member):
  test = member.run.dataset.test
  return ArraySource(test) if isinstance(test, Arrays) else test


def ten_crop_scores(member: Member, variables, options: Options,
                    num: int) -> tuple[np.ndarray, np.ndarray]:
  run, cfg = member.run, member.config.dataset
  views = 10 if options.flip else 5
  devices = run.devices.count
  size = options.batch_size or _per_batch(
      member.config.eval_batch_size // views, devices)
  padding = cfg.crop_padding if cfg.augment == "cifar" else 0
  make = CropBatch(_source(member), num, size,
                   run.devices.process_slice(size), cfg.image_size,
                   run.dataset.image_shape[-1], ten_crop_resize(member,
                                                                options),
                   cfg.get("train_crop") == "square", padding)
  out, labels = _empty(num, member.num_classes)
  batches = _host_batches(make, len(make), _workers(member), cfg.prefetch)
  pairs = ((b, _padded(k * size, size, num)[0], out, labels)
           for k, b in enumerate(batches))
  try:
    _collect(run, _program(run, "crops", options.flip), variables, None,
             pairs)
  finally:
    batches.close()
  return out, labels


def ten_crop_resize(member: Member, options: Options) -> float:
  """S, the short side the crops are cut from (streamed datasets)."""
  cfg = member.config.dataset
  if not member.streamed:
    if options.resize:
      raise ConfigError(
          f"--resize={options.resize:g}: {cfg.name} is held in memory at its "
          "stored size, and its 10 crops are cut from the image padded by "
          "config.dataset.crop_padding; leave --resize out")
    return float(cfg.image_size)
  resize = options.resize or _training_scale(cfg)
  if resize < cfg.image_size:
    raise ConfigError(f"--resize={resize:g} is smaller than the "
                      f"{cfg.image_size}-pixel crops; use at least "
                      f"{cfg.image_size}")
  return float(resize)


def _training_scale(cfg) -> float:
  """The short side training crops came from: VGG's and AlexNet's S (the
  middle of a jittered range), else image_size / 0.875."""
  if cfg.get("train_crop") in ("scale", "square"):
    low, high = tuple(cfg.scale_range)
    return (low + high) / 2
  return cfg.image_size / CROP_FRACTION


def dense_scales(member: Member, options: Options) -> tuple[int, ...]:
  cfg = member.config.dataset
  if options.scales:
    scales = tuple(options.scales)
    small = [q for q in scales if q < cfg.image_size]
    if small:
      raise ConfigError(
          f"--scales: {small[0]} is smaller than the {cfg.image_size}-pixel "
          f"training crops, which the first fully connected layer covers; "
          f"use scales of at least {cfg.image_size}")
    return scales
  if not member.streamed:
    return (cfg.image_size,)
  if cfg.get("train_crop") == "scale":  # the paper's Table 4 rule
    low, high = tuple(cfg.scale_range)
    scales = ((low - 32, low, low + 32) if low == high
              else (low, (low + high) // 2, high))
  else:
    scales = (round(cfg.image_size / CROP_FRACTION),)
  return tuple(q for q in scales if q >= cfg.image_size)


def check_dense(member: Member) -> None:
  call = inspect.signature(type(member.run.model).__call__)
  if "dense" not in call.parameters:
    raise ConfigError(
        f"--protocol=dense applies the fully connected layers as "
        f"convolutions, and {member.name} has no fully connected head (only "
        "the VGG and AlexNet families do); use --protocol=center or 10crop")


_SIZES: dict[tuple[str, int], np.ndarray] = {}  # ensembles read them once


def image_sizes(member: Member, num: int) -> np.ndarray:
  """[num, 2] (width, height) of each example as stored."""
  test = member.run.dataset.test
  if isinstance(test, Arrays):
    h, w = test.images.shape[1:3]
    return np.tile(np.array([w, h], np.int32), (num, 1))
  key = (test.where, num)
  if key not in _SIZES:
    make = ImageSizes(test, num, 256, member.run.dataset.image_shape[-1])
    sizes = [b["size"] for b in stream.batches(make, 0, len(make),
                                               member.run.workers)]
    _SIZES[key] = np.concatenate(sizes) if sizes else np.zeros((0, 2),
                                                               np.int32)
  return _SIZES[key]


def dense_plan(sizes: np.ndarray, scale: int, step: int, batch_size: int,
               pixels: int, views: int, devices: int) -> list:
  """[(shape, global indices, mask)]: the examples grouped by their shape at
  this scale, each group in batches (the last padded and masked). Batches of
  `batch_size`, or with 0 as many as hold `pixels` pixels of all views."""
  groups: dict[tuple[int, int], list[int]] = {}
  for index, (w, h) in enumerate(sizes):
    groups.setdefault(dense_shape(int(w), int(h), scale, step),
                      []).append(index)
  plan = []
  for shape, members in sorted(groups.items()):
    size = batch_size or _per_batch(
        pixels // (shape[0] * shape[1] * views), devices)
    size = min(size, _round_up(len(members), devices))
    members = np.array(members)
    for start in range(0, len(members), size):
      indices, mask = _padded(start, size, len(members))
      plan.append((shape, members[indices], mask))
  return plan


def dense_scores(member: Member, variables, options: Options,
                 num: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """{scale: (log probabilities, labels)}; each scale's map averaged over
  positions and the mirror image."""
  run, cfg = member.run, member.config.dataset
  views = 2 if options.flip else 1
  sizes = image_sizes(member, num)
  plan, targets = [], []  # every scale in one pipeline: workers start once
  results = {}
  for scale in dense_scales(member, options):
    batches = dense_plan(sizes, scale, max(1, options.dense_round),
                         options.batch_size,
                         member.config.eval_batch_size * cfg.image_size ** 2,
                         views, run.devices.count)
    logging.info("dense: scale %d, %d shapes, %d batches", scale,
                 len({shape for shape, _, _ in batches}), len(batches))
    results[scale] = _empty(num, member.num_classes)
    plan += batches
    targets += [results[scale]] * len(batches)
  rows = [run.devices.process_slice(len(mask)) for _, _, mask in plan]
  make = DenseBatch(_source(member), plan, rows, run.dataset.image_shape[-1])
  batches = _host_batches(make, len(make), _workers(member), cfg.prefetch)
  items = ((b, indices, *target)
           for b, (_, indices, _), target in zip(batches, plan, targets))
  try:
    _collect(run, _program(run, "dense", options.flip), variables, None,
             items)
  finally:
    batches.close()
  return results


def _empty(num: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
  return np.zeros((num, classes), np.float32), np.full(num, -1, np.int64)


# --- scores into numbers ----------------------------------------------------


def metrics(logp: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """top-1, top-5 (top-k of fewer classes: all of them) and the mean
  negative log probability of the label; ties go to the lower class, as
  lax.top_k breaks them."""
  k = min(5, logp.shape[-1])
  top = np.argsort(-logp, axis=-1, kind="stable")[:, :k]
  hits = top == labels[:, None]
  nll = -logp[np.arange(len(labels)), labels].astype(np.float64)
  return {"top1_acc": float(np.mean(hits[:, 0])),
          "top5_acc": float(np.mean(np.any(hits, axis=-1))),
          "loss": float(np.mean(nll))}


def log_mean(parts: Sequence[np.ndarray]) -> np.ndarray:
  """log of the mean of exp(parts): averaged probabilities, kept as logs."""
  total = parts[0]
  for part in parts[1:]:
    total = np.logaddexp(total, part)
  return (total - np.float32(math.log(len(parts)))).astype(np.float32)


def member_scores(member: Member, options: Options,
                  num: int) -> tuple[np.ndarray, np.ndarray, dict]:
  """(log averaged probabilities, labels, record) of one workdir."""
  start = time.perf_counter()
  host = member.variables()
  variables = member.run.devices.replicate(host)
  record: dict[str, Any] = {"workdir": str(member.workdir),
                            "step": member.step, "model": member.name,
                            "image_size": member.config.dataset.image_size}
  if options.protocol == "center":
    logp, labels = center_scores(member, variables, options, num)
  elif options.protocol == "10crop":
    record["resize"] = ten_crop_resize(member, options)
    logp, labels = ten_crop_scores(member, variables, options, num)
  else:
    per_scale = dense_scores(member, variables, options, num)
    record["scales"] = list(per_scale)
    record["per_scale"] = {str(q): metrics(*scores)
                           for q, scores in per_scale.items()}
    logp = log_mean([scores for scores, _ in per_scale.values()])
    labels = next(iter(per_scale.values()))[1]
  if np.any(labels < 0):  # every example is scored once; never expected
    raise RuntimeError(f"{int(np.sum(labels < 0))} examples were not scored")
  record.update(metrics(logp, labels))
  record["wall_s"] = round(time.perf_counter() - start, 2)
  logging.info("%s (step %d): top-1 %.4f top-5 %.4f", member.workdir,
               member.step, record["top1_acc"], record["top5_acc"])
  return logp, labels, record


def check_members(members: Sequence[Member], num: int) -> None:
  """Ensemble members must score the same examples on the same classes."""
  first = members[0]
  for other in members[1:]:
    mine = (first.config.dataset.name, first.num_classes)
    theirs = (other.config.dataset.name, other.num_classes)
    if mine != theirs:
      raise ConfigError(
          f"--ensemble: {other.workdir} was trained on {theirs[1]} classes "
          f"of {theirs[0]} but {first.workdir} on {mine[1]} of {mine[0]}; "
          "ensemble members must share the dataset and its classes")
    count = min(other.run.dataset.num_test, num)
    if count != num:
      raise ConfigError(
          f"--ensemble: {other.workdir} reads {count} examples of the "
          f"{other.split} split but {first.workdir} {num}; give the members "
          "the same data (--data_dir)")


def check_options(options: Options) -> None:
  if options.protocol not in PROTOCOLS:
    raise ConfigError(f"--protocol={options.protocol!r} is not valid; choose "
                      f"one of {', '.join(PROTOCOLS)}")
  if options.limit < 0 or options.batch_size < 0:
    raise ConfigError("--limit and --batch_size must be 0 or more")
  if options.scales and options.protocol != "dense":
    raise ConfigError("--scales are dense evaluation's; add "
                      "--protocol=dense or leave them out")
  if options.resize and options.protocol != "10crop":
    raise ConfigError("--resize is 10crop's short side; add "
                      "--protocol=10crop or leave it out")


def evaluate(workdirs: Sequence[str], options: Options = Options(),
             devices=None) -> dict[str, Any]:
  """Scores the newest (or options.step) checkpoint of each workdir with
  options.protocol and averages the members' probabilities. Returns the
  result record (what the CLI writes as JSON)."""
  check_options(options)
  if not workdirs:
    raise ConfigError("--workdir is required")
  start = time.perf_counter()
  step_lib.initialize_distributed()
  train.quiet_library_logs()
  members = [Member(w, options, devices) for w in workdirs]
  if options.protocol == "dense":
    for member in members:
      check_dense(member)
      dense_scales(member, options)  # bad scales: before anything runs
  if options.protocol == "10crop":
    for member in members:
      ten_crop_resize(member, options)
  count = members[0].run.devices.count
  if options.batch_size % count:
    raise ConfigError(f"--batch_size={options.batch_size} is not divisible "
                      f"by the {count} devices; use a multiple of {count}")
  num = members[0].run.dataset.num_test
  num = min(num, options.limit) if options.limit else num
  check_members(members, num)
  total, labels, records = None, None, []
  for member in members:
    logp, member_labels, record = member_scores(member, options, num)
    if labels is not None and not np.array_equal(labels, member_labels):
      raise DataError(f"--ensemble: {member.workdir} read other labels than "
                      f"{members[0].workdir}; give the members the same data")
    labels = member_labels
    # Running sum of probabilities (as logs): one member's scores at a time.
    total = logp if total is None else np.logaddexp(total, logp)
    records.append(record)
  logp = total - np.float32(math.log(len(members)))
  result = {"protocol": options.protocol, "split": members[0].split,
            "dataset": members[0].config.dataset.name, "examples": num,
            "flip": options.flip if options.protocol != "center" else False,
            **metrics(logp, labels), "members": records,
            "wall_s": round(time.perf_counter() - start, 2)}
  if options.protocol == "dense":
    result["dense_round"] = options.dense_round
  return result


def default_out(workdir: str, options: Options, split: str,
                ensemble: bool) -> str:
  name = f"eval_{options.protocol}"
  if options.split:
    name += f"_{split}"
  if ensemble:
    name += "_ensemble"
  return str(paths.path(workdir) / f"{name}.json")


def write_result(result: dict, out: str) -> None:
  if jax.process_index() != 0:
    return
  try:
    paths.write_atomic(out, json.dumps(result, indent=2, sort_keys=True))
  except OSError as e:
    raise ConfigError(f"--out={out} cannot be written ({type(e).__name__}: "
                      f"{e}); choose a file you can write") from None


# --- command line ------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI's flags, defined only when it runs: importing this module
  (experiments, tests) leaves absl's flag names to their owners."""
  flags.DEFINE_string("workdir", None, "The run to evaluate (config.json and "
                      "checkpoints/); written by main.py or a converter.")
  flags.DEFINE_string("protocol", "center", "center | 10crop | dense.")
  flags.DEFINE_list("scales", [], "dense: short sides Q, e.g. 256,384,512; "
                    "default: the paper's rule for the training scale.")
  flags.DEFINE_float("resize", 0., "10crop: the short side S the crops are cut "
                     "from; 0: the training scale (image_size / 0.875 unless "
                     "VGG or AlexNet crops).")
  flags.DEFINE_bool("flip", True, "10crop and dense: average the mirror "
                    "images' probabilities in.")
  flags.DEFINE_list("ensemble", [], "More workdirs whose probabilities are "
                    "averaged with --workdir's.")
  flags.DEFINE_string("split", "", "The split to score; default: the one "
                      "training evaluated on (validation, else test).")
  flags.DEFINE_integer("step", -1, "The checkpoint step; -1: the newest.")
  flags.DEFINE_string("data_dir", "", "Overrides config.dataset.data_dir.")
  flags.DEFINE_integer("batch_size", 0, "Examples per global batch; 0: as "
                       "many pixels as config.eval_batch_size centre crops.")
  flags.DEFINE_integer("workers", -1, "Grain worker processes; -1: "
                       "config.dataset.workers.")
  flags.DEFINE_integer("limit", 0, "> 0: score only the first LIMIT examples.")
  flags.DEFINE_integer("dense_round", 32, "dense: round the long side to a "
                       "multiple of this many pixels (1: exact aspect).")
  flags.DEFINE_string("out", "", "The JSON file; default: "
                      "WORKDIR/eval_<protocol>[_<split>][_ensemble].json.")


def options_from_flags() -> Options:
  try:
    scales = tuple(int(q) for q in FLAGS.scales)
  except ValueError:
    raise ConfigError(f"--scales={','.join(FLAGS.scales)}: give short sides "
                      "in pixels, e.g. 256,384,512") from None
  return Options(protocol=FLAGS.protocol, scales=scales, resize=FLAGS.resize,
                 flip=FLAGS.flip, split=FLAGS.split,
                 step=None if FLAGS.step < 0 else FLAGS.step,
                 data_dir=FLAGS.data_dir, batch_size=FLAGS.batch_size,
                 workers=FLAGS.workers, limit=FLAGS.limit,
                 dense_round=FLAGS.dense_round)


def main(argv):
  del argv  # cli.run refuses stray arguments
  options = options_from_flags()
  if not FLAGS.workdir:
    raise ConfigError("--workdir is required: the run to evaluate")
  workdirs = [FLAGS.workdir, *FLAGS.ensemble]
  result = evaluate(workdirs, options)
  out = FLAGS.out or default_out(FLAGS.workdir, options, result["split"],
                                 len(workdirs) > 1)
  write_result(result, out)
  summary = {k: result[k] for k in ("protocol", "split", "examples",
                                    "top1_acc", "top5_acc", "loss")}
  print(json.dumps({**summary, "out": out}))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
