"""Validates a config before anything is read or compiled.

Every field outside `config.model` has a rule here (the model's fields are
checked by the model itself); every error is one line that names the field
and what would be valid. A test keeps this table and configs/default.py equal.
"""
from __future__ import annotations

import difflib
import json
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
           integer: bool = False, low_open: bool = False,
           high_open: bool = False) -> Rule:
  def rule(key, value):
    kind = "a whole number" if integer else "a number"
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
      _fail(key, value, f"it must be {kind}")
    if low is not None and (value < low or (low_open and value == low)):
      _fail(key, value, f"it must be {'>' if low_open else '>='} {low}")
    if high is not None and (value > high or (high_open and value == high)):
      _fail(key, value, f"it must be {'<' if high_open else '<='} {high}")
  return rule


def boolean(key, value):
  if not isinstance(value, bool):
    _fail(key, value, "it must be True or False")


def text(key, value):
  if not isinstance(value, str):
    _fail(key, value, "it must be a string")


def numbers(low: float | None = None, low_open: bool = False,
            integer: bool = False) -> Rule:
  """A tuple of numbers, each in range."""
  each = number(low, integer=integer, low_open=low_open)
  kind = "whole numbers" if integer else "numbers"
  example = "(2, 2, 2)" if integer else "(0.5, 0.75)"

  def rule(key, value):
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool)
        for v in value):
      _fail(key, value, f"it must be a tuple of {kind}, e.g. {example}")
    for i, v in enumerate(value):
      each(f"{key}[{i}]", v)
  return rule


def or_unset(rule: Rule, **meaning: str) -> Rule:
  """`rule`, or one of the sentinel values whose meaning is given, e.g.
  or_unset(POSITIVE_INT, **{"-1": "train for num_epochs"})."""
  sentinels = {int(k): v for k, v in meaning.items()}

  def check(key, value):
    if not isinstance(value, bool) and value in sentinels:
      return
    try:
      rule(key, value)
    except ConfigError as e:
      alternatives = ", ".join(f"{v} ({m})" for v, m in sentinels.items())
      raise ConfigError(f"{e}, or {alternatives}") from None
  return check


def finite(key, value):
  number()(key, value)
  if value != value or value in (float("inf"), float("-inf")):
    _fail(key, value, "it must be a finite number")


POSITIVE_INT = number(1, integer=True)
COUNT = number(0, integer=True)
RATE = number(0, 1)  # a probability or fraction, 0 and 1 included
BELOW_ONE = number(0, 1, high_open=True)  # e.g. a drop rate: 1 drops all

FIELDS: dict[str, Rule] = {
    "dataset.name": text,
    "dataset.data_dir": text,
    "dataset.image_size": POSITIVE_INT,
    "dataset.augment": choice("none", "cifar", "imagenet"),
    "dataset.crop_padding": COUNT,
    "dataset.flip": boolean,
    "dataset.normalize": boolean,
    "dataset.on_device": boolean,
    "dataset.test_fraction": number(0, 1, low_open=True, high_open=True),
    "dataset.split_seed": COUNT,
    "dataset.synthetic_train_size": POSITIVE_INT,
    "dataset.synthetic_test_size": POSITIVE_INT,
    "dataset.synthetic_num_classes": number(2, integer=True),
    "dataset.synthetic_channels": POSITIVE_INT,
    "dataset.prefetch": COUNT,
    "dataset.workers": or_unset(COUNT, **{"-1": "one per core, less one"}),
    "dataset.version": text,
    "dataset.download": boolean,
    "dataset.train_crop": choice("random_resized", "scale", "square"),
    "dataset.scale_range": numbers(1, integer=True),
    "dataset.pca_noise": number(0),
    "backend.platform": text,  # a comma list: backend.parse_platforms
    "backend.conv": choice("auto", *kernels.CONV),
    "backend.scanned_conv": choice("auto", *kernels.CONV),
    "backend.depthwise": choice("auto", *kernels.DEPTHWISE),
    "backend.batch_norm": choice("auto", *kernels.BATCH_NORM),
    "backend.max_pool": choice("auto", *kernels.MAX_POOL),
    "backend.allocator": choice(*allocator.CHOICES),
    "backend.xla_defaults": boolean,
    "batch_size": POSITIVE_INT,
    "eval_batch_size": POSITIVE_INT,
    "num_epochs": number(0),
    "num_train_steps": or_unset(POSITIVE_INT,
                                **{"-1": "train for num_epochs"}),
    "optimizer.name": choice(*optim.OPTIMIZERS),
    "optimizer.learning_rate": number(0, low_open=True),
    "optimizer.momentum": BELOW_ONE,
    "optimizer.nesterov": boolean,
    "optimizer.weight_decay": number(0),
    "optimizer.decay_bias_and_bn": boolean,
    "optimizer.rmsprop_decay": BELOW_ONE,
    "optimizer.epsilon": number(0, low_open=True),
    "optimizer.b1": BELOW_ONE,
    "optimizer.b2": BELOW_ONE,
    "optimizer.grad_clip_norm": number(0),
    "schedule.name": choice(*optim.SCHEDULES),
    "schedule.boundaries": numbers(0, low_open=True),
    "schedule.boundaries_unit": choice(*optim.BOUNDARY_UNITS),
    "schedule.decay_factor": number(0, low_open=True),
    "schedule.decay_every_epochs": number(0, low_open=True),
    "schedule.warmup_steps": COUNT,
    "schedule.warmup_epochs": number(0),
    "schedule.warmup_type": choice("linear", "constant"),
    "schedule.warmup_learning_rate": number(0),
    "schedule.final_learning_rate": number(0),
    "label_smoothing": BELOW_ONE,
    "aux_loss_weights": numbers(0),
    "seed": COUNT,
    "half_precision": boolean,
    "parallelism": choice(*step.PARALLELISM),
    "batch_norm_sync": boolean,
    "log_every_steps": POSITIVE_INT,
    "eval_every_steps": or_unset(POSITIVE_INT, **{
        "-1": "once per epoch", "0": "only at the end"}),
    "checkpoint_every_steps": POSITIVE_INT,
    "checkpoints_to_keep": POSITIVE_INT,
    "checkpoint_async": boolean,
}


# What may change when a run resumes: its length, how it logs, evaluates and
# checkpoints, where and how fast data is read, and how (never what) the
# backend computes. Every other field is the run's recipe, and a resume that
# changes one is refused (checkpoint.Checkpoints), as is one that changes
# the model. README "Resuming" says what a new length does to the schedule.
RESUME_FREE = (
    "num_train_steps", "num_epochs",
    "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
    "checkpoints_to_keep", "checkpoint_async", "eval_batch_size",
    "dataset.data_dir", "dataset.workers", "dataset.prefetch",
    "dataset.download", "parallelism",
    *(k for k in FIELDS if k.startswith("backend.")),
)


def recipe(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The fields a resumed run must keep, as JSON values."""
  return {key: json.loads(json.dumps(get(config, key)))
          for key in flat_keys(config) if key not in RESUME_FREE}


def _scale(key, value):
  """Inception-ResNet's residual_scale: one factor, or one per A, B, C."""
  if value is None:
    return
  if isinstance(value, (tuple, list)):
    numbers(0, low_open=True)(key, value)
  else:
    number(0, low_open=True)(key, value)


WHOLE = POSITIVE_INT
# Every numeric field of every model module, by name: a name means the same
# kind of quantity in every family. tests/test_config_check.py checks that
# no registered model has a numeric field without its rule here.
MODEL_FIELDS: dict[str, Rule] = {
    "num_classes": WHOLE, "depth": WHOLE, "width": WHOLE,
    "base_width": WHOLE, "bottleneck_factor": WHOLE, "cardinality": WHOLE,
    "conv1_depth_multiplier": WHOLE, "expansion": WHOLE, "groups": WHOLE,
    "growth_rate": WHOLE, "kernel_5x5": WHOLE, "last_width": WHOLE,
    "min_depth": WHOLE, "pool4_window": WHOLE, "round_to": WHOLE,
    "stem_width": or_unset(WHOLE, **{"0": "the paper's width"}),
    "dropout_rate": BELOW_ONE, "aux_dropout_rate": BELOW_ONE,
    "shortcut_dropout": BELOW_ONE,
    "survival_prob_last": number(0, 1, low_open=True),
    "compression": number(0, 1, low_open=True),
    "bn_epsilon": number(0, low_open=True),
    "width_multiplier": number(0, low_open=True),
    "shortcut_scale": number(0),
    "residual_scale": _scale,
    "class_map_bias": finite, "gate_bias_init": finite,
    "blocks": numbers(1, integer=True),
    "block_sizes": numbers(1, integer=True),
    "widths": numbers(1, integer=True),
    "drop_blocks": numbers(0, integer=True),
    "block_order": numbers(0, integer=True),
}


def check_model_fields(model: ml_collections.ConfigDict) -> None:
  """The ranges of the numeric model fields a config sets (the model checks
  the rest: unknown fields, choices, combinations, depths of its form)."""
  known = models.module_fields(models.model_info(model.name).module)
  for key, value in model.items():
    if key in MODEL_FIELDS and key in known:
      MODEL_FIELDS[key](f"model.{key}", value)


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
  check_model_fields(config.model)


def _check_scale_range(cfg: ml_collections.ConfigDict) -> None:
  low, *rest = tuple(cfg.scale_range) or (0,)
  if (len(rest) != 1 or int(low) != low or int(rest[0]) != rest[0]
      or not cfg.image_size <= low <= rest[0]):
    raise ConfigError(
        f"config.dataset.scale_range={tuple(cfg.scale_range)} is not valid; "
        f"give (S_min, S_max), whole numbers with image_size "
        f"{cfg.image_size} <= S_min <= S_max, e.g. (256, 512)")
