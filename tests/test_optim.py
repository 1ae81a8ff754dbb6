"""Learning-rate schedules and optimizers from the config."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnflax import config_check, optim
from cnnflax.errors import ConfigError
from tests.conftest import tiny_config


def lr_at(config, steps, spe=100, total=1000):
  schedule = optim.create_schedule(config, spe, total)
  return [float(schedule(jnp.asarray(s))) for s in steps]


def test_resnet110_recipe_constant_warmup_then_piecewise():
  c = tiny_config()
  c.optimizer.learning_rate = 0.1
  c.schedule.name = "piecewise"
  c.schedule.boundaries = (32000, 48000)
  c.schedule.boundaries_unit = "steps"
  c.schedule.warmup_steps = 400
  c.schedule.warmup_type = "constant"
  c.schedule.warmup_learning_rate = 0.01
  got = lr_at(c, [0, 399, 400, 31999, 32000, 47999, 48000], total=64000)
  np.testing.assert_allclose(got, [0.01, 0.01, 0.1, 0.1, 0.01, 0.01, 0.001],
                             rtol=1e-6)


def test_densenet_boundaries_as_fractions_and_epochs():
  c = tiny_config()
  c.optimizer.learning_rate = 0.1
  c.schedule.name = "piecewise"
  c.schedule.boundaries = (0.5, 0.75)
  c.schedule.boundaries_unit = "fraction"
  frac = lr_at(c, [499, 500, 749, 750])
  c.schedule.boundaries = (5, 7.5)
  c.schedule.boundaries_unit = "epochs"
  epochs = lr_at(c, [499, 500, 749, 750])
  np.testing.assert_allclose(frac, [0.1, 0.01, 0.01, 0.001], rtol=1e-6)
  assert frac == epochs


def test_linear_warmup_then_cosine_to_floor():
  c = tiny_config()
  c.optimizer.learning_rate = 0.4
  c.schedule.name = "cosine"
  c.schedule.warmup_steps = 100
  got = lr_at(c, [0, 50, 100, 550, 1000])
  np.testing.assert_allclose(got, [0.0, 0.2, 0.4, 0.2, 0.0], atol=1e-6)


def test_exponential_decay_every_two_epochs():
  c = tiny_config()
  c.optimizer.learning_rate = 0.045
  c.schedule.name = "exponential"
  c.schedule.decay_factor = 0.94
  c.schedule.decay_every_epochs = 2
  np.testing.assert_allclose(lr_at(c, [199, 200, 400]),
                             [0.045, 0.045 * 0.94, 0.045 * 0.94 ** 2], rtol=1e-6)


def test_weight_decay_is_added_to_the_gradient():
  c = tiny_config()
  c.optimizer.momentum = 0.0
  c.optimizer.learning_rate = 0.5
  c.optimizer.weight_decay = 0.1
  c.schedule.name = "constant"
  tx = optim.create_optimizer(c, optim.create_schedule(c, 10, 100))
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  grads = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.5 * 0.1 * np.ones((2, 2)))
  np.testing.assert_allclose(updates["b"], -0.05 * np.ones(2))
  c.optimizer.decay_bias_and_bn = False
  tx = optim.create_optimizer(c, optim.create_schedule(c, 10, 100))
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["b"], np.zeros(2))


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam"])
def test_each_optimizer_descends(name):
  c = tiny_config()
  c.optimizer.name = name
  c.optimizer.learning_rate = 0.01
  c.schedule.name = "constant"
  tx = optim.create_optimizer(c, optim.create_schedule(c, 10, 100))
  params = {"w": jnp.array([3.0])}
  state = tx.init(params)
  for _ in range(20):
    grads = {"w": 2 * params["w"]}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert float(params["w"][0]) < 3.0


def test_unknown_schedule_is_refused():
  # Validated once, by config_check, from optim's own list of schedules.
  c = tiny_config()
  c.schedule.name = "triangle"
  with pytest.raises(ConfigError, match="config.schedule.name='triangle' is "
                     "not valid; choose one of: " + ", ".join(optim.SCHEDULES)):
    config_check.check_config(c)
