"""The residual family: shapes, switches, identity mappings, lesions, depth."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnflax import lesion, models, summary
from cnnflax.errors import ConfigError
from cnnflax.backend.kernels import Kernels
from cnnflax.models import resnet
from tests.conftest import tiny_config
from tests.test_step import one_step

X = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))


def small(**fields):
  return models.get_model("resnet20_cifar", num_classes=10, **fields)


def logits(model, x=X, variables=None, train=False, rng=0):
  variables = variables or model.init(jax.random.key(0), x)
  return model.apply(variables, x, train=train,
                     rngs={"dropout": jax.random.key(rng)},
                     mutable=["batch_stats"] if train else False)


@pytest.mark.parametrize("unit, shortcut, variant", [
    *itertools.product(resnet.UNITS, ("A", "B", "C"), ("identity",)),
    *itertools.product(("original", "full_preact"), ("B",),
                       resnet.SHORTCUT_VARIANTS)])
def test_every_variant_gives_logits(unit, shortcut, variant):
  model = small(unit=unit, shortcut=shortcut, shortcut_variant=variant)
  shape = jax.ShapeDtypeStruct(X.shape, X.dtype)
  variables = jax.eval_shape(model.init, jax.random.key(0), shape)
  for train in (False, True):
    out = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"],
                                 rngs={"dropout": jax.random.key(0)}),
        variables, shape)
    assert out[0].shape == (4, 10)


def test_imagenet_stage_shapes_match_table_1():
  for name, last in (("resnet18", 512), ("resnet50", 2048)):
    rows = summary.layer_table(models.get_model(name), (224, 224, 3))
    shapes = {r.path: r.output_shape for r in rows}
    assert shapes["stem_conv"] == (112, 112, 64)
    stages = [shapes[f"stage{s}_block1"] for s in (1, 2, 3, 4)]
    expansion = 4 if name == "resnet50" else 1
    assert stages == [(56, 56, 64 * expansion), (28, 28, 128 * expansion),
                      (14, 14, 256 * expansion), (7, 7, last)]


def test_cifar_stage_shapes():
  rows = summary.layer_table(small(), (32, 32, 3))
  shapes = {r.path: r.output_shape for r in rows}
  assert shapes["stage1_block3"] == (32, 32, 16)
  assert shapes["stage2_block1"] == (16, 16, 32)
  assert shapes["stage3_block3"] == (8, 8, 64)


def test_option_a_has_no_shortcut_parameters_b_and_c_do():
  count = lambda **f: summary.count(small(**f), (32, 32, 3))["params"]
  a, b, c = count(shortcut="A"), count(shortcut="B"), count(shortcut="C")
  assert a == 269_722
  assert b == a + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # 2 projections
  assert c > b


def test_bottleneck_stride_can_sit_on_the_3x3():
  model = models.get_model("resnet50", stride_in="3x3")
  rows = summary.layer_table(model, (224, 224, 3))
  shapes = {r.path: r.output_shape for r in rows}
  assert shapes["stage2_block1/conv0"] == (56, 56, 128)  # 1x1 keeps 56
  assert shapes["stage2_block1/conv1"] == (28, 28, 128)
  default = {r.path: r.output_shape for r in
             summary.layer_table(models.get_model("resnet50"), (224, 224, 3))}
  assert default["stage2_block1/conv0"] == (28, 28, 128)


def test_resnexts_downsample_in_the_grouped_3x3_as_the_authors_code():
  # facebookresearch/ResNeXt, resnext_bottleneck_C: the 3x3 has the stride.
  for name in ("resnext50_32x4d", "resnext29_8x64d", "resnext29_16x64d"):
    assert models.get_model(name).stride_in == "3x3", name
  assert models.get_model("resnet50").stride_in == "1x1"  # the ResNet paper


def test_zeroed_branches_make_a_v2_net_the_identity_on_its_shortcuts():
  model = small(unit="full_preact", shortcut="B")
  variables = model.init(jax.random.key(0), X)
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.zeros_like(p)
      if "block" in str(path[0]) and "conv1" in str(path[1]) else p,
      variables["params"])
  _, state = model.apply({**variables, "params": params}, X,
                         capture_intermediates=True, mutable=["intermediates"])
  inter = state["intermediates"]
  stem = inter["stem_conv"]["__call__"][0]
  for b in (1, 2, 3):  # identity shortcuts throughout stage 1
    np.testing.assert_array_equal(
        inter[f"stage1_block{b}"]["__call__"][0], stem)
  # Stage 2 starts with a projection; after it, blocks pass values through.
  np.testing.assert_array_equal(inter["stage2_block3"]["__call__"][0],
                                inter["stage2_block1"]["__call__"][0])


def test_lesion_without_changes_reproduces_the_logits():
  model = small()
  variables = model.init(jax.random.key(0), X)
  same, same_vars = lesion.lesioned(model, variables)
  np.testing.assert_array_equal(logits(model, variables=variables),
                                logits(same, variables=same_vars))
  cut, cut_vars = lesion.lesioned(model, variables, drop_blocks=(4,))
  assert not np.allclose(logits(cut, variables=cut_vars),
                         logits(model, variables=variables))


def test_removing_a_block_leaves_its_shortcut():
  model = small(shortcut="B")
  variables = model.init(jax.random.key(0), X)
  # Block 3 opens stage 2 with a projection: removing it keeps the projection.
  cut, v = lesion.lesioned(model, variables, drop_blocks=(3,))
  _, inter = cut.apply(v, X, capture_intermediates=True,
                       mutable=["intermediates"])
  unit = resnet.ResidualUnit(32, strides=2, shortcut="B")
  before = inter["intermediates"]["stage1_block3"]["__call__"][0]
  expect = unit.apply({"params": v["params"]["stage2_block1"],
                       "batch_stats": v["batch_stats"]["stage2_block1"]},
                      before, False, 1.0, 0.0)
  np.testing.assert_allclose(
      inter["intermediates"]["stage2_block1"]["__call__"][0], expect,
      rtol=1e-6)


def test_reordering_blocks_of_matching_shape():
  model = small()
  variables = model.init(jax.random.key(0), X)
  order = (0, 2, 1, 3, 4, 5, 6, 7, 8)
  swapped, v = lesion.lesioned(model, variables, block_order=order)
  assert not np.allclose(logits(swapped, variables=v),
                         logits(model, variables=variables))
  with pytest.raises(ConfigError, match="where the input or output shape"):
    models.get_model("resnet20_cifar", block_order=(3, 1, 2, 0, 4, 5, 6, 7, 8))


@pytest.mark.parametrize("plain", [False, True])
def test_run_time_keep_equals_drop_blocks(plain):
  """One compiled network serves every lesion: keep as an input."""
  model = small(plain=plain)
  variables = model.init(jax.random.key(0), X)
  apply = jax.jit(lambda keep: model.apply(variables, X, keep=keep))
  for drop in ((), (4,), (1, 5, 8)):
    keep = np.ones(9, np.float32)
    keep[list(drop)] = 0.0
    cut, v = lesion.lesioned(model, variables, drop_blocks=drop)
    np.testing.assert_allclose(apply(keep), logits(cut, variables=v),
                               rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"one value per block, \(9,\)"):
    model.apply(variables, X, keep=np.ones(3))


def test_removed_plain_block_passes_its_input_on_inside_a_scan():
  model = small(plain=True, scan_blocks=True)
  variables = model.init(jax.random.key(0), X)
  cut_u, v = lesion.lesioned(model, variables, drop_blocks=(5,))
  np.testing.assert_allclose(
      logits(model.clone(drop_blocks=(5,)), variables=variables),
      logits(cut_u, variables=v), rtol=1e-4, atol=1e-5)


def test_reordered_variables_equal_block_order():
  model = small()
  variables = model.init(jax.random.key(0), X)
  order = (0, 2, 1, 3, 4, 5, 6, 8, 7)
  swapped, v = lesion.lesioned(model, variables, block_order=order)
  np.testing.assert_allclose(
      logits(model, variables=lesion.reorder_variables(model, variables,
                                                       order)),
      logits(swapped, variables=v), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="where the input or output shape"):
    lesion.reorder_variables(model, variables, (3, 1, 2, 0, 4, 5, 6, 7, 8))


def test_scanned_and_unrolled_blocks_compute_the_same():
  model = small(scan_blocks=True)
  variables = model.init(jax.random.key(0), X)
  unrolled, v = lesion.lesioned(model, variables)
  # Scanned stages use the matmul form of convolution on CPU: float noise.
  np.testing.assert_allclose(logits(model, variables=variables),
                             logits(unrolled, variables=v), rtol=1e-4,
                             atol=1e-5)
  # Removal works inside the scan too.
  cut = model.clone(drop_blocks=(5,))
  cut_u, v_u = lesion.lesioned(model, variables, drop_blocks=(5,))
  np.testing.assert_allclose(logits(cut, variables=variables),
                             logits(cut_u, variables=v_u), rtol=1e-4,
                             atol=1e-5)


def test_matmul_convolution_equals_xla_convolution():
  model = small(kernels=Kernels(conv="matmul"))
  variables = model.init(jax.random.key(0), X)
  np.testing.assert_allclose(logits(model, variables=variables),
                             logits(small(), variables=variables), rtol=1e-4,
                             atol=1e-5)


def test_deep_nets_scan_by_default():
  assert models.get_model("resnet1202_cifar").scanned
  assert models.get_model("preact_resnet1001_cifar").scanned
  assert not models.get_model("resnet110_cifar").scanned


def test_survival_probabilities_decay_linearly():
  p = small(survival_prob_last=0.5).survival_probs()
  assert len(p) == 9 and p[-1] == 0.5
  np.testing.assert_allclose(p[0], 1 - 1 / 9 * 0.5)
  np.testing.assert_allclose(np.diff(p), -0.5 / 9)


def test_stochastic_depth_at_eval_is_the_expected_value():
  unit = resnet.ResidualUnit(16, unit="full_preact", use_bn=False,
                             stochastic=True)
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 16))
  v = unit.init(jax.random.key(0), x, False, 0.7)
  full = unit.clone(stochastic=False).apply(v, x, False)
  at_eval = unit.apply(v, x, False, 0.7)
  np.testing.assert_allclose(at_eval, x + 0.7 * (full - x), rtol=1e-5,
                             atol=1e-6)
  draws = jnp.stack([unit.apply(v, x, True, 0.7, rngs={
      "dropout": jax.random.key(i)}) for i in range(400)])
  kept = np.mean([bool(np.allclose(d, full, atol=1e-6)) for d in draws])
  assert 0.6 < kept < 0.8  # whole mini-batch kept with probability 0.7
  np.testing.assert_allclose(draws.mean(0), at_eval, atol=0.1)


def test_per_sample_drop_differs_across_the_batch():
  unit = resnet.ResidualUnit(16, unit="full_preact", use_bn=False,
                             stochastic=True, stochastic_mode="sample")
  x = jax.random.normal(jax.random.key(2), (64, 4, 4, 16))
  v = unit.init(jax.random.key(0), x, False, 0.5)
  out = unit.apply(v, x, True, 0.5, rngs={"dropout": jax.random.key(3)})
  dropped = np.all(np.isclose(out, x), axis=(1, 2, 3))
  assert 10 < dropped.sum() < 54


@pytest.mark.parametrize("fields, message", [
    ({"depth": 21}, "depth=21 is not 6n+2"),
    ({"depth": 30, "block": "bottleneck"}, "depth=30 is not 9n+2"),
    ({"unit": "preact"}, "unit='preact' is not valid"),
    ({"shortcut": "D"}, "shortcut='D' is not valid"),
    ({"shortcut_variant": "gated"}, "shortcut_variant='gated'"),
    ({"shortcut": "A", "widths": (64, 32, 16)}, "cannot zero-pad 64 channels down to 32"),
    ({"survival_prob_last": 0.0}, "survival_prob_last=0.0"),
    ({"drop_blocks": (9,)}, "outside 0..8"),
    ({"block_order": (0, 1)}, "permutation of 0..8"),
    ({"plain": True, "drop_blocks": (3,)}, "cannot skip blocks [3]"),
    ({"plain": True, "shortcut_variant": "scaling"}, "needs shortcuts"),
    ({"unit": "full_preact", "zero_init_residual": True}, "ends in a conv"),
    ({"scan_blocks": True, "block_order": tuple(range(9))}, "needs scan_blocks=False"),
])
def test_invalid_combinations_get_clear_errors(fields, message):
  with pytest.raises(ConfigError) as info:
    small(**fields)
  assert message in str(info.value)


def test_imagenet_depth_must_be_in_table_1():
  with pytest.raises(ConfigError, match="depth=42 is not an ImageNet ResNet"):
    models.get_model("resnet50", depth=42)


def test_zero_init_residual_zeroes_the_last_bn_scale():
  model = small(zero_init_residual=True)
  v = model.init(jax.random.key(0), X)
  assert float(jnp.abs(v["params"]["stage1_block1"]["bn1"]["scale"]).sum()) == 0
  assert float(v["params"]["stage1_block1"]["bn0"]["scale"].min()) == 1


@pytest.mark.parametrize("overrides", [
    {"model.name": "resnet20_cifar"},
    {"model.name": "stochastic_depth_resnet110_cifar", "model.depth": 20},
    {"model.name": "resnet20_cifar", "model.scan_blocks": True,
     "model.survival_prob_last": 0.8},
    {"model.name": "preact_resnet164_cifar", "model.depth": 11},
])
def test_one_train_step(overrides):
  config = tiny_config(**{"dataset.synthetic_channels": 3, **overrides})
  _, _, metrics, _ = one_step(config, jax.devices())
  assert np.isfinite(metrics["loss"]) and metrics["count"] == 16


def test_every_unit_field_is_handed_down():
  """ResNet._unit_fields cannot drift from ResidualUnit: each of its fields
  is copied by name, renamed or derived."""
  import dataclasses
  handed = {*resnet.UNIT_FIELDS_SHARED, *resnet.UNIT_FIELDS_RENAMED,
            *resnet.UNIT_FIELDS_DERIVED}
  fields = {f.name for f in dataclasses.fields(resnet.ResidualUnit)} - {
      "parent", "name"}
  assert fields == handed
  model = small(activation="elu", zero_init_residual=True)
  unit = model._unit_fields(1, True)
  assert set(unit) == fields
  assert (unit["act"], unit["zero_init_last"], unit["strides"]) == (
      "elu", True, 2)
