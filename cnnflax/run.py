"""Setting a run up: the model, data, devices, schedule and backend of a
config, each choice checked once, before anything compiles. The training
loop (train.py), the tools (evaluate, convert, benchmark, summary) and the
experiments build their runs here."""
from __future__ import annotations

import json
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnnflax import backend, checkpoint, data, models, optim, paths
from cnnflax import step as step_lib
from cnnflax.backend.kernels import Kernels
from cnnflax import config_check
from cnnflax.data import stream
from cnnflax.errors import ConfigError


def build_model(config: ml_collections.ConfigDict, axis_name: str | None,
                kernels: Kernels | None = None):
  """The configured model; `config.model` holds its name and fields, and
  `kernels` (default: config.backend's for its platforms) how its layers
  compute."""
  fields = {k: v for k, v in config.model.items() if k != "name"}
  fields.setdefault("num_classes", data.num_classes(config.dataset))
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  module = models.model_info(config.model.name).module
  if "kernels" in models.module_fields(module):
    fields["kernels"] = kernels or resolve_backend(config, False).kernels
  return models.get_model(config.model.name, dtype=dtype, axis_name=axis_name,
                          **fields)


def resolve_backend(config: ml_collections.ConfigDict,
                    check_process: bool = True) -> backend.Backend:
  """config.backend resolved (backend.resolve); a bad value is a
  ConfigError naming the field."""
  try:
    return backend.resolve(config.backend, check_process)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir's config.json records, to evaluate or import into.
  Fields that did not exist when it was written take configs/default.py's
  value where that file can be imported. Its `backend` records what ran
  there; the reader resolves its own (the same function, maybe another
  machine)."""
  where = paths.path(workdir) / "config.json"
  if not where.exists():
    raise ConfigError(f"--workdir={workdir} holds no config.json; give a "
                      "folder that main.py (or the weight converter) wrote")
  try:
    saved = json.loads(where.read_text())
  except ValueError as e:
    raise ConfigError(f"{where} is not valid JSON ({e}); restore it from "
                      "the run's config") from None
  saved.pop("backend", None)
  try:
    from configs import default  # the repository root, as main.py runs
  except ImportError as e:
    raise ConfigError(f"reading {where} needs the repository's configs/ "
                      f"({e}); run from the repository root") from None
  return ml_collections.ConfigDict(_fill(default.get_config().to_dict(),
                                         saved))


def _fill(defaults: dict, saved: dict) -> dict:
  out = dict(saved)
  for key, value in defaults.items():
    if key not in out:
      out[key] = value
    elif isinstance(value, dict) and isinstance(out[key], dict):
      out[key] = _fill(value, out[key])
  return out


def check_classes(config: ml_collections.ConfigDict, model,
                  dataset_classes: int) -> None:
  if model.num_classes != dataset_classes:
    raise ConfigError(
        f"config.model.num_classes={model.num_classes} but "
        f"{config.dataset.name} has {dataset_classes} classes; remove the "
        f"field or set {dataset_classes}")


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


class Run:
  """Everything one training run builds before its loop starts."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               devices=None):
    config_check.check_config(config)
    self.config = config
    self.workdir = workdir
    self.backend = resolve_backend(config)  # before jax starts its backend
    axis = step_lib.AXIS if config.batch_norm_sync else None
    # validates the model's fields
    self.model = build_model(config, axis, self.backend.kernels)
    self.dataset = data.load(config.dataset)
    check_classes(config, self.model, self.dataset.num_classes)
    self.devices = step_lib.Devices(config.parallelism, devices)
    self.devices.check_batch("batch_size", config.batch_size)
    # Evaluation pads and masks anyway, so its batch just rounds up.
    per_device = -(-config.eval_batch_size // self.devices.count)
    self.eval_batch_size = per_device * self.devices.count
    self.order = data.TrainOrder(self.dataset.num_train, config.batch_size,
                                 config.seed)
    self.steps_per_epoch = self.order.steps_per_epoch
    self.num_steps = optim.total_steps(config, self.steps_per_epoch)
    self.schedule = optim.create_schedule(config, self.steps_per_epoch,
                                          self.num_steps)
    self.tx = optim.create_optimizer(config, self.schedule)
    self.dtype = jnp.bfloat16 if config.half_precision else jnp.float32

  def init_state(self) -> step_lib.TrainState:
    try:
      if self.config.aux_loss_weights:
        self._check_aux_heads()
      return step_lib.init_state(self.model, self.tx,
                                 self.dataset.image_shape, self.config.seed)
    except (TypeError, ValueError) as e:
      raise self._input_size_error(e) or e

  def _check_aux_heads(self) -> None:
    model = self.model.clone(axis_name=None)
    x = jnp.zeros((1, *self.dataset.image_shape))
    out = jax.eval_shape(
        lambda: model.init_with_output(
            {"params": jax.random.key(0), "dropout": jax.random.key(0)}, x,
            train=True)[0])
    heads = len(step_lib.split_outputs(out)[1])
    weights = tuple(self.config.aux_loss_weights)
    if len(weights) != heads:
      raise ConfigError(
          f"config.aux_loss_weights={weights} gives {len(weights)} weights "
          f"but {self.config.model.name} has {heads} auxiliary classifiers; "
          f"give {heads} weights" + (" or ()" if heads else ", i.e. ()"))

  def _input_size_error(self, error: Exception) -> ConfigError | None:
    """Says so when the model cannot take this image size but can take its
    paper's (tracing only, nothing compiles)."""
    info = models.model_info(self.config.model.name)
    if tuple(info.input_shape[:2]) == tuple(self.dataset.image_shape[:2]):
      return None
    try:
      jax.eval_shape(self.model.clone(axis_name=None).init,
                     jax.random.key(0),
                     jnp.zeros((1, *info.input_shape[:2],
                                self.dataset.image_shape[-1])))
    except Exception:  # the model fails anyway: not a size problem
      return None
    size = "x".join(map(str, self.dataset.image_shape[:2]))
    first = str(error).strip().splitlines()[0][:160] if str(error) else ""
    return ConfigError(
        f"config.dataset.image_size: {size} images are too small for "
        f"{self.config.model.name} ({type(error).__name__}: {first}); use its "
        f"paper's size {info.input_shape[0]} or a smaller-input variant")

  def train_fn(self):
    pre = data.device_preprocess(self.dataset, self.config.dataset, True,
                                 self.dtype)
    program = step_lib.make_train_program(self.model, self.tx, pre,
                                          self.schedule, self.config,
                                          self.devices.vary())
    return self.devices.map_train(program)

  def eval_fn(self):
    pre = data.device_preprocess(self.dataset, self.config.dataset, False,
                                 self.dtype)
    return self.devices.map_eval(step_lib.make_eval_program(self.model, pre))

  def train_batch(self, step: int) -> dict[str, np.ndarray]:
    """This host's share of global step `step`'s batch (host arrays), for
    in-memory datasets."""
    idx = self.order.indices(step)[self.devices.process_slice(
        self.config.batch_size)]
    return data.host_batch(self.dataset, self.config.dataset, True, idx)

  def train_batches(self, start: int, stop: int | None = None
                    ) -> Iterator[dict[str, np.ndarray]]:
    """This host's batches of steps start, start + 1, ... before `stop`
    (default: the end of training)."""
    stop = self.num_steps if stop is None else stop
    if not self.streamed:
      return (self.train_batch(s) for s in range(start, stop))
    cfg = self.config.dataset
    make = stream.TrainBatch(
        self.dataset.train, self.order,
        self.devices.process_slice(self.config.batch_size), cfg.image_size,
        self.dataset.image_shape[-1], self.config.seed, cfg.train_crop,
        cfg.scale_range, cfg.pca_noise)
    return stream.batches(make, start, stop, self.workers)

  @property
  def streamed(self) -> bool:
    return not isinstance(self.dataset.train, data.Arrays)

  @property
  def workers(self) -> int:
    workers = self.config.dataset.workers
    return stream.default_workers() if workers < 0 else workers

  def checkpoints(self, read_only: bool = False) -> checkpoint.Checkpoints:
    """The workdir's checkpoints, refusing those of another run."""
    return checkpoint.Checkpoints(
        paths.path(self.workdir) / "checkpoints",
        self.config.checkpoints_to_keep,
        run_identity(self.config, self.model, self.dataset.image_shape,
                     self.dataset.num_classes),
        background=self.config.checkpoint_async, read_only=read_only,
        recipe=None if read_only else config_check.recipe(self.config))

  def eval_batches(self, limit: int | None = None
                   ) -> Iterator[dict[str, np.ndarray]]:
    """This host's share of every test example once (or of the first
    `limit`), padded and masked."""
    rows = self.devices.process_slice(self.eval_batch_size)
    if self.streamed:
      make = stream.EvalBatch(self.dataset.test, self.eval_batch_size, rows,
                              self.config.dataset.image_size,
                              self.dataset.image_shape[-1], limit)
      yield from stream.batches(make, 0, len(make), self.workers)
      return
    num = self.dataset.num_test if limit is None else min(
        limit, self.dataset.num_test)
    for idx, mask in data.eval_batches(num, self.eval_batch_size):
      batch = data.host_batch(self.dataset, self.config.dataset, False,
                              idx[rows])
      batch["mask"] = mask[rows]
      yield batch


def run_identity(config: ml_collections.ConfigDict, model,
                 image_shape: tuple[int, ...], num_classes: int) -> dict:
  """What a checkpoint must share with the run that resumes it."""
  fields = {f: getattr(model, f) for f in models.module_fields(
      type(model)) if f not in ("dtype", "axis_name", "kernels")}
  fields["name"] = config.model.name
  model_fields = json.loads(json.dumps(fields, sort_keys=True, default=str))
  return {"model": model_fields, "dataset": config.dataset.name,
          "image_shape": list(image_shape), "num_classes": num_classes}
