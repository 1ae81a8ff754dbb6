"""Two processes joined by jax.distributed (4 CPU devices each) train like
one process with 8 devices; only process 0 writes; resuming works.

Across processes the all-reduce is gloo's, which adds in another order than
the in-process one: results agree to float32 rounding, not bit for bit.
"""
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from cnnflax import train
from tests.conftest import ROOT, tiny_config
from tests.test_reliability import outputs
from tests.test_train import final_params

RUN = {"model.name": "lenet5_modern", "dataset.name": "synthetic",
       "dataset.synthetic_channels": 1, "dataset.synthetic_train_size": 64,
       "dataset.synthetic_test_size": 40, "batch_size": 16,
       "eval_batch_size": 16, "num_train_steps": 6, "log_every_steps": 2,
       "optimizer.learning_rate": 0.01,
       "eval_every_steps": 3, "checkpoint_every_steps": 3}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir, processes: int, **overrides):
  """Runs main.py as `processes` processes sharing 8 CPU devices."""
  flags = [f"--config.{k}={v}" for k, v in {**RUN, **overrides}.items()]
  args = [sys.executable, "main.py", "--config=configs/default.py",
          f"--workdir={workdir}", *flags]
  devices = 8 // processes
  env = {**os.environ,
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  if processes > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
               JAX_NUM_PROCESSES=str(processes))
  procs = [subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**env, "JAX_PROCESS_ID": str(i)})
           for i in range(processes)]
  for p in procs:
    _, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]


def assert_close(a, b):
  """Same structure and keys, numbers equal up to float32 rounding."""
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    if isinstance(x, str):
      assert x == y
    else:
      np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)


def test_two_processes_match_one_with_eight_devices(tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  train.train_and_evaluate(tiny_config(**RUN), one)  # this process: 8 devices
  launch(two, 2)
  assert_close(outputs(one), outputs(two))  # each record written once
  config = tiny_config(**RUN)
  assert_close(final_params(one, config).params,
               final_params(two, config).params)
  # Resume both for three more steps: two processes restore correctly.
  train.train_and_evaluate(tiny_config(**{**RUN, "num_train_steps": 9}), one)
  launch(two, 2, num_train_steps=9)
  assert_close(outputs(one), outputs(two))
  assert [m["step"] for m in outputs(two)["metrics"]] == [2, 4, 6, 8, 9]
  config = tiny_config(**{**RUN, "num_train_steps": 9})
  assert_close(final_params(one, config).params,
               final_params(two, config).params)
