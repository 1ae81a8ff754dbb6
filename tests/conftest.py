"""Every test runs with 8 fake CPU devices, set before jax starts."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `configs`

from cnnflax import backend  # noqa: E402  (no jax yet)

# The XLA flags the runs under test resolve to (config.backend.xla_defaults),
# given before jax starts, as main.py's runs have them.
os.environ["XLA_FLAGS"] = backend.with_xla_defaults(
    (os.environ.get("XLA_FLAGS", "")
     + " --xla_force_host_platform_device_count=8").strip())

import ml_collections  # noqa: E402
import pytest  # noqa: E402

from configs import default  # noqa: E402


def tiny_config(**overrides):
  """A run of a few steps on synthetic data: compiles and runs in seconds."""
  c = default.get_config()
  c.model.name = "lenet5_modern"
  c.dataset.name = "synthetic"
  c.dataset.synthetic_channels = 1
  c.dataset.synthetic_train_size = 64
  c.dataset.synthetic_test_size = 40  # not a multiple of the eval batch
  c.batch_size = 16
  c.eval_batch_size = 16
  c.num_train_steps = 6
  c.log_every_steps = 2
  c.eval_every_steps = 3
  c.checkpoint_every_steps = 3
  c.optimizer.learning_rate = 0.01
  # Not type-safe, so that tests can hand the validator any wrong type.
  c = ml_collections.ConfigDict(c.to_dict(), type_safe=False)
  for key, value in overrides.items():
    target = c
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c


@pytest.fixture
def tiny():
  return tiny_config
