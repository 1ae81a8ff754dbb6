"""experiments/: budgets, commands, local and SLURM execution, tables."""
import json
import os
import sys

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


def test_header_says_when_a_table_is_not_the_papers_setting():
  text = sweep.header("T", 0.1, "cifar10", ["experiments/x.py", "--budget=0.1"])
  assert "0.1 of the papers' schedules (NOT the paper's setting)" in text
  assert "`python experiments/x.py --budget=0.1`" in text


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
  plain, res = (float(v) for v in row.split(" | ")[1:3])
  assert 0 <= plain <= 100 and 0 <= res <= 100
  png = str(tmp_path / "fig6.png")
  t1.plot(runs, root, png)
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
