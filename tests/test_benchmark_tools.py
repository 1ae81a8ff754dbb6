"""cnnflax.benchmark --trials and benchmarks/side_by_side.py's arithmetic.

Nothing here imports torch (not a project dependency): side_by_side only
imports it in its PyTorch worker processes.
"""
import json
import os
import statistics
import subprocess
import sys
import types

import pytest

from benchmarks import side_by_side
from tests.conftest import ROOT


def test_achieved_gflops_counts_forward_and_backward():
  # ResNet-20: 40,551,040 mult-adds per image; 2 FLOPs each forward, 4 back.
  assert side_by_side.achieved_gflops(40_551_040, 1000.0) == 243.30624
  assert side_by_side.matmul_gflops(2048, 0.5) == 2 * 2048 ** 3 / 0.5 / 1e9


def test_report_rows():
  result = {"count": {"params": 269_722, "flops": 40_551_040},
            "torch_fp32": {"images_per_sec": 400.0},
            "torch_fp32_tcmalloc": {"images_per_sec": 500.0},
            "torch_bf16": {"error": "exit 1: python ..."},
            "cnnflax_fp32": {"images_per_sec": 200.0, "compile_s": 5.0,
                             "images_per_sec_trials": [190.0, 200.0, 210.0]},
            "cnnflax_bf16": {"images_per_sec": 100.0},
            "cnnflax_fp32_xla_conv": {"images_per_sec": 160.0},
            "cnnflax_fp32_autodiff_bn": {"images_per_sec": 250.0}}
  row = side_by_side.summary_row("resnet20", result, ceiling=97.32)
  # 6 * 40,551,040 * 200 / 1e9 = 48.66 GFLOP/s, half the 97.32 ceiling.
  assert row == ("| resnet20 | torch_models.py | 400.0 | 500.0 | failed | - | "
                 "200.0 | 100.0 | 160.0 | 250.0 | - | 0.50x | 0.40x | - | - | "
                 "- | - | 48.7 (0.50) | 1.25x | 0.80x | - |")
  header = side_by_side.summary_header()
  assert header[0].count("|") == header[1].count("|") == row.count("|")
  assert "| cnnflax fp32 / PyTorch fp32 CL, tcmalloc |" in header[0]
  rows = side_by_side.detail_rows("resnet20", result, ceiling=97.32)
  assert len(rows) == 7
  assert "| 190.0, 200.0, 210.0 | 48.7 | 0.500 | compile 5.0 s |" in rows[3]


def test_twin_with_other_counts_is_flagged():
  result = {"count": {"params": 10, "flops": 100},
            "torch_fp32": {"images_per_sec": 1.0, "params": 10,
                           "forward_macs": 99}}
  warnings = side_by_side.twin_warnings({"m": result})
  assert len(warnings) == 1 and "forward_macs=99" in warnings[0]


def test_specs_name_their_registered_models():
  for name, spec in side_by_side.MODELS.items():
    config = side_by_side.load_config(spec.config)
    named = [o.split("=", 1)[1] for o in spec.overrides
             if o.startswith("--config.model.name=")]
    assert (named or [config.model.name])[0] == spec.registered, name


def test_per_flop_ratio_uses_each_networks_own_count():
  """AlexNet: cnnflax's variant has 1.6x the multiply-adds of torchvision's,
  so equal images/s is 1.6x the training FLOP/s."""
  result = {"count": {"flops": 1_600},
            "cnnflax_fp32": {"images_per_sec": 10.0},
            "torch_fp32": {"images_per_sec": 10.0, "forward_macs": 1_000}}
  assert side_by_side.per_flop(result, "cnnflax_fp32", "torch_fp32") == "1.60x"
  assert side_by_side.per_flop(result, "cnnflax_bf16", "torch_bf16") == "-"


def test_benchmark_times_one_compiled_step_several_times():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run(
      [sys.executable, "-m", "cnnflax.benchmark", "--config=configs/default.py",
       "--config.batch_size=16", "--steps=2", "--warmup=0", "--trials=3"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  line = json.loads(proc.stdout.strip().splitlines()[-1])
  trials = line["images_per_sec_trials"]
  assert len(trials) == 3 and all(t > 0 for t in trials)
  assert line["images_per_sec"] == round(statistics.median(trials), 1)
  assert set(line["step_ms"]) == {"median", "min", "max"}


def test_ablation_modes_turn_one_thing_off(monkeypatch):
  monkeypatch.setattr(side_by_side, "FLAGS", types.SimpleNamespace(
      steps=3, warmup=1, trials=1, torch_threads=0))
  plain = side_by_side.worker_command("resnet20", "cnnflax_fp32")
  for mode, setting in [
      ("cnnflax_fp32_xla_conv", "--config.backend.conv=xla"),
      ("cnnflax_fp32_autodiff_bn", "--config.backend.batch_norm=autodiff"),
      ("cnnflax_fp32_system_malloc", "--config.backend.allocator=system")]:
    command = side_by_side.worker_command("resnet20", mode)
    assert set(command) - set(plain) == {setting}, mode
    assert side_by_side.worker_env(mode) == dict(os.environ)
  assert not any("backend" in arg for arg in plain)


def test_torch_tcmalloc_mode_preloads_what_cnnflax_runs_with():
  from cnnflax.backend import allocator
  path = allocator.find_tcmalloc()
  if path is None:
    with pytest.raises(ValueError, match="no tcmalloc library was found"):
      side_by_side.worker_env("torch_fp32_tcmalloc")
  else:
    env = side_by_side.worker_env("torch_fp32_tcmalloc")
    assert env["LD_PRELOAD"].split()[0] == path


def test_torch_compile_runs_where_the_spec_asks_with_tcmalloc(monkeypatch):
  assert side_by_side.applies("densenet_bc100", "torch_compile_tcmalloc")
  assert not side_by_side.applies("resnet20", "torch_compile_tcmalloc")
  assert side_by_side.applies("resnet20", "torch_fp32")
  monkeypatch.setattr(side_by_side, "FLAGS", types.SimpleNamespace(
      steps=3, warmup=1, trials=1, torch_threads=0))
  command = side_by_side.worker_command("densenet_bc100",
                                        "torch_compile_tcmalloc")
  assert "--compile=True" in command and "--bf16=False" in command
  assert "--compile=False" in side_by_side.worker_command("densenet_bc100",
                                                         "torch_fp32")
  from cnnflax.backend import allocator
  if allocator.find_tcmalloc() is not None:
    env = side_by_side.worker_env("torch_compile_tcmalloc")
    assert env["LD_PRELOAD"].split()[0] == allocator.find_tcmalloc()


def test_rounds_merge_into_one_median_and_a_failed_round_fails_the_mode():
  first = {"images_per_sec": 10.0, "images_per_sec_trials": [9.0, 10.0, 11.0],
           "compile_s": 2.0}
  second = {"images_per_sec": 20.0, "images_per_sec_trials": [19.0, 20.0, 21.0],
            "compile_s": 3.0}
  merged = side_by_side.merge(side_by_side.merge(None, first), second)
  assert merged["images_per_sec_trials"] == [9.0, 10.0, 11.0, 19.0, 20.0, 21.0]
  assert merged["images_per_sec"] == 15.0 and merged["compile_s"] == 2.0
  failed = {"error": "exit 1: python ..."}
  assert side_by_side.merge(merged, failed) == failed
  assert side_by_side.merge(failed, second) == failed
