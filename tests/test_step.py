"""The mapped train step: device counts, shard_map vs pmap, BatchNorm."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from cnnflax import data, step
from cnnflax import run as run_lib
from tests.conftest import tiny_config


def bn_config(**overrides):
  return tiny_config(**{"model.name": "lenet5", "model.batch_norm": True,
                        "optimizer.momentum": 0.0, "batch_size": 32,
                        **overrides})


def one_step(config, devices):
  """(initial host state, state after one step, metric sums) on `devices`."""
  run = run_lib.Run(config, "", devices=devices)
  init = jax.device_get(run.init_state())
  state = run.devices.replicate(init)
  arrays = run.devices.replicate(
      data.device_arrays(run.dataset, config.dataset, True))
  batch = run.devices.shard(run.train_batch(0))
  new_state, metrics = run.train_fn()(state, arrays, batch)
  return init, new_state, jax.device_get(run.devices.first(metrics)), run


def test_eight_devices_match_one():
  assert jax.device_count() == 8
  config = bn_config()
  init, one, m1, run1 = one_step(config, jax.devices()[:1])
  _, eight, m8, run8 = one_step(config, jax.devices())
  one, eight = run1.devices.fetch(one), run8.devices.fetch(eight)
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
  assert m1["count"] == m8["count"] == 32
  lr = config.optimizer.learning_rate
  # With plain SGD, (init - new) / lr is the gradient (plus weight decay).
  for p0, a, b in zip(jax.tree.leaves(init.params), jax.tree.leaves(one.params),
                      jax.tree.leaves(eight.params)):
    np.testing.assert_allclose((p0 - a) / lr, (p0 - b) / lr, atol=2e-5,
                               rtol=1e-4)
  for a, b in zip(jax.tree.leaves(one.batch_stats),
                  jax.tree.leaves(eight.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_pmap_matches_shard_map():
  _, s, ms, run_s = one_step(bn_config(), jax.devices())
  _, p, mp, run_p = one_step(bn_config(parallelism="pmap"), jax.devices())
  s, p = run_s.devices.fetch(s), run_p.devices.fetch(p)
  np.testing.assert_allclose(ms["loss"], mp["loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(p)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("parallelism", ["shard_map", "pmap"])
@pytest.mark.parametrize("sync", [True, False])
def test_batch_stats_agree_across_replicas(parallelism, sync):
  config = bn_config(parallelism=parallelism, batch_norm_sync=sync)
  _, state, _, _ = one_step(config, jax.devices())
  for leaf in jax.tree.leaves(state.batch_stats):
    if parallelism == "pmap":
      replicas = np.asarray(leaf)
    else:
      replicas = np.stack([np.asarray(s.data) for s in leaf.addressable_shards])
    assert replicas.shape[0] == 8
    for r in replicas[1:]:
      np.testing.assert_array_equal(r, replicas[0])


def test_per_device_batch_norm_normalises_per_device():
  # Per-device statistics see 4 examples each, not 32: a different loss.
  _, _, synced, _ = one_step(bn_config(batch_norm_sync=True), jax.devices())
  _, _, local, _ = one_step(bn_config(batch_norm_sync=False), jax.devices())
  assert abs(float(synced["loss"]) - float(local["loss"])) > 1e-4


def test_example_words_do_not_depend_on_device_count():
  key = jax.random.key(3)

  def words_on(n):
    mesh = Mesh(np.array(jax.devices()[:n]), (step.AXIS,))
    fn = jax.shard_map(lambda k: step.example_words(k, 8 // n), mesh=mesh,
                       in_specs=P(), out_specs=P(step.AXIS))
    return np.asarray(jax.jit(fn)(key))

  np.testing.assert_array_equal(words_on(1), words_on(8))
  assert words_on(8).shape == (8, 3)
  assert len({tuple(w) for w in words_on(8)}) == 8  # one draw per example


def test_batch_not_divisible_by_devices_is_refused():
  from cnnflax.errors import ConfigError
  with pytest.raises(ConfigError, match=r"config.batch_size=12 is not divisible by the 8 devices"):
    run_lib.Run(tiny_config(batch_size=12), "")


def test_half_precision_trains_in_bfloat16_with_float32_params():
  config = tiny_config(half_precision=True, batch_size=16)
  _, state, metrics, run = one_step(config, jax.devices())
  host = run.devices.fetch(state)
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(host.params))
  assert np.isfinite(metrics["loss"])
  assert run.model.dtype == jnp.bfloat16
