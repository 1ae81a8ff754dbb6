"""A run whose workdir is a bucket: everything goes to the bucket through a
real GCS JSON API (gcp-storage-emulator, started here), a run killed with
SIGKILL resumes from the bucket, and it ends as an uninterrupted run does.
The emulator runs through tests/gcs_emulator.py, which adds the one response
header of the real API that it leaves out."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from etils import epath

from cnnflax import paths, train
from cnnflax.data import sources
from cnnflax.errors import ConfigError
from tests import test_multihost
from tests.conftest import ROOT, tiny_config
from tests.test_reliability import assert_same_params, outputs
from tests.test_train import final_params

BUCKET = "cnnflax-test"
# test_multihost's run, with a constant rate, so that the schedule does not
# depend on the step count: the killed run is resumed with the count that
# its reference uses.
RUN = {**test_multihost.RUN, "schedule.name": "constant",
       "eval_every_steps": 4, "checkpoint_every_steps": 4}


@pytest.fixture(scope="module")
def gcs():
  """A GCS emulator on this machine, and the clients pointed at it."""
  port = test_multihost.free_port()
  proc = subprocess.Popen(
      [sys.executable, "-m", "tests.gcs_emulator", f"--port={port}",
       f"--bucket={BUCKET}"], cwd=ROOT, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  deadline = time.time() + 60
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      assert proc.poll() is None and time.time() < deadline, \
          "gcp-storage-emulator did not start"
      time.sleep(0.2)
  saved = {k: os.environ.get(k) for k in (
      "STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")}
  os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
  paths.use_emulator_settings()
  yield f"gs://{BUCKET}"
  proc.terminate()
  proc.wait(timeout=30)
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value


def _main(workdir: str, steps: int) -> subprocess.Popen:
  """main.py as a user runs it, one process with 8 CPU devices."""
  overrides = {**RUN, "num_train_steps": steps}
  return test_multihost.start(workdir, 1, **overrides)[0]


def _committed_steps(folder: epath.Path) -> list[int]:
  """Checkpoints that orbax has finished (in a bucket: with their marker)."""
  if not folder.exists():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()
                and (p / "commit_success.txt").exists())


def test_bucket_workdir_survives_sigkill_and_matches_local(gcs, tmp_path):
  url = f"{gcs}/run"
  proc = _main(url, 100_000)
  deadline = time.time() + 300
  while not _committed_steps(epath.Path(url) / "checkpoints"):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() < deadline, "no checkpoint reached the bucket"
    time.sleep(0.5)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  killed_at = _committed_steps(epath.Path(url) / "checkpoints")[-1]
  steps = killed_at + 6
  resumed = _main(url, steps)
  _, stderr = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, stderr[-3000:]
  assert f"Resumed from {url}/checkpoints at step {killed_at}" in stderr

  local = str(tmp_path / "local")
  config = tiny_config(**{**RUN, "num_train_steps": steps})
  train.train_and_evaluate(config, local)
  assert outputs(local) == outputs(url)  # read from the bucket
  assert_same_params(final_params(local, config), final_params(url, config))
  events = list((epath.Path(url) / "tensorboard").iterdir())
  assert events and events[0].name.startswith("events.out.tfevents")
  assert json.loads((epath.Path(url) / "config.json").read_text())[
      "num_train_steps"] == steps
  # Nothing was written to a local folder named after the URL.
  assert not os.path.exists(os.path.join(ROOT, "gs:"))
  assert not os.path.exists("gs:")


def test_bucket_data_dir_reads_like_a_local_one(gcs, tmp_path):
  rng = np.random.default_rng(0)
  split = sources.Arrays(
      images=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
      labels=np.arange(20, dtype=np.int32) % 10)
  sources.write_cifar10(f"{gcs}/cifar10", split, split)
  train_split, test_split = sources.read_cifar10(f"{gcs}/cifar10")
  assert (train_split.images == split.images).all()
  assert (test_split.labels == split.labels).all()


@pytest.mark.parametrize("workdir, says", [
    ("gs://no-such-bucket/run", "--workdir=gs://no-such-bucket/run"),
    ("/proc/cnnflax-run", "--workdir=/proc/cnnflax-run cannot be written"),
])
def test_unwritable_workdir_is_one_line_before_training(gcs, workdir, says):
  with pytest.raises(ConfigError) as info:
    train.train_and_evaluate(tiny_config(), workdir)
  assert says in str(info.value) and "\n" not in str(info.value)


def test_sweep_reads_runs_from_a_bucket_root(gcs):
  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  import sweep  # pylint: disable=import-outside-toplevel
  root = f"{gcs}/sweep"
  run = sweep.Run("a", "configs/default.py")
  assert sweep.results(root, run) is None
  folder = epath.Path(sweep.run_dir(root, run))
  assert str(folder) == f"{root}/a"
  (folder / "results.json").write_text('{"test_top1_acc": 0.75, "wall_s": 1}')
  (folder / "metrics.jsonl").write_text('{"step": 2, "images_per_sec": 9}\n')
  (folder / "eval.jsonl").write_text('{"step": 2, "test_loss": 1.5}\n')
  assert sweep.test_error(sweep.results(root, run)) == 25.0
  assert sweep.run_outputs(str(folder)) == {
      "metrics": [{"step": 2}], "eval": [{"step": 2, "test_loss": 1.5}],
      "results": {"test_top1_acc": 0.75}}
  with pytest.raises(ValueError, match="--mode=slurm writes its script"):
    sweep.write_slurm([run], root, 1.0)


def test_racing_runs_on_a_bucket_one_wins(gcs):
  """The workdir lock through the real GCS API: three processes that try to
  take it at the same instant; one holds it, two refuse naming it."""
  from tests.test_misuse import race
  workdir = f"{gcs}/lock-race"
  outcomes = race(workdir)
  assert sorted(o.split()[0] for o in outcomes) == ["HELD", "LOCKED",
                                                     "LOCKED"], outcomes
  assert all("in use by another run" in o for o in outcomes
             if o.startswith("LOCKED"))
  assert not epath.Path(workdir, "lock.json").exists()  # given back
