"""experiments/: budgets, commands, local and SLURM execution, tables."""
import json
import os
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import sweep  # noqa: E402
import table8_params  # noqa: E402


def test_budget_scales_every_duration():
  config = sweep.final_config(sweep.Run("r", "configs/resnet_cifar.py:110"),
                              budget=0.01)
  assert config.num_train_steps == 640
  assert config.schedule.boundaries == (320, 480)
  assert config.schedule.warmup_steps == 4
  assert config.eval_every_steps == 20
  epochs = sweep.final_config(sweep.Run("v", "configs/vgg_cifar.py"), 0.5)
  assert epochs.num_epochs == 80 and epochs.schedule.boundaries == (40, 60)


def test_command_carries_overrides_and_budget(tmp_path):
  run = sweep.Run("plain56", "configs/resnet_cifar.py:56",
                  {"model.plain": True})
  cmd = sweep.command(run, str(tmp_path), budget=0.5)
  assert cmd[1:4] == ["main.py", "--config=configs/resnet_cifar.py:56",
                      f"--workdir={tmp_path}/plain56"]
  assert "--config.model.plain=True" in cmd
  assert "--config.num_train_steps=32000" in cmd
  assert "--config.schedule.boundaries=(16000,24000)" in cmd
  assert not any("learning_rate" in c for c in cmd)  # unchanged fields


TINY = {"model.name": "lenet5_modern", "dataset.name": "synthetic",
        "dataset.synthetic_channels": 1, "dataset.synthetic_train_size": 64,
        "dataset.synthetic_test_size": 32, "batch_size": 16,
        "eval_batch_size": 16, "num_train_steps": 4, "log_every_steps": 2,
        "checkpoint_every_steps": 2, "schedule.boundaries": (1, 3),
        "schedule.name": "piecewise", "schedule.boundaries_unit": "steps"}


def test_runs_locally_skips_finished_runs_and_writes_slurm(tmp_path, capsys):
  runs = [sweep.Run("a", "configs/default.py", TINY, paper=1.0)]
  root = str(tmp_path)
  assert sweep.run_locally(runs, root, budget=1.0) == []
  result = sweep.results(root, runs[0])
  assert result["steps"] == 4
  with open(os.path.join(root, "a", "config.json")) as f:
    assert json.load(f)["schedule"]["boundaries"] == [1, 3]
  assert sweep.run_locally(runs, root, budget=1.0) == []
  assert "[skip] a" in capsys.readouterr().out
  # Only unfinished runs go into the job array.
  more = runs + [sweep.Run("b", "configs/default.py", TINY)]
  with open(sweep.write_slurm(more, root, budget=1.0)) as f:
    script = f.read()
  assert "#SBATCH --array=0-0" in script and "--workdir=" + root + "/b" in script
  assert root + "/a " not in script


def test_parallel_runs_share_the_cores_and_report_failures(tmp_path):
  runs = [sweep.Run(n, "configs/default.py", TINY) for n in ("a", "b")]
  runs.append(sweep.Run("bad", "configs/default.py", {**TINY,
                                                      "batch_size": -1}))
  root = str(tmp_path)
  assert sweep.run_locally(runs, root, budget=1.0, parallel=2) == ["bad"]
  for run in runs[:2]:
    assert sweep.results(root, run)["steps"] == 4
    with open(os.path.join(root, run.name, "config.json")) as f:
      assert json.load(f)["backend"]["cpu_cores"] == 1
  with open(os.path.join(root, "bad.log")) as f:
    assert "config.batch_size=-1 is not valid" in f.read()


def test_core_shares_are_contiguous_and_even(monkeypatch):
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 5})
  assert sweep.core_shares(2) == [{0, 1}, {2, 3, 5}]
  assert sweep.core_shares(5) == [{0}, {1}, {2}, {3}, {5}]
  with pytest.raises(ValueError, match="--parallel=6 is not valid"):
    sweep.core_shares(6)


def test_header_says_when_a_table_is_not_the_papers_setting():
  text = sweep.header("T", 0.1, "cifar10", ["experiments/x.py", "--budget=0.1",
                                            "--set=half_precision=True"])
  assert ("- set on every run: half_precision=True (half_precision: "
          "bfloat16 compute") in text
  assert "0.1 of the papers' schedules (NOT the paper's setting)" in text
  assert ("`python experiments/x.py --budget=0.1 --set=half_precision=True`"
          in text)


def test_table8_puts_our_counts_beside_the_references():
  text = table8_params.build(["lenet5", "mobilenet_v2"], ["t8.py"])
  lines = {l.split(" | ")[0].strip("| "): l for l in text.splitlines()
           if l.startswith("| ")}
  assert "| 60,850 | 60,850 | 0.06M | +1.42 |" in lines["lenet5"]
  assert "| 3,504,872 | 3,504,872 | - | - | 300.8M | 300.0M | +0.26 |" in (
      lines["mobilenet_v2"])
  assert "- budget: none: nothing is trained" in text


def test_table1_collects_and_plots_tiny_runs(tmp_path):
  import table1_resnet_cifar as t1
  tiny = {k: v for k, v in TINY.items() if not k.startswith("model.")}
  tiny.update({"dataset.synthetic_channels": 3, "eval_every_steps": 2})
  runs = t1.runs(["8"])
  root = str(tmp_path / "runs")
  assert sweep.run_locally(runs, root, budget=1.0, extra=tiny) == []
  text = t1.report(runs, root, 1.0, "synthetic", ["t1.py"])
  row = [l for l in text.splitlines() if l.startswith("| 8 |")][0]
  plain, res, _, plain_min, res_min = row.strip(" |").split(" | ")[1:]
  assert 0 <= float(plain) <= 100 and 0 <= float(res) <= 100
  assert 0 <= float(plain_min) < 5 and 0 <= float(res_min) < 5
  png = str(tmp_path / "fig6.png")
  sweep.plot_curves(t1.panels(runs), root, png)
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# --- scripts 2-7 on tiny synthetic runs -----------------------------------

SMALL = {**{k: v for k, v in TINY.items() if not k.startswith("model.")},
         "dataset.synthetic_channels": 3, "dataset.image_size": 8,
         "eval_every_steps": 2, "schedule.warmup_steps": 0}


@pytest.fixture(autouse=True)
def one_device(monkeypatch):
  """Runs in subprocesses on one CPU device: compiling for the 8 fake
  devices of the other tests only costs time here."""
  monkeypatch.setenv("XLA_FLAGS", "")


def train_some(all_runs, names, root):
  """Trains the named runs of a sweep (the others stay missing: '-')."""
  chosen = [r for r in all_runs if r.name in names]
  assert len(chosen) == len(names)
  assert sweep.run_locally(chosen, root, budget=1.0, extra=SMALL) == []


def table_rows(text):
  return {l.split(" | ")[0].strip("| "): l.split(" | ")[1:]
          for l in text.splitlines() if l.startswith("| ")}


def assert_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_table2_shortcut_options(tmp_path):
  import table2_shortcut_options as t2
  all_runs = t2.runs(8)
  root = str(tmp_path)
  train_some(all_runs, ["option_C"], root)
  rows = table_rows(t2.report(all_runs, root, 1.0, "synthetic", ["t2.py"]))
  assert 0 <= float(rows["option_C"][0]) <= 100
  assert rows["option_A"][:2] == ["-", "-"] and rows["option_A"][2] == "25.03 |"
  # C projects every shortcut: more parameters than ResNet-8's 78,042.
  assert int(rows["option_C"][1]) > 78_042
  sweep.plot_curves({"t2": all_runs}, root, str(tmp_path / "t2.png"))
  assert_png(tmp_path / "t2.png")


def test_table3_shortcut_variants(tmp_path):
  import table3_shortcut_variants as t3
  all_runs = t3.runs(8)
  assert {r.name: r.paper for r in all_runs}["shortcut_gating_b-6"] == 6.91
  root = str(tmp_path)
  train_some(all_runs, ["exclusive_gating_b-6"], root)
  text = t3.report(all_runs, root, 1.0, "synthetic", ["t3.py"])
  rows = table_rows(text)
  assert rows["dropout"] == ["dropout 0.5", "1", "-", "fail |"]
  assert 0 <= float(rows["exclusive_gating_b-6"][2]) <= 100
  with open(os.path.join(root, "exclusive_gating_b-6", "config.json")) as f:
    model = json.load(f)["model"]
  assert (model["shortcut_variant"], model["gate_bias_init"]) == (
      "exclusive_gating", -6.0)


def test_table4_activation_placement(tmp_path):
  import table4_activation_placement as t4
  all_runs = t4.runs(["8", "11"])
  root = str(tmp_path)
  train_some(all_runs, ["full_preact_11"], root)
  text = t4.report(all_runs, root, 1.0, "synthetic", ["t4.py"])
  assert "ResNet-8 (ours) | ResNet-8 (paper) | ResNet-11 (ours)" in text
  rows = table_rows(text)
  assert rows["bn_after_add"][1] == "-"
  assert 0 <= float(rows["full_preact"][3]) <= 100
  assert t4.runs(["110"])[-1].paper == 6.37


def test_table5_stochastic_depth(tmp_path):
  import table5_stochastic_depth as t5
  all_runs = t5.runs(8)
  root = str(tmp_path)
  train_some(all_runs, ["constant_depth", "stochastic_depth"], root)
  rows = table_rows(t5.report(all_runs, root, 1.0, "synthetic", ["t5.py"]))
  assert float(rows["constant_depth"][3]) == 1.0  # its own time
  assert float(rows["stochastic_depth"][3]) > 0
  with open(os.path.join(root, "stochastic_depth", "config.json")) as f:
    assert json.load(f)["model"]["survival_prob_last"] == 0.5
  png = str(tmp_path / "t5.png")
  sweep.plot_curves({"t5": all_runs}, root, png, x="epoch")
  assert_png(png)


def test_table7_densenet_rows_and_columns(tmp_path):
  import table7_densenet_cifar as t7
  all_runs = t7.runs(["bc,10,4", "bc,100,12"], ["C10", "C10+"])
  assert [r.config for r in all_runs][:2] == [
      "configs/densenet_cifar.py:bc,10,4,noaug",
      "configs/densenet_cifar.py:bc,10,4"]
  assert all_runs[3].paper == 4.51
  root = str(tmp_path)
  train_some(all_runs, ["bc_10_4_C10+"], root)
  text = t7.report(all_runs, root, 1.0, "synthetic", ["t7.py"],
                   ["bc,10,4", "bc,100,12"], ["C10", "C10+"])
  rows = table_rows(text)
  assert rows["bc,10,4"][0] == "-" and 0 <= float(rows["bc,10,4"][2]) <= 100
  assert rows["bc,100,12"][1:4] == ["5.92", "-", "4.51 |"]


def test_table6_lesion_study_on_tiny_trained_nets(tmp_path):
  import table1_resnet_cifar as t1
  import table6_lesion as t6
  all_runs = t1.runs(["14"])
  root = str(tmp_path / "runs")
  train_some(all_runs, ["plain14", "resnet14"], root)
  studies = {}
  for run in all_runs:
    studies[run.name[:-2]] = t6.lesion_results(
        run, root, 1.0, SMALL, eval_images=20, samples=2, seed=0)
  res, plain = studies["resnet"], studies["plain"]
  # 6 blocks: plain nets cannot delete the two that change the shape.
  assert len(res["single"]) == 6 and None not in res["single"]
  assert [e is None for e in plain["single"]] == [False, False, True, False,
                                                  True, False]
  assert [r["deleted"] for r in res["random"]] == [1, 2, 3]
  assert all(-1 <= r["tau"] <= 1 for r in res["reorder"])
  # Cached: a second call reads lesion.json back.
  again = t6.lesion_results(all_runs[1], root, 1.0, SMALL, 20, 2, 0)
  assert again == json.loads(json.dumps(res))
  text = t6.report(studies, 1.0, "synthetic", ["t6.py"])
  assert "first 20 test images" in text and "## (c)" in text
  t6.plot(studies, str(tmp_path / "t6.png"))
  assert_png(tmp_path / "t6.png")


def test_lesion_helpers():
  import table6_lesion as t6
  import numpy as np
  from cnnflax import models
  assert t6.kendall_tau([0, 1, 2, 3]) == 1.0
  assert t6.kendall_tau([3, 2, 1, 0]) == -1.0
  model = models.get_model("resnet20_cifar")
  shapes = model.block_shapes()
  order = t6.random_order(model, 5, np.random.default_rng(0))
  assert sorted(order) == list(range(9)) and order != list(range(9))
  assert all(shapes[b] == shapes[p] for p, b in enumerate(order))
  assert t6.deletable(models.get_model("plain20_cifar")) == [0, 1, 2, 4, 5,
                                                            7, 8]
