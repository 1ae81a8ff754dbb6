"""Validates a config before anything is read or compiled.

Every error is one line that names the field and what would be valid.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from cnnflax import data, models
from cnnflax.errors import ConfigError

CHOICES = {
    "parallelism": ("shard_map", "pmap"),
    "optimizer.name": ("sgd", "rmsprop", "adam"),
    "schedule.name": ("constant", "piecewise", "cosine", "exponential"),
    "schedule.boundaries_unit": ("steps", "epochs", "fraction"),
    "schedule.warmup_type": ("linear", "constant"),
    "dataset.augment": ("none", "cifar", "imagenet"),
}
POSITIVE = ("batch_size", "eval_batch_size", "log_every_steps",
            "checkpoint_every_steps", "checkpoints_to_keep",
            "optimizer.learning_rate", "dataset.image_size")
NON_NEGATIVE = ("optimizer.weight_decay", "optimizer.momentum",
                "optimizer.grad_clip_norm", "dataset.crop_padding",
                "schedule.warmup_steps", "schedule.warmup_epochs")
BOOLEAN = ("half_precision", "batch_norm_sync", "optimizer.nesterov",
           "dataset.normalize", "dataset.flip", "dataset.on_device")


def get(config: ml_collections.ConfigDict, key: str) -> Any:
  value = config
  for part in key.split("."):
    if part not in value:
      raise ConfigError(f"config.{key} is missing; start from "
                        "configs/default.py, which defines every field")
    value = value[part]
  return value


def check_config(config: ml_collections.ConfigDict) -> None:
  for key, choices in CHOICES.items():
    if get(config, key) not in choices:
      raise ConfigError(f"config.{key}={get(config, key)!r} is not valid; "
                        f"choose one of: {', '.join(choices)}")
  for key in POSITIVE:
    _number(config, key, lambda v: v > 0, "> 0")
  for key in NON_NEGATIVE:
    _number(config, key, lambda v: v >= 0, ">= 0")
  for key in BOOLEAN:
    if not isinstance(get(config, key), bool):
      raise ConfigError(f"config.{key}={get(config, key)!r} must be True or "
                        "False")
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError("config.num_epochs and config.num_train_steps are both "
                      "<= 0; set one of them to the training length")
  if not 0 <= config.label_smoothing < 1:
    raise ConfigError(f"config.label_smoothing={config.label_smoothing} must "
                      "be in [0, 1)")
  data.get_spec(config.dataset.name)
  models.model_info(config.model.name)


def _number(config, key: str, ok, rule: str) -> None:
  value = get(config, key)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ConfigError(f"config.{key}={value!r} must be a number {rule}")
  if not ok(value):
    raise ConfigError(f"config.{key}={value!r} must be {rule}")
