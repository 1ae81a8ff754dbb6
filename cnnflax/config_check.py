"""Validates a config before anything is read or compiled.

Every field outside `config.model` has a rule here (the model's fields are
checked by the model itself); every error is one line that names the field
and what would be valid. A test keeps this table and configs/default.py equal.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable

import ml_collections

from cnnflax import data, models, optim, step
from cnnflax.backend import allocator, kernels
from cnnflax.errors import ConfigError

Rule = Callable[[str, Any], None]


def _fail(key: str, value: Any, want: str) -> None:
  raise ConfigError(f"config.{key}={value!r} is not valid; {want}")


def choice(*options: str) -> Rule:
  def rule(key, value):
    if value not in options:
      _fail(key, value, f"choose one of: {', '.join(options)}")
  return rule


def number(low: float | None = None, high: float | None = None,
           integer: bool = False, low_open: bool = False) -> Rule:
  def rule(key, value):
    kind = "a whole number" if integer else "a number"
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
      _fail(key, value, f"it must be {kind}")
    if low is not None and (value < low or (low_open and value == low)):
      _fail(key, value, f"it must be {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
      _fail(key, value, f"it must be <= {high}")
  return rule


def boolean(key, value):
  if not isinstance(value, bool):
    _fail(key, value, "it must be True or False")


def text(key, value):
  if not isinstance(value, str):
    _fail(key, value, "it must be a string")


def numbers(key, value):
  if not isinstance(value, (tuple, list)) or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
    _fail(key, value, "it must be a tuple of numbers, e.g. (0.5, 0.75)")


POSITIVE_INT = number(1, integer=True)
COUNT = number(0, integer=True)

FIELDS: dict[str, Rule] = {
    "dataset.name": text,
    "dataset.data_dir": text,
    "dataset.image_size": POSITIVE_INT,
    "dataset.augment": choice("none", "cifar", "imagenet"),
    "dataset.crop_padding": COUNT,
    "dataset.flip": boolean,
    "dataset.normalize": boolean,
    "dataset.on_device": boolean,
    "dataset.test_fraction": number(0, 1, low_open=True),
    "dataset.split_seed": COUNT,
    "dataset.synthetic_train_size": POSITIVE_INT,
    "dataset.synthetic_test_size": POSITIVE_INT,
    "dataset.synthetic_num_classes": number(2, integer=True),
    "dataset.synthetic_channels": POSITIVE_INT,
    "dataset.prefetch": COUNT,
    "dataset.workers": number(-1, integer=True),
    "dataset.version": text,
    "dataset.download": boolean,
    "dataset.train_crop": choice("random_resized", "scale", "square"),
    "dataset.scale_range": numbers,
    "dataset.pca_noise": number(0),
    "backend.platform": text,  # a comma list: backend.parse_platforms
    "backend.conv": choice("auto", *kernels.CONV),
    "backend.scanned_conv": choice("auto", *kernels.CONV),
    "backend.depthwise": choice("auto", *kernels.DEPTHWISE),
    "backend.batch_norm": choice("auto", *kernels.BATCH_NORM),
    "backend.allocator": choice(*allocator.CHOICES),
    "backend.xla_defaults": boolean,
    "batch_size": POSITIVE_INT,
    "eval_batch_size": POSITIVE_INT,
    "num_epochs": number(),
    "num_train_steps": number(integer=True),
    "optimizer.name": choice(*optim.OPTIMIZERS),
    "optimizer.learning_rate": number(0, low_open=True),
    "optimizer.momentum": number(0, 1),
    "optimizer.nesterov": boolean,
    "optimizer.weight_decay": number(0),
    "optimizer.decay_bias_and_bn": boolean,
    "optimizer.rmsprop_decay": number(0, 1),
    "optimizer.epsilon": number(0, low_open=True),
    "optimizer.b1": number(0, 1),
    "optimizer.b2": number(0, 1),
    "optimizer.grad_clip_norm": number(0),
    "schedule.name": choice(*optim.SCHEDULES),
    "schedule.boundaries": numbers,
    "schedule.boundaries_unit": choice(*optim.BOUNDARY_UNITS),
    "schedule.decay_factor": number(0, low_open=True),
    "schedule.decay_every_epochs": number(0, low_open=True),
    "schedule.warmup_steps": COUNT,
    "schedule.warmup_epochs": number(0),
    "schedule.warmup_type": choice("linear", "constant"),
    "schedule.warmup_learning_rate": number(0),
    "schedule.final_learning_rate": number(0),
    "label_smoothing": number(0, 1),
    "aux_loss_weights": numbers,
    "seed": COUNT,
    "half_precision": boolean,
    "parallelism": choice(*step.PARALLELISM),
    "batch_norm_sync": boolean,
    "log_every_steps": POSITIVE_INT,
    "eval_every_steps": number(-1, integer=True),
    "checkpoint_every_steps": POSITIVE_INT,
    "checkpoints_to_keep": POSITIVE_INT,
    "checkpoint_async": boolean,
}


def flat_keys(config: ml_collections.ConfigDict, prefix: str = ""):
  """Leaf keys of a config, `model.*` left to the model."""
  for key, value in config.items():
    if not prefix and key == "model":
      continue
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from flat_keys(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"


def get(config: ml_collections.ConfigDict, key: str) -> Any:
  value = config
  for part in key.split("."):
    if part not in value:
      raise ConfigError(f"config.{key} is missing; start from "
                        "configs/default.py, which defines every field")
    value = value[part]
  return value


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first bad field or combination."""
  if "model" not in config or "name" not in config.model:
    raise ConfigError("config.model.name is missing; set it to a registered "
                      "model, e.g. --config.model.name=lenet5")
  for key in flat_keys(config):
    if key not in FIELDS:
      close = difflib.get_close_matches(key, FIELDS, n=1)
      hint = f"did you mean config.{close[0]}?" if close else (
          "see configs/default.py for the fields")
      raise ConfigError(f"config.{key} is not a known field; {hint}")
  for key, rule in FIELDS.items():
    rule(key, get(config, key))
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError("config.num_epochs and config.num_train_steps are both "
                      "<= 0; set one of them to the training length")
  if config.optimizer.nesterov and not config.optimizer.momentum:
    raise ConfigError("config.optimizer.nesterov=True needs "
                      "config.optimizer.momentum > 0")
  if config.dataset.train_crop in ("scale", "square"):
    _check_scale_range(config.dataset)
  data.get_spec(config.dataset.name)
  models.model_info(config.model.name)


def _check_scale_range(cfg: ml_collections.ConfigDict) -> None:
  low, *rest = tuple(cfg.scale_range) or (0,)
  if (len(rest) != 1 or int(low) != low or int(rest[0]) != rest[0]
      or not cfg.image_size <= low <= rest[0]):
    raise ConfigError(
        f"config.dataset.scale_range={tuple(cfg.scale_range)} is not valid; "
        f"give (S_min, S_max), whole numbers with image_size "
        f"{cfg.image_size} <= S_min <= S_max, e.g. (256, 512)")
