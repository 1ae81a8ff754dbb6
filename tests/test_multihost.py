"""Two processes joined by jax.distributed (4 CPU devices each) train like
one process with 8 devices; only process 0 writes; resuming works.

Across processes the all-reduce is gloo's, which adds in another order than
the in-process one: results agree to float32 rounding, not bit for bit.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time

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


def start(workdir, processes: int, **overrides) -> list[subprocess.Popen]:
  """Starts main.py as `processes` processes sharing 8 CPU devices."""
  flags = [f"--config.{k}={v}" for k, v in {**RUN, **overrides}.items()]
  args = [sys.executable, "main.py", "--config=configs/default.py",
          f"--workdir={workdir}", *flags]
  devices = 8 // processes
  env = {**os.environ,
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  if processes > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
               JAX_NUM_PROCESSES=str(processes))
  return [subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                           env={**env, "JAX_PROCESS_ID": str(i)})
          for i in range(processes)]


def finish(procs) -> list[tuple[int, str]]:
  """(exit code, stderr) of each process, once all have ended."""
  errors = [p.communicate(timeout=600)[1] for p in procs]
  return [(p.returncode, err) for p, err in zip(procs, errors)]


def launch(workdir, processes: int, **overrides):
  """Runs main.py as `processes` processes until they succeed."""
  for code, stderr in finish(start(workdir, processes, **overrides)):
    assert code == 0, stderr[-3000:]


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


def test_sigterm_to_one_host_stops_both_at_one_step_and_resumes(tmp_path):
  """The scheduler's notice reaches one host; jax's preemption sync point
  makes both stop after the same step, with one coordinated save."""
  # A constant rate, so that the resumed run can end at a step count chosen
  # after the stop, and its reference can be trained for the same count.
  recipe = {"schedule.name": "constant", "checkpoint_every_steps": 10,
            "eval_every_steps": 5}
  workdir = tmp_path / "two"
  procs = start(workdir, 2, num_train_steps=100_000, **recipe)
  deadline = time.time() + 300
  while not (workdir / "checkpoints" / "10").exists():
    assert all(p.poll() is None for p in procs), finish(procs)
    assert time.time() < deadline, "no checkpoint within 300 s"
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)  # not the host that writes the logs
  ended = finish(procs)
  assert [code for code, _ in ended] == [143, 143], ended
  stops = [re.search(r"stopped by SIGTERM at step (\d+)", err) for _, err in
           ended]
  assert all(stops), ended
  step = int(stops[0].group(1))
  assert int(stops[1].group(1)) == step > 10
  saved = sorted(int(n) for n in os.listdir(workdir / "checkpoints")
                 if n.isdigit())
  assert saved[-1] == step

  launch(workdir, 2, num_train_steps=step + 4, **recipe)
  one = str(tmp_path / "one")
  config = tiny_config(**{**RUN, **recipe, "num_train_steps": step + 4})
  train.train_and_evaluate(config, one)  # uninterrupted, 8 devices
  assert_close(outputs(one), outputs(str(workdir)))
  assert_close(final_params(one, config).params,
               final_params(str(workdir), config).params)
