"""The Inception line: BN-Inception, v3, v4, Inception-ResNet-v1/-v2.

Parameter counts of the registered models are checked in test_models.py;
here: the papers' grids, the auxiliary head, residual scaling, the fields'
errors, and one small training step per family. Shapes are computed
abstractly (jax.eval_shape); the steps use each network's smallest input.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnflax import models, summary
from cnnflax.errors import ConfigError
from cnnflax.models.inception import AuxHead, Mixed, v3_module_a
from cnnflax.models.inception_v4 import RESNET_V1_BLOCKS, ResidualInception
from tests.test_zoo1 import check_step, shapes, step_config

SMALL = dict(blocks=(1, 1, 1))  # one block per stage: same grids, fast


def model_and_variables(name, size, batch=2, **fields):
  """A model, variables of its shapes drawn by numpy (XLA:CPU would compile
  an initialiser per parameter shape) and an input batch."""
  model = models.get_model(name, num_classes=10, **fields)
  x = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
  return model, numpy_variables(model, x), x


def numpy_variables(module, *args):
  abstract = jax.eval_shape(lambda key: module.init(key, *args),
                            jax.random.key(0))
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.ones(leaf.shape)
    if name in ("bias", "mean"):
      return jnp.zeros(leaf.shape)
    fan_in = np.prod(leaf.shape[:-1])
    return jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in), leaf.shape),
                       jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


# --- the papers' grids -------------------------------------------------------


def test_bn_inception_follows_fig_5():
  got = shapes("bn_inception", (224, 224, 3))
  want = {"conv1": (112, 112, 64), "stem/layer2": (56, 56, 192),
          "stem": (28, 28, 192),
          "inception_3a": (28, 28, 256), "inception_3b": (28, 28, 320),
          "inception_3c": (14, 14, 576), "inception_4a": (14, 14, 576),
          "inception_4b": (14, 14, 576), "inception_4c": (14, 14, 608),
          "inception_4d": (14, 14, 608), "inception_4e": (7, 7, 1056),
          "inception_5a": (7, 7, 1024), "inception_5b": (7, 7, 1024),
          "logits": (1000,)}
  assert {k: got[k] for k in want} == want
  # Two stacked 3x3 in place of the 5x5; 3c has no 1x1 branch and passes
  # its max-pool through (14x14x320 of its 576 channels).
  assert got["inception_3a/branch2_2"] == (28, 28, 96)
  assert got["inception_3c/branch0_1"] == (14, 14, 160)
  # The paper's separable conv1: 7x7 per input channel, 8 maps each.
  assert got["conv1_depthwise"] == (112, 112, 24)
  plain = shapes("bn_inception", (224, 224, 3), conv1_depth_multiplier=0)
  assert "conv1_depthwise" not in plain and plain["conv1"] == (112, 112, 64)


def test_inception_v3_grids():
  got = shapes("inception_v3", (299, 299, 3))
  want = {"stem": (35, 35, 192), "mixed_5b": (35, 35, 256),
          "mixed_5d": (35, 35, 288), "mixed_6a": (17, 17, 768),
          "mixed_6e": (17, 17, 768), "mixed_7a": (8, 8, 1280),
          "mixed_7b": (8, 8, 2048), "mixed_7c": (8, 8, 2048),
          "logits": (1000,)}
  assert {k: got[k] for k in want} == want
  # Fig. 6's 1x7 then 7x1, Fig. 7's 1x3 and 3x1 side by side.
  assert got["mixed_6b/branch1_1"] == (17, 17, 128)
  assert got["mixed_7b/branch1_1a"] == got["mixed_7b/branch1_1b"] == (
      8, 8, 384)
  assert not any(k.startswith("aux") for k in got)


def test_inception_v3_aux_head_only_in_training():
  # The head alone on mixed_6e's 17x17x768: torchvision's 27,161,264 with
  # the head less test_models' 23,834,568 without it.
  head = summary.count(AuxHead(1000), (17, 17, 768))
  assert head["params"] == 27_161_264 - 23_834_568
  model = models.get_model("inception_v3", num_classes=10)
  x = jnp.zeros((2, 75, 75, 3))  # the smallest input: the windows shrink
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  (logits, aux), variables = jax.eval_shape(
      lambda: model.init_with_output(rngs, x, train=True))
  assert logits.shape == (2, 10) and [a.shape for a in aux] == [(2, 10)]
  assert "aux" in variables["params"]
  out, variables = jax.eval_shape(lambda: model.init_with_output(rngs, x))
  assert out.shape == (2, 10) and "aux" not in variables["params"]
  off = model.clone(aux_logits=False)
  out, _ = jax.eval_shape(lambda: off.init_with_output(rngs, x, train=True))
  assert out.shape == (2, 10)


def test_inception_v3_fig_5_as_drawn():
  # module_a_5x5=False: the 1x1 -> 5x5 branch (48 -> 64) becomes a 3x3.
  counts = []
  for five in (True, False):
    rows = summary.layer_table(Mixed(v3_module_a(64, five)), (35, 35, 288))
    assert rows[0].output_shape == (35, 35, 288)
    counts.append(sum(r.params for r in rows))
  assert counts[0] - counts[1] == 16 * 48 * 64


# Inception-v4 and -ResNet with one block per stage: the same grids (the
# registered 4/7/3 and 10/20/10 repeats are checked by their counts).


def test_inception_v4_grids():
  got = shapes("inception_v4", (299, 299, 3), **SMALL)
  want = {"mixed_3a": (73, 73, 160), "mixed_4a": (71, 71, 192),
          "mixed_5a": (35, 35, 384), "inception_a1": (35, 35, 384),
          "reduction_a": (17, 17, 1024), "inception_b1": (17, 17, 1024),
          "reduction_b": (8, 8, 1536), "inception_c1": (8, 8, 1536),
          "logits": (1000,)}
  assert {k: got[k] for k in want} == want
  assert "inception_a2" not in got and "head_conv" not in got


def test_inception_resnet_v2_grids():
  got = shapes("inception_resnet_v2", (299, 299, 3), **SMALL)
  want = {"stem": (35, 35, 192), "mixed_5b": (35, 35, 320),
          "inception_a1": (35, 35, 320), "reduction_a": (17, 17, 1088),
          "inception_b1": (17, 17, 1088), "reduction_b": (8, 8, 2080),
          "inception_c1": (8, 8, 2080), "head_conv": (8, 8, 1536),
          "logits": (1000,)}
  assert {k: got[k] for k in want} == want
  # The linear 1x1 before the addition restores the block's width.
  assert got["inception_b1/up"] == (17, 17, 1088)


def test_inception_resnet_v1_grids():
  got = shapes("inception_resnet_v1", (299, 299, 3), **SMALL)
  want = {"stem": (35, 35, 256), "inception_a1": (35, 35, 256),
          "reduction_a": (17, 17, 896), "inception_b1": (17, 17, 896),
          "reduction_b": (8, 8, 1792), "inception_c1": (8, 8, 1792)}
  assert {k: got[k] for k in want} == want
  assert "head_conv" not in got


def kernels(name, **fields):
  """{layer path: kernel (rows, columns)} of a model's convolutions."""
  model = models.get_model(name, **fields)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 75, 75, 3)))["params"]
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(k.key for k in path[:-2]): leaf.shape[:2]
          for path, leaf in flat if path[-1].key == "kernel"
          and len(leaf.shape) == 4}


def test_inception_v4_orients_its_asymmetric_convolutions_as_released():
  # TF-slim's inception_v4.py: Mixed_4a 1x7 then 7x1; Inception-B's second
  # branch 7x1, 1x7, 7x1, 1x7; Inception-C's 3x1, 1x3, then 1x3 | 3x1.
  released = kernels("inception_v4", **SMALL)
  assert [released[f"mixed_4a/branch1_{j}"] for j in (1, 2)] == [
      (1, 7), (7, 1)]
  assert [released[f"inception_b1/branch2_{j}"] for j in (1, 2, 3, 4)] == [
      (7, 1), (1, 7), (7, 1), (1, 7)]
  assert [released[f"inception_c1/branch2_{j}"]
          for j in ("1", "2", "3a", "3b")] == [(3, 1), (1, 3), (1, 3), (3, 1)]
  assert released["inception_b1/branch1_1"] == (1, 7)  # both agree there
  figures = kernels("inception_v4", asymmetric="figures", **SMALL)
  swapped = {k for k in released if released[k] != figures[k]}
  assert all(figures[k] == released[k][::-1] for k in swapped)
  # 2 in Mixed_4a, 4 per B block, 4 per C block: 42 with 7 B and 3 C.
  assert len(swapped) == 2 + 4 + 4
  count = lambda **f: summary.count(models.get_model("inception_v4", **f),
                                    (299, 299, 3))["params"]
  assert count(asymmetric="figures", **SMALL) == count(**SMALL)


def test_the_inception_family_takes_tf_slims_batch_norm_epsilon():
  # The logits of converted torchvision/timm weights (test_convert.py)
  # check that the epsilon reaches every BatchNorm.
  for name in ("bn_inception", "inception_v3", "inception_v4",
               "inception_resnet_v2", "googlenet_bn"):
    assert models.get_model(name).bn_epsilon == 1e-3, name


@pytest.mark.parametrize("name", ["inception_v3", "inception_v4",
                                  "inception_resnet_v2"])
def test_inputs_below_75x75_are_refused(name):
  model = models.get_model(name, num_classes=10, **(
      {} if name == "inception_v3" else SMALL))
  with pytest.raises(ValueError, match="at least 75x75"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 74, 74, 3)))


@pytest.mark.parametrize("name,size,fields", [
    ("bn_inception", 32, {}), ("inception_v3", 75, {}),
    ("inception_v4", 75, SMALL), ("inception_resnet_v2", 75, SMALL)])
def test_half_precision_computes_in_bfloat16(name, size, fields):
  model = models.get_model(name, num_classes=10, dtype=jnp.bfloat16, **fields)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  out = jax.eval_shape(model.apply, variables, x)
  assert out.dtype == jnp.bfloat16 and out.shape == (2, 10)


# --- residual scaling --------------------------------------------------------


def test_residual_block_adds_the_scaled_branch():
  # Without the ReLU after the sum: block(x) - x = scale * branch(x).
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 16))
  block = ResidualInception(RESNET_V1_BLOCKS[0], scale=0.1, activate=False)
  variables = numpy_variables(block, x, False)
  small = block.apply(variables, x, False) - x
  large = block.clone(scale=0.3).apply(variables, x, False) - x
  assert float(jnp.abs(small).max()) > 1e-3
  np.testing.assert_allclose(large, 3 * small, rtol=1e-4, atol=1e-5)
  relu = block.clone(activate=True).apply(variables, x, False)
  np.testing.assert_allclose(relu, jax.nn.relu(x + small), rtol=1e-5,
                             atol=1e-6)


def test_residual_scale_field_changes_the_output():
  model, variables, x = model_and_variables("inception_resnet_v1", 75,
                                            **SMALL)
  base = jax.jit(model.apply)(variables, x)
  other = jax.jit(model.clone(residual_scale=0.3).apply)(variables, x)
  assert float(jnp.abs(other - base).max()) > 1e-4
  assert model.clone(residual_scale=0.3).scales == (0.3, 0.3, 0.3)
  assert model.clone(residual_scale=(0.2, 0.1, 0.3)).scales == (0.2, 0.1, 0.3)
  assert model.scales == (0.17, 0.1, 0.2)  # TF-slim's


def test_survival_probabilities_decay_linearly():
  model = models.get_model("inception_resnet_v1", survival_prob_last=0.2,
                           **SMALL)
  np.testing.assert_allclose(model.survival_probs(),
                             [1 - 0.8 / 3, 1 - 1.6 / 3, 0.2])
  assert len(models.get_model("inception_resnet_v2").survival_probs()) == 40


def test_stochastic_depth_drops_whole_branches_per_example():
  x = jax.random.normal(jax.random.key(0), (64, 5, 5, 16))
  block = ResidualInception(RESNET_V1_BLOCKS[0], scale=0.2)
  variables = numpy_variables(block, x, False)
  out, _ = block.apply(variables, x, True, 0.5, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(3)})
  dropped = np.all(np.isclose(out, jax.nn.relu(x)), axis=(1, 2, 3))
  assert 16 < dropped.sum() < 48  # each example keeps its branch w.p. 0.5
  at_test = block.apply(variables, x, False, 0.5)
  full = block.apply(variables, x, False) - jax.nn.relu(x)
  assert float(jnp.abs(full).max()) > 1e-3
  branch = block.clone(activate=False).apply(variables, x, False) - x
  np.testing.assert_allclose(at_test, jax.nn.relu(x + 0.5 * branch),
                             rtol=1e-5, atol=1e-5)


def test_released_v2_ends_with_a_linear_block():
  # TF-slim's last 8x8 block: unscaled and without the ReLU after the sum.
  model, variables, x = model_and_variables("inception_resnet_v2", 75,
                                            blocks=(1, 1, 2))
  _, state = jax.jit(lambda v, x: model.apply(
      v, x, capture_intermediates=True, mutable=["intermediates"]))(
          variables, x)
  out = state["intermediates"]
  assert float(out["inception_c1"]["__call__"][0].min()) >= 0
  assert float(out["inception_c2"]["__call__"][0].min()) < 0


# --- fields ------------------------------------------------------------------


@pytest.mark.parametrize("name,fields,message", [
    ("bn_inception", dict(conv1_depth_multiplier=-1),
     "conv1_depth_multiplier=-1 is not valid"),
    ("bn_inception", dict(dropout_rate=1.5), "dropout_rate=1.5 is not valid"),
    ("inception_v3", dict(dropout_rate=1.0), "dropout_rate=1.0 is not valid"),
    ("inception_v3", dict(activation="swoosh"), "activation='swoosh'"),
    ("inception_v4", dict(version="v5"), "version='v5' is not valid"),
    ("inception_v4", dict(asymmetric="paper"),
     "asymmetric='paper' is not valid"),
    ("inception_resnet_v2", dict(asymmetric="figures"),
     "asymmetric='figures' needs version='v4'"),
    ("inception_v3", dict(bn_epsilon=0.0), "bn_epsilon=0.0 is not valid"),
    ("inception_v4", dict(residual_scale=0.2),
     "residual_scale=0.2 needs an Inception-ResNet version"),
    ("inception_v4", dict(survival_prob_last=0.5),
     "survival_prob_last=0.5 needs an Inception-ResNet version"),
    ("inception_resnet_v2", dict(residual_scale=0.0),
     "residual_scale=0.0 is not valid"),
    ("inception_resnet_v2", dict(residual_scale=(0.1, 0.2)),
     "residual_scale=(0.1, 0.2) is not valid"),
    ("inception_resnet_v2", dict(blocks=(1, 2)), "blocks=(1, 2) is not valid"),
    ("inception_resnet_v1", dict(survival_prob_last=0.0),
     "survival_prob_last=0.0 is not valid"),
])
def test_bad_fields_are_refused(name, fields, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    models.get_model(name, **fields)


# --- one training step per family --------------------------------------------


# One step per model file: v3 for inception.py (BN-Inception is built from
# the same Mixed modules; its step would add ~45 s of CPU), Inception-ResNet
# for inception_v4.py (the residual blocks besides v4's plain ones).
@pytest.mark.parametrize("name,size,overrides", [
    ("inception_v3", 75, {"aux_loss_weights": (0.4,)}),
    ("inception_resnet_v1", 75, {"model.blocks": (1, 1, 1)}),
])
def test_one_step(name, size, overrides):
  config = step_config(name, size, batch=2, **overrides)
  _, new = check_step(config, jax.devices()[:1])  # every parameter moved
  if name == "inception_v3":
    assert "aux" in new.params
