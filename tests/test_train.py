"""train_and_evaluate end to end: outputs, exact resume, refusals."""
import hashlib
import json
import os

import jax
import numpy as np
import pytest

from cnnflax import checkpoint, train
from cnnflax import run as run_lib
from cnnflax.errors import CheckpointError
from tests.conftest import tiny_config


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def final_params(workdir, config):
  run = run_lib.Run(config, workdir)
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), 3, {})
  state, _ = ckpts.restore(jax.device_get(run.init_state()))
  return state


def test_run_writes_everything(tmp_path):
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(tiny_config(), workdir)
  for name in ("config.json", "metrics.jsonl", "eval.jsonl", "results.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  metrics = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [m["step"] for m in metrics] == [2, 4, 6]
  assert set(metrics[0]) >= {"step", "epoch", "loss", "top1_acc",
                             "learning_rate", "images_per_sec",
                             "input_wait_s"}
  evals = read_jsonl(os.path.join(workdir, "eval.jsonl"))
  assert [e["step"] for e in evals] == [3, 6]
  assert set(evals[0]) >= {"test_loss", "test_top1_acc", "test_top5_acc"}
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  for key in ("test_top1_acc", "test_top5_acc", "test_loss", "steps", "params",
              "wall_s"):
    assert key in saved, key
  assert saved["steps"] == 6 and saved["params"] == 61_706
  assert saved == pytest.approx(results) or saved["test_loss"] == results["test_loss"]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["batch_size"] == 16


def test_eval_counts_every_test_example(tmp_path):
  # 40 test examples in batches of 16: the last batch is padded and masked,
  # so top-1 is a multiple of 1/40, never of 1/48 or 1/32.
  results = train.train_and_evaluate(tiny_config(), str(tmp_path / "r"))
  hits = results["test_top1_acc"] * 40
  assert abs(hits - round(hits)) < 1e-6


def test_resume_reproduces_uninterrupted_run(tmp_path):
  config = tiny_config()
  whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
  train.train_and_evaluate(config, whole)
  train.train_and_evaluate(config, cut)
  # Pretend the second run died after its step-3 checkpoint.
  import shutil
  shutil.rmtree(os.path.join(cut, "checkpoints", "6"))
  os.remove(os.path.join(cut, "results.json"))
  train.train_and_evaluate(config, cut)
  a, b = final_params(whole, config), final_params(cut, config)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert read_jsonl(os.path.join(whole, "metrics.jsonl")) != []
  steps = [m["step"] for m in read_jsonl(os.path.join(cut, "metrics.jsonl"))]
  assert steps == [2, 4, 6]  # no duplicated records after the resume
  losses = lambda d: [m["loss"] for m in read_jsonl(os.path.join(d, "metrics.jsonl"))]
  assert losses(whole) == losses(cut)


def _digest(directory):
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      with open(os.path.join(root, name), "rb") as f:
        h.update(name.encode() + f.read())
  return h.hexdigest()


def test_corrupt_checkpoint_is_refused_and_kept(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(), workdir)
  ckpt = os.path.join(workdir, "checkpoints")
  for root, _, files in os.walk(os.path.join(ckpt, "6", "state")):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        size = max(os.path.getsize(path), 16)
        f.write(b"\x07" * size)
  before = {s: _digest(os.path.join(ckpt, s)) for s in ("3", "6")}
  with pytest.raises(CheckpointError, match=r"checkpoints/6 cannot be restored"):
    train.train_and_evaluate(tiny_config(num_train_steps=9), workdir)
  after = {s: _digest(os.path.join(ckpt, s)) for s in ("3", "6")}
  assert before == after
  assert sorted(os.listdir(ckpt)) == ["3", "6"]


def test_resume_with_another_model_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(), workdir)
  other = tiny_config(**{"model.name": "lenet5"})
  with pytest.raises(CheckpointError, match=(
      "config.model.name='lenet5_modern' but this run has "
      "config.model.name='lenet5';")):
    train.train_and_evaluate(other, workdir)


def test_data_kept_on_the_host_trains_the_same(tmp_path):
  on_device = train.train_and_evaluate(tiny_config(), str(tmp_path / "a"))
  on_host = train.train_and_evaluate(
      tiny_config(**{"dataset.on_device": False}), str(tmp_path / "b"))
  assert on_device["test_loss"] == pytest.approx(on_host["test_loss"], rel=1e-5)


