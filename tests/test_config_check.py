"""Every config field is validated before anything runs."""
import ml_collections
import pytest

from cnnflax import config_check
from cnnflax import run as run_lib
from cnnflax.errors import ConfigError, DataError
from configs import default
from tests.conftest import tiny_config


def test_rule_table_covers_exactly_the_default_config():
  assert set(config_check.flat_keys(default.get_config())) == set(
      config_check.FIELDS)


RESNET = {"model.name": "resnet20_cifar", "dataset.synthetic_channels": 3}
BAD = [
    ({"batch_size": 0}, "config.batch_size=0 is not valid; it must be >= 1"),
    ({"batch_size": 16.5}, "config.batch_size=16.5 is not valid; it must be a whole number"),
    ({"parallelism": "pjit"}, "choose one of: shard_map, pmap"),
    ({"optimizer.name": "lamb"}, "config.optimizer.name='lamb'"),
    ({"optimizer.learning_rate": 0.0}, "it must be > 0"),
    ({"optimizer.momentum": 1.5}, "config.optimizer.momentum=1.5 is not valid; it must be < 1"),
    ({"optimizer.nesterov": True, "optimizer.momentum": 0.0}, "nesterov=True needs"),
    ({"schedule.name": "step"}, "config.schedule.name='step'"),
    ({"schedule.boundaries": "32k"}, "tuple of numbers"),
    ({"schedule.warmup_type": "cubic"}, "config.schedule.warmup_type"),
    ({"half_precision": "yes"}, "must be True or False"),
    ({"dataset.workers": -2}, "config.dataset.workers=-2 is not valid; it must be >= 0, or -1 (one per core, less one)"),
    ({"dataset.download": "no"}, "config.dataset.download='no'"),
    ({"dataset.train_crop": "five"}, "choose one of: random_resized, scale, square"),
    ({"dataset.train_crop": "scale", "dataset.scale_range": (512, 256)}, "S_min <= S_max"),
    ({"dataset.train_crop": "square", "dataset.image_size": 64, "dataset.scale_range": (32, 64)}, "image_size 64 <= S_min"),
    ({"dataset.train_crop": "scale", "dataset.scale_range": (256,)}, "give (S_min, S_max)"),
    ({"dataset.pca_noise": -0.1}, "config.dataset.pca_noise=-0.1"),
    ({"label_smoothing": 1.5}, "config.label_smoothing=1.5"),
    ({"num_train_steps": -1, "num_epochs": 0.0}, "set one of them"),
    ({"dataset.augment": "mixup"}, "config.dataset.augment='mixup'"),
    ({"dataset.image_size": -32}, "config.dataset.image_size=-32"),
    ({"eval_every_steps": -5}, "config.eval_every_steps=-5 is not valid; it must be >= 1, or -1 (once per epoch), 0 (only at the end)"),
    # Numeric ranges, the -1 sentinels included (issue 22).
    ({"num_train_steps": -5}, "config.num_train_steps=-5 is not valid; it must be >= 1, or -1 (train for num_epochs)"),
    ({"num_train_steps": 0}, "config.num_train_steps=0 is not valid"),
    ({"num_epochs": -2.0}, "config.num_epochs=-2.0 is not valid; it must be >= 0"),
    ({"optimizer.momentum": 1.0}, "config.optimizer.momentum=1.0 is not valid; it must be < 1"),
    ({"optimizer.b2": 1.0}, "config.optimizer.b2=1.0 is not valid; it must be < 1"),
    ({"label_smoothing": 1.0}, "config.label_smoothing=1.0 is not valid; it must be < 1"),
    ({"dataset.test_fraction": 1.0}, "config.dataset.test_fraction=1.0 is not valid; it must be < 1"),
    ({"schedule.boundaries": (-1, 4)}, "config.schedule.boundaries[0]=-1 is not valid; it must be > 0"),
    ({"aux_loss_weights": (-0.3,)}, "config.aux_loss_weights[0]=-0.3 is not valid; it must be >= 0"),
    ({"dataset.scale_range": (256.5, 512)}, "config.dataset.scale_range[0]=256.5 is not valid; it must be a whole number"),
    ({"model.num_classes": 0}, "config.model.num_classes=0 is not valid; it must be >= 1"),
    ({**RESNET, "model.stem_width": -16}, "config.model.stem_width=-16 is not valid; it must be >= 1, or 0 (the paper's width)"),
    ({**RESNET, "model.base_width": 0}, "config.model.base_width=0 is not valid; it must be >= 1"),
    ({**RESNET, "model.shortcut_dropout": 1.0}, "config.model.shortcut_dropout=1.0 is not valid; it must be < 1"),
    ({**RESNET, "model.gate_bias_init": float("nan")}, "config.model.gate_bias_init=nan is not valid; it must be a finite number"),
    ({**RESNET, "model.blocks": (3, 0, 3)}, "config.model.blocks: model 'resnet20_cifar' has no field 'blocks'"),
    ({"model.name": "inception_v4", "model.blocks": (4, 0, 3)}, "config.model.blocks[1]=0 is not valid; it must be >= 1"),
    ({"model.name": "mobilenet_v2", "model.width_multiplier": 0.0}, "config.model.width_multiplier=0.0 is not valid; it must be > 0"),
    ({"model.name": "densenet_bc_cifar", "model.growth_rate": -12}, "config.model.growth_rate=-12 is not valid; it must be >= 1"),
    ({"model.name": "densenet_bc_cifar", "model.compression": 1.5}, "config.model.compression=1.5 is not valid; it must be <= 1"),
    ({"model.name": "vgg16", "model.dropout_rate": 1.0}, "config.model.dropout_rate=1.0 is not valid; it must be < 1"),
    ({"model.name": "inception_v3", "model.bn_epsilon": 0.0}, "config.model.bn_epsilon=0.0 is not valid; it must be > 0"),
    ({"model.name": "inception_resnet_v2", "model.residual_scale": (0.17, -0.1, 0.2)}, "config.model.residual_scale[1]=-0.1 is not valid; it must be > 0"),
    ({"checkpoints_to_keep": 0}, "config.checkpoints_to_keep=0"),
    ({"batchsize": 3}, "config.batchsize is not a known field; did you mean config.batch_size?"),
    ({"model.name": "resnet9000"}, "not a registered model"),
    ({"optimizer.grad_clip_norm": -1.0}, "config.optimizer.grad_clip_norm=-1.0"),
    ({"optimizer.weight_decay": -1.0}, "config.optimizer.weight_decay=-1.0"),
    ({"optimizer.epsilon": 0.0}, "config.optimizer.epsilon=0.0"),
    ({"schedule.decay_factor": 0.0}, "config.schedule.decay_factor=0.0"),
    ({"schedule.boundaries_unit": "hours"}, "choose one of: steps, epochs, fraction"),
    ({"schedule.warmup_steps": 100}, "give 100 warm-up steps, not fewer than the 6 training steps"),
    ({"dataset.crop_padding": -1}, "config.dataset.crop_padding=-1"),
    ({"batch_size": 12}, "config.batch_size=12 is not divisible by the 8 devices"),
    ({"seed": -1}, "config.seed=-1"),
    ({"log_every_steps": 0}, "config.log_every_steps=0"),
    # The model's own fields and the combinations it cannot take.
    ({"model.depht": 3}, "config.model.depht: model 'lenet5_modern' has no field 'depht'"),
    ({"model.activation": "gelu2"}, "activation='gelu2' is unknown"),
    ({"model.num_classes": 100}, "config.model.num_classes=100 but synthetic has 10 classes"),
    ({**RESNET, "model.depth": 21}, "depth=21 is not 6n+2"),
    ({**RESNET, "model.shortcut": "D"}, "shortcut='D' is not valid; choose one of: A, B, C"),
    ({**RESNET, "model.unit": "preact"}, "unit='preact' is not valid"),
    ({**RESNET, "model.plain": True, "model.shortcut": "C"}, "shortcut='C' needs shortcuts; plain=True has none"),
    ({**RESNET, "model.plain": True, "model.shortcut_variant": "shortcut_gating"}, "needs shortcuts"),
    ({**RESNET, "model.cardinality": 32}, "cardinality=32 needs bottleneck blocks"),
    ({**RESNET, "model.survival_prob_last": 1.5}, "config.model.survival_prob_last=1.5 is not valid; it must be <= 1"),
    ({**RESNET, "model.drop_blocks": (99,)}, "drop_blocks=(99,) names blocks outside 0..8"),
    ({**RESNET, "model.widths": (16, 32)}, "needs one width per stage"),
    # Found while tracing the model (before anything compiles).
    ({"model.name": "vgg16", "dataset.synthetic_channels": 3, "dataset.image_size": 16},
     "config.dataset.image_size: 16x16 images are too small for vgg16"),
    ({"model.name": "googlenet", "dataset.synthetic_channels": 3, "dataset.image_size": 32},
     "config.dataset.image_size: 32x32 images are too small for googlenet"),
    ({"aux_loss_weights": (0.3, 0.3)}, "lenet5_modern has 0 auxiliary classifiers"),
]


def test_every_numeric_model_field_has_a_range():
  """A new numeric field of any family needs its rule in MODEL_FIELDS."""
  import dataclasses
  import typing
  from cnnflax import models
  missing = set()
  for name in models.list_models():
    module = models.model_info(name).module
    hints = typing.get_type_hints(module)
    for field in dataclasses.fields(module):
      if field.name in ("parent", "name", "dtype", "axis_name", "kernels"):
        continue
      default = field.default
      numeric = (not isinstance(default, (bool, str)) and isinstance(
          default, (int, float, tuple, list))) or default is None and (
              field.name != "scan_blocks")
      if numeric and field.name not in config_check.MODEL_FIELDS:
        missing.add(f"{module.__name__}.{field.name} ({hints[field.name]})")
  assert not missing, sorted(missing)


def test_registered_variants_pass_their_own_ranges():
  from cnnflax import models
  for name in models.list_models():
    info = models.model_info(name)
    config_check.check_model_fields(ml_collections.ConfigDict(
        {"name": name, "num_classes": info.num_classes, **info.fields}))


@pytest.mark.parametrize("overrides, message", BAD)
def test_bad_config_gets_a_one_line_error(overrides, message):
  config = tiny_config(**overrides)
  with pytest.raises(ConfigError) as info:
    run_lib.Run(config, "").init_state()
  assert message in str(info.value)
  assert "\n" not in str(info.value)


def test_boundary_past_the_end_of_training_is_refused():
  config = tiny_config(**{"schedule.name": "piecewise",
                          "schedule.boundaries": (2, 90),
                          "schedule.boundaries_unit": "steps"})
  with pytest.raises(ConfigError, match="outside the 6 training steps"):
    run_lib.Run(config, "")


def test_unknown_dataset_is_a_data_error():
  with pytest.raises(DataError, match="config.dataset.name='mnist2'"):
    run_lib.Run(tiny_config(**{"dataset.name": "mnist2"}), "")
