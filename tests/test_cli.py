"""The command-line contract: main.py, cnnflax.summary, cnnflax.benchmark."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

TINY = ["--config.model.name=lenet5_modern", "--config.dataset.name=synthetic",
        "--config.dataset.synthetic_channels=1",
        "--config.dataset.synthetic_train_size=64",
        "--config.dataset.synthetic_test_size=32", "--config.batch_size=16",
        "--config.eval_batch_size=16", "--config.num_train_steps=4",
        "--config.log_every_steps=2", "--config.checkpoint_every_steps=2"]


def cli(*args, devices=1, timeout=300):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def error_line(proc):
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, proc.stderr[-2000:]
  return lines[0]


def test_main_on_synthetic(tmp_path):
  proc = cli("main.py", "--config=configs/default.py",
             f"--workdir={tmp_path}", *TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert results["steps"] == 4 and results["params"] == 61_706
  with open(tmp_path / "config.json") as f:
    recorded = json.load(f)
  assert recorded["model"]["name"] == "lenet5_modern"
  # The run set cnnflax's XLA options before jax started its backend.
  from cnnflax import backend
  assert recorded["backend"]["xla_flags"] == backend.with_xla_defaults(
      "--xla_force_host_platform_device_count=1").split()
  assert recorded["backend"]["platform"] == "cpu"


def test_main_on_digits_learns(tmp_path):
  proc = cli("main.py", "--config=configs/default.py", f"--workdir={tmp_path}",
             "--config.num_epochs=4", "--config.eval_every_steps=0",
             devices=2)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert results["test_top1_acc"] > 0.85, results
  assert results["devices"] == 2


@pytest.mark.parametrize("override, expected", [
    ("--config.model.name=lenet7", "config.model.name='lenet7' is not a registered model"),
    ("--config.dataset.name=cifar11", "config.dataset.name='cifar11' is not a known dataset"),
    ("--config.model.pooling=median", "pooling='median' is not valid"),
    ("--config.model.depth=3", "config.model.depth: model 'lenet5' has no field"),
    ("--config.batch_size=12", "config.batch_size=12 is not divisible by the 8 devices"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, override, expected):
  proc = cli("main.py", "--config=configs/default.py", f"--workdir={tmp_path}",
             override, devices=8)
  assert proc.returncode == 2
  assert expected in error_line(proc)
  assert not os.path.exists(tmp_path / "checkpoints")


def test_missing_dataset_says_which_files_to_put_where(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  proc = cli("main.py", "--config=configs/lenet5.py", f"--workdir={tmp_path}/w",
             f"--config.dataset.data_dir={empty}",
             "--config.dataset.download=False")  # tests never use a network
  assert proc.returncode == 2
  line = error_line(proc)
  assert "train-images-idx3-ubyte" in line and str(empty) in line
  assert "data_dir" in line


def test_input_benchmark_on_generated_jpegs_prints_one_json_line():
  proc = cli("-m", "cnnflax.benchmark", "--config=configs/resnet50.py",
             "--input", "--workers=1", "--input_images=40",
             "--input_batches=2", "--config.batch_size=16")
  assert proc.returncode == 0, proc.stderr[-2000:]
  line = json.loads(proc.stdout.strip().splitlines()[-1])
  assert line["workers"] == 1 and line["generated"] is True
  assert line["images_timed"] == 32 and line["image_size"] == 224
  assert line["input_images_per_sec"] > 0
  assert line["per_worker"] == line["input_images_per_sec"]


def test_summary_table_and_json():
  proc = cli("-m", "cnnflax.summary", "--config=configs/default.py")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "28x28x6" in proc.stdout and "60,850" in proc.stdout
  proc = cli("-m", "cnnflax.summary", "--config=configs/default.py", "--json")
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
      "params": 60_850, "flops": 326_520}


def test_benchmark_prints_one_json_line():
  proc = cli("-m", "cnnflax.benchmark", "--config=configs/default.py",
             "--steps=3", devices=2)
  assert proc.returncode == 0, proc.stderr[-2000:]
  line = json.loads(proc.stdout.strip().splitlines()[-1])
  assert line["devices"] == 2 and line["batch_size"] == 64
  assert line["images_per_sec"] > 0 and line["compile_s"] > 0
  assert set(line["step_ms"]) == {"median", "min", "max"}


def test_config_argument_reaches_get_config():
  proc = cli("-m", "cnnflax.summary", "--config=configs/lenet5.py:modern",
             "--json")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["params"] == 61_706
