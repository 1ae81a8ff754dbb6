"""Auxiliary-classifier losses and label smoothing in the train step."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnnflax import models, step
from tests.conftest import tiny_config
from tests.test_step import one_step


class TwoHeads(nn.Module):
  """Returns (logits, aux_logits) in training, like GoogLeNet."""
  num_classes: int = 10
  dtype: object = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    logits = nn.Dense(self.num_classes, name="main")(x)
    if not train:
      return logits
    return logits, nn.Dense(self.num_classes, name="aux")(x)


models.register_model("test_two_heads", TwoHeads, input_shape=(32, 32, 1),
                      num_classes=10)


def test_aux_loss_weight_trains_the_aux_head_only_when_weighted():
  base = {"model.name": "test_two_heads", "optimizer.weight_decay": 0.0}
  init, off, _, run = one_step(tiny_config(**base), jax.devices())
  _, on, _, _ = one_step(tiny_config(**base, aux_loss_weights=(0.3,)),
                         jax.devices())
  off, on = run.devices.fetch(off), run.devices.fetch(on)
  np.testing.assert_array_equal(off.params["aux"]["kernel"],
                                init.params["aux"]["kernel"])
  assert not np.allclose(on.params["aux"]["kernel"],
                         init.params["aux"]["kernel"])
  np.testing.assert_allclose(on.params["main"]["kernel"],
                             off.params["main"]["kernel"], rtol=1e-6)


def test_label_smoothing_matches_optax():
  logits = jnp.array([[2.0, 0.5, -1.0]])
  labels = jnp.array([0])
  want = optax.softmax_cross_entropy(
      logits, optax.smooth_labels(jax.nn.one_hot(labels, 3), 0.1))
  np.testing.assert_allclose(step.cross_entropy(logits, labels, 0.1), want,
                             rtol=1e-6)
  assert float(step.cross_entropy(logits, labels, 0.1)[0]) > float(
      step.cross_entropy(logits, labels, 0.0)[0])


def test_top5_counts_hits_in_the_five_best():
  logits = jnp.array([[9., 8., 7., 6., 5., 4.], [9., 8., 7., 6., 5., 4.]])
  labels = jnp.array([4, 5])
  sums = step.metric_sums(logits, labels, jnp.zeros(2), jnp.ones(2))
  assert float(sums["top1"]) == 0 and float(sums["top5"]) == 1
