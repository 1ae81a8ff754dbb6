"""Every config field is validated before anything runs."""
import pytest

from cnnflax import config_check, train
from cnnflax.errors import ConfigError, DataError
from configs import default
from tests.conftest import tiny_config


def test_rule_table_covers_exactly_the_default_config():
  assert set(config_check.flat_keys(default.get_config())) == set(
      config_check.FIELDS)


BAD = [
    ({"batch_size": 0}, "config.batch_size=0 is not valid; it must be >= 1"),
    ({"batch_size": 16.5}, "config.batch_size=16.5 is not valid; it must be a whole number"),
    ({"parallelism": "pjit"}, "choose one of: shard_map, pmap"),
    ({"optimizer.name": "lamb"}, "config.optimizer.name='lamb'"),
    ({"optimizer.learning_rate": 0.0}, "it must be > 0"),
    ({"optimizer.momentum": 1.5}, "it must be <= 1"),
    ({"optimizer.nesterov": True, "optimizer.momentum": 0.0}, "nesterov=True needs"),
    ({"schedule.name": "step"}, "config.schedule.name='step'"),
    ({"schedule.boundaries": "32k"}, "tuple of numbers"),
    ({"schedule.warmup_type": "cubic"}, "config.schedule.warmup_type"),
    ({"half_precision": "yes"}, "must be True or False"),
    ({"label_smoothing": 1.5}, "config.label_smoothing=1.5"),
    ({"num_train_steps": 0, "num_epochs": 0.0}, "set one of them"),
    ({"dataset.augment": "mixup"}, "config.dataset.augment='mixup'"),
    ({"dataset.image_size": -32}, "config.dataset.image_size=-32"),
    ({"eval_every_steps": -5}, "config.eval_every_steps=-5"),
    ({"checkpoints_to_keep": 0}, "config.checkpoints_to_keep=0"),
    ({"batchsize": 3}, "config.batchsize is not a known field; did you mean config.batch_size?"),
    ({"model.name": "resnet9000"}, "not a registered model"),
]


@pytest.mark.parametrize("overrides, message", BAD)
def test_bad_config_gets_a_one_line_error(overrides, message):
  config = tiny_config(**overrides)
  with pytest.raises(ConfigError) as info:
    train.Run(config, "")
  assert message in str(info.value)
  assert "\n" not in str(info.value)


def test_boundary_past_the_end_of_training_is_refused():
  config = tiny_config(**{"schedule.name": "piecewise",
                          "schedule.boundaries": (2, 90),
                          "schedule.boundaries_unit": "steps"})
  with pytest.raises(ConfigError, match="outside the 6 training steps"):
    train.Run(config, "")


def test_unknown_dataset_is_a_data_error():
  with pytest.raises(DataError, match="config.dataset.name='mnist2'"):
    train.Run(tiny_config(**{"dataset.name": "mnist2"}), "")
