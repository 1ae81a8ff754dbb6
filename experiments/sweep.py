"""What every experiment script shares.

A sweep is a list of `Run`s: a config (`configs/resnet_cifar.py:56`) plus
overrides. `--budget` scales each run's schedule (steps or epochs, schedule
boundaries, warm-up, evaluation and checkpoint cadence) by a fraction. Runs
go one after another on this machine (`--mode=run`: a run whose workdir
holds results.json is skipped, an unfinished one resumes from its
checkpoint) or into a SLURM job array (`--mode=slurm`); `--mode=table`
collects what exists into a markdown table whose header names the budget,
the dataset and the command, so that a reduced run never passes for the
paper's setting.
"""
from __future__ import annotations

import ast
import dataclasses
import datetime
import importlib
import inspect
import json
import os
import shlex
import subprocess
import sys
from typing import Any, Sequence

import ml_collections
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "experiments", "results")
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


# The flags every sweep script takes.
flags.DEFINE_enum("mode", "table", ["run", "slurm", "table"],
                  "run: train here, one run after another; slurm: write a "
                  "job array; table: collect what exists.")
flags.DEFINE_string("root", None, "Folder of the sweep's runs.")
flags.DEFINE_float("budget", 1.0, "Fraction of the papers' schedules.")
flags.DEFINE_string("data_dir", "", "The dataset's local copy (else TFDS).")
flags.DEFINE_multi_string("set", [], "KEY=VALUE config override applied to "
                          "every run after the budget, e.g. "
                          "--set=eval_every_steps=500 (repeatable).")


@dataclasses.dataclass(frozen=True)
class Run:
  name: str  # the run's folder under the sweep's root
  config: str  # "configs/FILE.py" or "configs/FILE.py:ARG"
  overrides: dict = dataclasses.field(default_factory=dict)
  paper: float | str | None = None  # the paper's number for this row


def load_config(spec: str) -> ml_collections.ConfigDict:
  path, _, arg = spec.partition(":")
  module = importlib.import_module(
      "configs." + os.path.splitext(os.path.basename(path))[0])
  takes_arg = bool(inspect.signature(module.get_config).parameters)
  return module.get_config(arg or None) if takes_arg else module.get_config()


def set_field(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  *parents, leaf = key.split(".")
  for p in parents:
    config = config[p]
  config[leaf] = value


def scale_budget(config: ml_collections.ConfigDict, budget: float) -> None:
  """Every duration of the schedule times `budget` (fractions stay)."""
  if budget == 1.0:
    return
  steps = lambda n: max(1, int(round(n * budget)))
  if config.num_train_steps > 0:
    config.num_train_steps = steps(config.num_train_steps)
  else:
    config.num_epochs = config.num_epochs * budget
  s = config.schedule
  if s.boundaries_unit == "steps":
    s.boundaries = tuple(steps(b) for b in s.boundaries)
  elif s.boundaries_unit == "epochs":
    s.boundaries = tuple(float(b) * budget for b in s.boundaries)
  s.warmup_steps = int(round(s.warmup_steps * budget))
  s.warmup_epochs = s.warmup_epochs * budget
  s.decay_every_epochs = s.decay_every_epochs * budget
  if config.eval_every_steps > 0:
    config.eval_every_steps = steps(config.eval_every_steps)
  config.checkpoint_every_steps = steps(config.checkpoint_every_steps)


def final_config(run: Run, budget: float = 1.0,
                 extra: dict | None = None) -> ml_collections.ConfigDict:
  """The run's overrides, scaled by the budget, then `extra` (the sweep-wide
  data_dir and --set values, taken as given)."""
  config = load_config(run.config)
  for key, value in run.overrides.items():
    set_field(config, key, value)
  scale_budget(config, budget)
  for key, value in (extra or {}).items():
    set_field(config, key, value)
  return config


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def _flag_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def command(run: Run, root: str, budget: float = 1.0,
            extra: dict | None = None) -> list[str]:
  """main.py with the flags that turn run.config into the final config."""
  base = _flat(load_config(run.config).to_dict())
  final = _flat(final_config(run, budget, extra).to_dict())
  flags = [f"--config.{k}={_flag_value(v)}" for k, v in final.items()
           if base.get(k, object()) != v]
  return [sys.executable, "main.py", f"--config={run.config}",
          f"--workdir={os.path.join(root, run.name)}", *flags]


def results(root: str, run: Run) -> dict | None:
  path = os.path.join(root, run.name, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_jsonl(root: str, run: Run, name: str) -> list[dict]:
  return _jsonl(os.path.join(root, run.name, name))


def test_error(result: dict | None) -> float | None:
  """Top-1 test error in % of a results.json (None: not run yet)."""
  return None if result is None else 100 * (1 - result["test_top1_acc"])


def plot_curves(panels: dict[str, Sequence[Run]], root: str,
                path: str, x: str = "step") -> None:
  """One panel per group of runs: training error (thin) and test error
  (bold) against `x` ("step" or "epoch"), as the papers draw them."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4),
                           sharey=True, squeeze=False)
  for ax, (title, group) in zip(axes[0], panels.items()):
    for run in group:
      train = read_jsonl(root, run, "metrics.jsonl")
      test = read_jsonl(root, run, "eval.jsonl")
      line, = ax.plot([m[x] for m in train],
                      [100 * (1 - m["top1_acc"]) for m in train],
                      lw=0.8, label=run.name)
      ax.plot([m[x] for m in test],
              [100 * (1 - m["test_top1_acc"]) for m in test], lw=2,
              color=line.get_color())
    ax.set_title(title)
    ax.set_xlabel(x)
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel("error (%)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def run_outputs(workdir: str) -> dict:
  """Everything a finished run reports, minus wall-clock figures: what two
  runs of the same config must agree on."""
  metrics = _jsonl(os.path.join(workdir, "metrics.jsonl"))
  for m in metrics:
    m.pop("images_per_sec", None)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  results.pop("wall_s")
  return {"metrics": metrics,
          "eval": _jsonl(os.path.join(workdir, "eval.jsonl")),
          "results": results}


def run_locally(runs: Sequence[Run], root: str, budget: float,
                extra: dict | None = None) -> list[str]:
  """Runs what has no results.json yet; returns the names that failed."""
  failed = []
  for run in runs:
    if results(root, run) is not None:
      print(f"[skip] {run.name}: results.json exists")
      continue
    cmd = command(run, root, budget, extra)
    print(f"[run] {run.name}: {shlex.join(cmd)}", flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
      failed.append(run.name)
  return failed


def write_slurm(runs: Sequence[Run], root: str, budget: float,
                extra: dict | None = None) -> str:
  """A job array with one task per unfinished run; returns its path."""
  todo = [r for r in runs if results(root, r) is None]
  lines = ["#!/bin/bash", f"#SBATCH --array=0-{max(len(todo) - 1, 0)}",
           "#SBATCH --ntasks=1 --signal=TERM@120 --requeue",
           f"cd {shlex.quote(ROOT)}", "RUNS=("]
  lines += [f"  {shlex.quote(shlex.join(command(r, root, budget, extra)))}"
            for r in todo]
  lines += [")", 'eval "${RUNS[$SLURM_ARRAY_TASK_ID]}"', ""]
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, "sweep.sbatch")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def header(title: str, budget: float | None, dataset: str,
           argv: Sequence[str], note: str = "") -> str:
  """The lines that say how a table was made (budget None: no training)."""
  setting = ("none: nothing is trained" if budget is None else
             "the papers' full schedules" if budget == 1.0 else
             f"{budget:g} of the papers' schedules (NOT the paper's setting)")
  lines = [f"# {title}", "",
           f"- budget: {setting}",
           f"- dataset: {dataset}",
           f"- command: `{shlex.join(['python', *argv])}`",
           f"- made: {datetime.date.today().isoformat()}"]
  if note:
    lines.append(f"- note: {note}")
  return "\n".join(lines) + "\n\n"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
  def cell(v):
    if v is None:
      return "-"
    if isinstance(v, float):
      return f"{v:.2f}"
    return str(v)
  lines = ["| " + " | ".join(columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def result_path(name: str, directory: str = RESULTS) -> str:
  os.makedirs(directory, exist_ok=True)
  return os.path.join(directory, name)


def save(name: str, text: str, directory: str = RESULTS) -> str:
  path = result_path(name, directory)
  with open(path, "w") as f:
    f.write(text)
  return path


def parse_sets(items: Sequence[str]) -> dict:
  """["a.b=3", "c=relu"] -> {"a.b": 3, "c": "relu"}."""
  out = {}
  for item in items:
    key, sep, text = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--set={item!r}: write KEY=VALUE, e.g. "
                       "--set=eval_every_steps=500")
    try:
      out[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      out[key] = text
  return out


def sweep_extra() -> dict:
  """The overrides every run gets from the flags: --data_dir and --set."""
  f = flags.FLAGS
  # Absolute paths: the runs start in the repository root.
  extra = {"dataset.data_dir": os.path.abspath(f.data_dir)} if f.data_dir \
      else {}
  extra.update(parse_sets(f.set))
  return extra


def publish(name: str, text: str) -> str:
  """Prints a table and writes it to experiments/results/NAME.md."""
  print(text)
  path = save(f"{name}.md", text)
  print("written to", path)
  return path


def finish(runs: Sequence[Run], name: str, report, dataset: str = "cifar10",
           panels: dict | None = None, x: str = "step") -> None:
  """A sweep script's main once its runs are known: acts on --mode, then
  writes table NAME.md from report(root, budget, dataset, argv) and, with
  `panels` (title -> runs), the error curves NAME.png."""
  if not execute(runs):
    return
  f = flags.FLAGS
  publish(name, report(f.root, f.budget, f"{dataset} ({f.data_dir or 'TFDS'})",
                       sys.argv))
  if panels is not None:
    plot_curves(panels, f.root, result_path(f"{name}.png"), x)


def execute(runs: Sequence[Run]) -> bool:
  """Acts on --mode; returns whether the caller should write its table."""
  f = flags.FLAGS
  extra = sweep_extra()
  f.root = os.path.abspath(f.root)
  if f.mode == "run":
    failed = run_locally(runs, f.root, f.budget, extra)
    if failed:
      print("failed:", ", ".join(failed))
  elif f.mode == "slurm":
    print("sbatch", write_slurm(runs, f.root, f.budget, extra))
    return False
  return True
