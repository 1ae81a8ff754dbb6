"""MobileNet v1 and v2: the papers' tables, width and resolution, the
depthwise-separable layer and its counting.

Parameter counts and mult-adds at 1.0-224 are checked in test_models.py.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnflax import models, summary
from cnnflax.backend.kernels import Kernels
from cnnflax.errors import ConfigError
from cnnflax.models.layers import Conv
from cnnflax.models.mobilenet import make_divisible
from configs import mobilenet_v1, mobilenet_v2
from tests.test_densenet import classic_threefry  # noqa: F401 (autouse)
from tests.test_zoo1 import check_step, shapes, step_config


def test_v1_shapes_follow_table_1():
  got = shapes("mobilenet_v1", (224, 224, 3))
  assert got["conv1"] == (112, 112, 32)
  want = [(112, 64), (56, 128), (56, 128), (28, 256), (28, 256), (14, 512),
          (14, 512), (14, 512), (14, 512), (14, 512), (14, 512), (7, 1024),
          (7, 1024)]
  for i, (size, maps) in enumerate(want):
    assert got[f"separable{i + 1}"] == (size, size, maps)
  # Each: 3x3 depthwise (stride 2 where the grid halves), 1x1 pointwise.
  assert got["separable2/depthwise"] == (56, 56, 64)
  assert got["separable2/pointwise"] == (56, 56, 128)
  assert "separable14" not in got and got["head"] == (1000,)


def test_v2_shapes_follow_table_2():
  got = shapes("mobilenet_v2", (224, 224, 3))
  assert got["conv1"] == (112, 112, 32)
  # Table 2's rows: the last block of each, (size, c); t = 6 but the first.
  ends = {1: (112, 16), 3: (56, 24), 6: (28, 32), 10: (14, 64),
          13: (14, 96), 16: (7, 160), 17: (7, 320)}
  for block, (size, c) in ends.items():
    assert got[f"block{block}"] == (size, size, c)
  assert "block1/expand" not in got  # t = 1
  assert got["block2/expand"] == (112, 112, 96)  # 6 * 16
  assert got["block2/separable/depthwise"] == (56, 56, 96)
  assert got["conv_last"] == (7, 7, 1280) and got["head"] == (1000,)


def count(name, size=224, **fields):
  return summary.count(models.get_model(name, **fields), (size, size, 3))


def test_v1_width_and_resolution_follow_tables_6_and_7():
  # Mult-adds (M) and parameters (M) of Table 6 (width) and 7 (resolution).
  for alpha, madds, params in ((0.75, 325, 2.6), (0.5, 149, 1.3),
                               (0.25, 41, 0.5)):
    got = count("mobilenet_v1", width_multiplier=alpha)
    assert abs(got["flops"] / 1e6 - madds) / madds < 0.02
    assert abs(got["params"] / 1e6 - params) < 0.06
  for size, madds in ((192, 418), (160, 290), (128, 186)):
    got = count("mobilenet_v1", size)
    assert abs(got["flops"] / 1e6 - madds) / madds < 0.02
    assert got["params"] == 4_231_976


def test_v2_width_rounds_to_multiples_of_8():
  assert make_divisible(32 * 0.35) == 16  # 11.2 -> 8 is < 90%: one more
  assert make_divisible(24 * 0.75) == 24 and make_divisible(1280 * 1.4) == 1792
  rows = summary.layer_table(
      models.get_model("mobilenet_v2", width_multiplier=0.5), (224, 224, 3))
  got = {r.path: r.output_shape for r in rows}
  assert got["conv1"] == (112, 112, 16) and got["block1"] == (112, 112, 8)
  assert got["block17"] == (7, 7, 160)
  assert got["conv_last"] == (7, 7, 1280)  # kept below alpha = 1
  assert all(shape[-1] % 8 == 0 for path, shape in got.items()
             if path.startswith(("conv", "block")))
  # TF-slim's published mult-adds for its v2 checkpoints (M).
  for alpha, madds in ((1.4, 582), (0.75, 209), (0.5, 97), (0.35, 59)):
    got = count("mobilenet_v2", width_multiplier=alpha)["flops"] / 1e6
    assert abs(got - madds) / madds < 0.03


def test_v2_expansion_is_a_switch():
  got = shapes("mobilenet_v2", (224, 224, 3), expansion=4)
  assert got["block2/expand"] == (112, 112, 64)
  assert "block1/expand" not in got  # the first block keeps t = 1


@pytest.mark.parametrize("name,fields,message", [
    ("mobilenet_v1", dict(width_multiplier=0.0), "width_multiplier=0.0 is "
     r"not valid; choose alpha > 0"),
    ("mobilenet_v1", dict(dropout_rate=1.0), "dropout_rate=1.0 is not valid"),
    ("mobilenet_v1", dict(activation="swoosh"), "activation='swoosh'"),
    ("mobilenet_v2", dict(expansion=0), "expansion=0 is not valid"),
    ("mobilenet_v2", dict(round_to=0), "round_to=0 is not valid"),
    ("mobilenet_v2", dict(width_multiplier=-1), "width_multiplier=-1 is not "
     "valid"),
    ("mobilenet_v2", dict(depth=50), "has no field 'depth'"),
])
def test_bad_fields_are_refused(name, fields, message):
  with pytest.raises(ConfigError, match=message):
    models.get_model(name, **fields)


# --- depthwise convolutions --------------------------------------------------


@pytest.mark.parametrize("strides", [1, 2])
def test_weighted_sum_depthwise_is_lax_conv(strides):
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 5))
  layer = Conv(5, (3, 3), (strides, strides), 1, groups=5)
  variables = layer.init(jax.random.key(1), x)

  def value_and_grads(depthwise):
    kernels = Kernels(depthwise=depthwise)
    def f(variables, x):
      return jnp.sum(jnp.sin(layer.clone(kernels=kernels).apply(variables,
                                                                 x)))
    return jax.value_and_grad(f, argnums=(0, 1))(variables, x)

  for got, want in zip(jax.tree.leaves(value_and_grads("matmul")),
                       jax.tree.leaves(value_and_grads("xla"))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_weighted_sum_depthwise_keeps_bfloat16_and_sums_wide():
  # Inputs that bf16 holds exactly: the products of two of them are exact
  # in f32, so a sum kept in f32 is off by its one final rounding to bf16
  # (at most 2^-8 of it); a sum in bf16 rounds at every tap.
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 5)).astype(jnp.bfloat16)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 5)).astype(
      jnp.bfloat16)
  want = np.asarray(Kernels(depthwise="xla").conv2d(
      x.astype(jnp.float32), kernel.astype(jnp.float32), (1, 1), 1, groups=5))
  got = Kernels(depthwise="matmul").conv2d(x, kernel, (1, 1), 1, groups=5)
  assert got.dtype == jnp.bfloat16
  error = np.abs(np.asarray(got, np.float32) - want)
  assert np.all(error <= np.abs(want) * 2.0**-8 + 1e-6)


def test_summary_counts_grouped_convolutions_per_group():
  # nn.Conv's kernel holds in / groups inputs per filter: a depthwise 3x3
  # costs 9 mult-adds per output value, not 9 * channels.
  class Depthwise(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Conv(16, (3, 3), feature_group_count=16, use_bias=False)(x)
  assert summary.count(Depthwise(), (8, 8, 16)) == {
      "params": 9 * 16, "flops": 8 * 8 * 16 * 9}


# --- training and configs ----------------------------------------------------


def test_small_v2_step():
  # v2's inverted residuals end in v1's depthwise-separable layer: one step
  # trains both. XLA's depthwise convolution compiles 10 s faster than the
  # weighted sum, whose gradients are checked above.
  check_step(step_config("mobilenet_v2", 32, **{
      "model.width_multiplier": 0.25, "model.dropout_rate": 0.0,
      "backend.depthwise": "xla"}), jax.devices())


def test_half_precision_computes_in_bfloat16():
  model = models.get_model("mobilenet_v2", num_classes=10, dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  assert out.dtype == jnp.bfloat16 and out.shape == (2, 10)


def test_configs():
  c = mobilenet_v1.get_config("0.5,160")
  assert c.model.width_multiplier == 0.5 and c.dataset.image_size == 160
  assert c.optimizer.name == "rmsprop"
  c = mobilenet_v2.get_config()
  assert (c.optimizer.name, c.optimizer.learning_rate, c.schedule.name,
          c.schedule.decay_factor, c.optimizer.weight_decay) == (
              "rmsprop", 0.045, "exponential", 0.98, 4e-5)
  assert mobilenet_v2.get_config("1.4,sgd").optimizer.name == "sgd"
  with pytest.raises(ValueError, match=r"mobilenet_v2.py:1.0,adam is unknown"):
    mobilenet_v2.get_config("1.0,adam")
