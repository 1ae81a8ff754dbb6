"""Registry and LeNet-5: parameter counts, shapes, field validation."""
import jax
import jax.numpy as jnp
import pytest

from cnnflax import models, summary
from cnnflax.errors import ConfigError
from cnnflax.models.lenet import C3_TABLE, SparseC3


@pytest.mark.parametrize("name", models.list_models())
def test_registered_counts_match_the_model(name):
  info = models.model_info(name)
  model = models.get_model(name, num_classes=info.num_classes)
  counted = summary.count(model, info.input_shape)
  if info.params is not None:
    assert counted["params"] == info.params
  if info.params_paper is not None:
    assert abs(counted["params"] - info.params_paper) / info.params_paper < 0.02
  if info.flops is not None:
    assert abs(counted["flops"] - info.flops) / info.flops < 0.02


@pytest.mark.parametrize("name", models.list_models())
def test_forward_gives_logits(name):
  info = models.model_info(name)
  model = models.get_model(name, num_classes=7)
  x = jax.ShapeDtypeStruct((2, *info.input_shape), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert out.shape == (2, 7)


def test_lenet_layer_shapes_follow_the_paper():
  rows = summary.layer_table(models.get_model("lenet5"), (32, 32, 1))
  shapes = {r.path: r.output_shape for r in rows}
  assert shapes["C1"] == (28, 28, 6) and shapes["S2"] == (14, 14, 6)
  assert shapes["C3"] == (10, 10, 16) and shapes["S4"] == (5, 5, 16)
  assert shapes["C5"] == (1, 1, 120) and shapes["F6"] == (84,)
  params = {r.path: r.params for r in rows}
  # Table I's sparse C3: 60 5x5 kernels + 16 biases; S2: 6 coefficients + 6 biases.
  assert params["C3"] == 1516 and params["S2"] == 12 and params["S4"] == 32


def test_sparse_c3_only_connects_table_one():
  # Feed one S2 map: only the C3 maps that Table I connects to it respond.
  layer = SparseC3()
  s2 = jnp.zeros((1, 14, 14, 6)).at[..., 0].set(1.0)
  params = layer.init(jax.random.key(1), s2)
  params = jax.tree.map(jnp.ones_like, params)
  params["params"]["bias"] = jnp.zeros(16)
  out = layer.apply(params, s2)
  responds = [bool(jnp.any(out[..., m] != 0)) for m in range(16)]
  inputs = [i for group in C3_TABLE for i in group]
  assert responds == [0 in ins for ins in inputs]
  assert sum(responds) == 10  # row 0 of Table I has ten X's


def test_modern_twin_is_a_switch():
  paper = models.get_model("lenet5")
  modern = models.get_model("lenet5", activation="relu", pooling="max",
                            connection_table=False, weight_init="lecun_normal")
  assert modern == models.get_model("lenet5_modern")
  assert paper.activation == "scaled_tanh"


def test_bad_fields_are_refused():
  with pytest.raises(ConfigError, match="pooling='median' is not valid"):
    models.get_model("lenet5", pooling="median")
  with pytest.raises(ConfigError, match="activation='swoosh' is unknown"):
    models.get_model("lenet5", activation="swoosh")
  with pytest.raises(ConfigError, match="has no field 'depth'"):
    models.get_model("lenet5", depth=3)
  with pytest.raises(ConfigError, match="not a registered model"):
    models.get_model("lenet6")
