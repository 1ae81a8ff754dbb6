"""NiN's recipe (configs/nin_cifar.py): the authors' N(0, std) start, the
class maps' unit biases, and the first steps at the authors' rate 0.1, where
a He start loses its ReLU'd class maps. Generated data only."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnflax import data, models
from cnnflax import run as run_lib
from cnnflax.models import nin
from configs import nin_cifar

LN10 = math.log(10)


def layers(params):
  """{(block, layer): Conv_0 parameters} in the table's order."""
  return {(b, l): params[b][l]["Conv_0"] for b in sorted(params)
          for l in ("conv", "mlp1", "mlp2")}


def init_params(name, size, **fields):
  """Parameters as training draws them (jit, an "rbg" key); they do not
  depend on the input size, so a small input keeps this quick."""
  model = models.get_model(name, **fields)
  return jax.jit(model.init)(jax.random.key(0, impl="rbg"),
                             jnp.zeros((1, size, size, 3)))["params"]


@pytest.fixture(scope="module")
def recipe_params():
  c = nin_cifar.get_config()
  fields = {k: v for k, v in c.model.items() if k != "name"}
  return init_params(c.model.name, 8, **fields)


def check_stds(params, variant):
  got = layers(params)
  want = [s for block in nin.PAPER_STDS[variant] for s in block]
  assert len(got) == len(want)
  for (key, p), std in zip(got.items(), want):
    kernel = np.asarray(p["kernel"])
    assert abs(kernel.mean()) < 0.1 * std, key
    assert kernel.std() == pytest.approx(std, rel=0.05), key


def test_cifar_start_is_the_authors_but_for_the_class_map_biases(
    recipe_params):
  check_stds(recipe_params, "cifar")  # N(0, 0.05) everywhere
  biases = {k: np.asarray(p["bias"]) for k, p in layers(recipe_params).items()}
  assert np.array_equal(biases.pop(("mlpconv3", "mlp2")), np.ones(10))
  assert not any(b.any() for b in biases.values())  # the authors' zeros
  # The same parameters, under the same names, as the He-started net.
  plain = jax.eval_shape(models.get_model("nin_cifar").init, jax.random.key(0),
                         jnp.zeros((1, 32, 32, 3)))["params"]
  assert jax.tree.structure(plain) == jax.tree.structure(recipe_params)
  assert run_lib.count_params(recipe_params) == 966_986


def test_imagenet_paper_start_is_the_authors():
  params = init_params("nin_imagenet", 67, weight_init="paper")
  check_stds(params, "imagenet")  # 0.01 in conv1, conv3 and cccp8
  assert not any(np.asarray(p["bias"]).any() for p in layers(params).values())


def test_config_is_the_released_solver():
  c = nin_cifar.get_config()
  assert (c.model.weight_init, c.model.class_map_bias) == ("paper", 1.0)
  assert not c.model.get("batch_norm", False)
  assert c.batch_size == 128 and c.num_train_steps == 120_000
  o, s = c.optimizer, c.schedule
  assert (o.name, o.learning_rate, o.momentum, o.weight_decay) == (
      "sgd", 0.1, 0.9, 1e-4)
  assert not o.decay_bias_and_bn  # Caffe's weight_decay: 1 / 0
  assert (s.name, tuple(s.boundaries), s.boundaries_unit, s.decay_factor) == (
      "piecewise", (100_000,), "steps", 0.1)


def he_scaled(params):
  """The same draws at He's scale, sqrt(2 / fan_in), all biases 0: the old
  start without compiling a second init."""
  def scale(path, x):
    if path[-1].key == "bias":
      return jnp.zeros_like(x)
    return x * math.sqrt(2 / math.prod(x.shape[:-1])) / float(x.std())
  return jax.tree_util.tree_map_with_path(scale, params)


def first_steps(steps=6):
  """The config's model, optimizer and rate on generated 16x16 images; the
  per-step losses and the class maps after `steps` steps, from the recipe's
  start and from the old (He-scaled) one, through the same compiled step."""
  c = nin_cifar.get_config()
  c.dataset.name = "synthetic"
  c.dataset.image_size = 16
  c.dataset.synthetic_train_size = 64
  c.dataset.synthetic_test_size = 16
  c.batch_size = c.eval_batch_size = 16
  c.num_train_steps = steps
  c.schedule.name = "constant"  # the rate before the first division
  run = run_lib.Run(c, "", devices=jax.devices()[:1])
  paper = jax.device_get(run.init_state())
  he = paper.replace(params=he_scaled(paper.params))
  fn = run.train_fn()
  arrays = run.devices.replicate(
      data.device_arrays(run.dataset, c.dataset, True))
  images = data.device_preprocess(run.dataset, c.dataset, False)(
      {"images": run.dataset.train.images, "labels": run.dataset.train.labels},
      {"index": np.arange(64)}, None)[0]
  model = run.model.clone(axis_name=None)
  class_maps = jax.jit(lambda params: model.apply(
      {"params": params}, images, capture_intermediates=True)[1]
      ["intermediates"]["mlpconv3"]["__call__"][0])
  out = {}
  for name, init in (("paper", paper), ("he", he)):
    state, losses = run.devices.replicate(init), []
    for i in range(steps):
      state, m = fn(state, arrays, run.devices.shard(run.train_batch(i)))
      m = run.devices.first(jax.device_get(m))
      losses.append(float(m["loss"]) / float(m["count"]))
    out[name] = losses, np.asarray(class_maps(run.devices.fetch(state).params))
  return out


def test_class_maps_survive_the_first_steps_at_rate_0_1():
  out = first_steps()
  losses, maps = out["paper"]
  assert losses[0] == pytest.approx(LN10, abs=0.05)  # logits start near 0
  assert max(losses) < LN10 + 0.3, losses  # no blow-up
  alive = (maps > 0).any(axis=(0, 1, 2))  # positive somewhere on 64 images
  assert alive.all(), alive
  # The old scale through the same steps: its first update overshoots and
  # the class maps that end negative everywhere get no gradient again.
  he_losses, he_maps = out["he"]
  assert max(he_losses) > 2 * LN10, he_losses
  assert not (he_maps > 0).any(axis=(0, 1, 2)).all()
