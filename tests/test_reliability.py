"""Runs survive preemption, NaNs, failed saves and cut-short logs, and the
same config gives the same bits."""
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cnnflax import checkpoint, train
from cnnflax import run as run_lib
from cnnflax.errors import CheckpointError, NumericalError, Stopped
from tests.conftest import ROOT, tiny_config
from tests.test_cli import TINY
from tests.test_train import final_params, read_jsonl


sys.path.insert(0, os.path.join(ROOT, "experiments"))
from sweep import run_outputs as outputs  # noqa: E402


def assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_same_config_gives_identical_bits(tmp_path):
  config = tiny_config(**{"model.name": "resnet20_cifar",
                          "dataset.synthetic_channels": 3})
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  train.train_and_evaluate(config, one)
  train.train_and_evaluate(config, two)
  assert outputs(one) == outputs(two)
  assert_same_params(final_params(one, config), final_params(two, config))


@pytest.mark.parametrize("eval_every", [3, 2])  # 2: the stop step evaluates
def test_sigterm_saves_then_resume_is_exact(tmp_path, monkeypatch,
                                            eval_every):
  config = tiny_config(eval_every_steps=eval_every)
  whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
  train.train_and_evaluate(config, whole)
  log = train.Loop.log

  def log_then_preempt(self, step):
    log(self, step)
    if step == 2:  # the scheduler's signal arrives mid-run
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(train.Loop, "log", log_then_preempt)
  with pytest.raises(Stopped) as info:
    train.train_and_evaluate(config, cut)
  assert info.value.step == 2 and info.value.exit_code == 128 + 15
  assert sorted(os.listdir(os.path.join(cut, "checkpoints"))) == ["2"]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
  monkeypatch.setattr(train.Loop, "log", log)
  train.train_and_evaluate(config, cut)
  assert outputs(whole) == outputs(cut)
  assert_same_params(final_params(whole, config), final_params(cut, config))


def test_sigterm_from_outside_exits_143_and_resumes(tmp_path):
  """The real signal, delivered to `main.py` while it trains."""
  args = [sys.executable, "main.py", "--config=configs/default.py",
          f"--workdir={tmp_path}", *TINY, "--config.num_train_steps=100000",
          "--config.checkpoint_every_steps=100000"]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE,
                          text=True)
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 240
  while not metrics.exists() and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=240)
  assert proc.returncode == 143, stderr[-2000:]
  assert "stopped: stopped by SIGTERM at step" in stderr
  saved = os.listdir(tmp_path / "checkpoints")
  assert len(saved) == 1 and int(saved[0]) >= 2


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config(**{"optimizer.learning_rate": 1e30,
                          "num_train_steps": 40, "checkpoint_every_steps": 1,
                          "log_every_steps": 20, "eval_every_steps": 0})
  workdir = str(tmp_path / "run")
  with pytest.raises(NumericalError) as info:
    train.train_and_evaluate(config, workdir)
  message = str(info.value)
  bad_step = int(message.split(":")[0].removeprefix("step "))
  assert "is not finite, the first non-finite quantity" in message
  assert "loss (" in message or "gradient of params/" in message
  assert f"the last good checkpoint (step {bad_step - 1}) is kept" in message
  state = final_params(workdir, config)
  assert int(state.step) == bad_step - 1
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  config = tiny_config()
  workdir = str(tmp_path / "run")
  save = ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    if step == 6:
      raise OSError(28, "No space left on device")
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(CheckpointError) as info:
    train.train_and_evaluate(config, workdir)
  assert ("saving the checkpoint of step 6" in str(info.value)
          and "No space left on device" in str(info.value)
          and "the previous checkpoint (step 3) is kept" in str(info.value))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  train.train_and_evaluate(config, workdir)  # resumes from step 3
  whole = str(tmp_path / "whole")
  train.train_and_evaluate(config, whole)
  assert outputs(whole) == outputs(workdir)


def test_log_line_cut_by_sigkill_is_dropped_on_resume(tmp_path):
  config = tiny_config()
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    lines = f.readlines()
  with open(path, "w") as f:  # killed while writing step 6's record
    f.writelines(lines[:-1] + [lines[-1][:17]])
  train._truncate_after(path, 4)
  assert [m["step"] for m in read_jsonl(path)] == [2, 4]


def test_resume_with_other_model_fields_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(), workdir)
  with pytest.raises(CheckpointError, match=(
      "written with config.model.activation='relu' but this run has "
      "config.model.activation='tanh'")):
    train.train_and_evaluate(tiny_config(**{"model.activation": "tanh"}),
                             workdir)


def test_half_written_checkpoint_is_never_restored(tmp_path):
  config = tiny_config(num_train_steps=9)
  whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
  train.train_and_evaluate(config, whole)
  train.train_and_evaluate(config, cut)
  # What SIGKILL leaves when it lands during orbax's write of step 9.
  folder = os.path.join(cut, "checkpoints")
  shutil.rmtree(os.path.join(folder, "9"))
  os.remove(os.path.join(cut, "results.json"))
  half = os.path.join(folder, "9.orbax-checkpoint-tmp-1763800000")
  os.makedirs(os.path.join(half, "state"))
  with open(os.path.join(half, "state", "_METADATA"), "w") as f:
    f.write('{"tree_metadata": {')
  train.train_and_evaluate(config, cut)  # resumes from step 6
  assert sorted(os.listdir(folder)) == ["3", "6", "9"]
  assert outputs(whole) == outputs(cut)


@pytest.fixture
def small_disk(tmp_path):
  """A 1.3 MB tmpfs: room for two checkpoints of tiny_config's model (about
  0.52 MB each), so the third save runs out of space while it is written in
  the background. Needs root, as CI and the developers' machines have."""
  folder = tmp_path / "disk"
  folder.mkdir()
  mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1300k", "tmpfs",
                          str(folder)], capture_output=True, text=True)
  if mount.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
  yield folder
  subprocess.run(["umount", "-l", str(folder)], check=True)


def test_background_save_that_fills_the_disk_keeps_the_previous_one(
    small_disk, tmp_path):
  config = tiny_config(num_train_steps=12)
  workdir = str(small_disk / "run")
  with pytest.raises(CheckpointError) as info:
    train.train_and_evaluate(config, workdir)
  message = str(info.value)
  assert ("saving the checkpoint of step 9" in message
          and "the previous checkpoint (step 6) is kept" in message), message
  assert "\n" not in message
  folder = os.path.join(workdir, "checkpoints")
  assert [n for n in sorted(os.listdir(folder)) if n.isdigit()] == ["3", "6"]
  subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)],
                 check=True)  # space freed: the same command resumes
  train.train_and_evaluate(config, workdir)
  whole = str(tmp_path / "whole")
  train.train_and_evaluate(config, whole)
  assert outputs(whole) == outputs(workdir)
  assert_same_params(final_params(whole, config),
                     final_params(workdir, config))


def test_background_save_matches_waiting_for_each_save(tmp_path):
  """The state handed to the background writer is a copy: the next steps,
  which reuse (donate) the device buffers, cannot change what is written."""
  every_step = {"checkpoint_every_steps": 1, "checkpoints_to_keep": 6,
                "eval_every_steps": 0}
  config = tiny_config(**every_step)
  waiting = tiny_config(**every_step, checkpoint_async=False)
  a, b = str(tmp_path / "async"), str(tmp_path / "sync")
  train.train_and_evaluate(config, a)
  train.train_and_evaluate(waiting, b)
  template = jax.device_get(run_lib.Run(config, a).init_state())
  for step in range(1, 7):
    states = [checkpoint.Checkpoints(os.path.join(w, "checkpoints"), 6,
                                     {}).restore(template, step)[0]
              for w in (a, b)]
    assert int(states[0].step) == step
    assert_same_params(*states)
