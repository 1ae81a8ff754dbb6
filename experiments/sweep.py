"""What every experiment script shares.

A sweep is a list of `Run`s: a config (`configs/resnet_cifar.py:56`) plus
overrides. `--budget` scales each run's schedule (steps or epochs, schedule
boundaries, warm-up, evaluation and checkpoint cadence) by a fraction. Runs
go one after another on this machine, or `--parallel` at once on shares of
its cores (`--mode=run`: a run whose workdir holds results.json is skipped,
an unfinished one resumes from its checkpoint), or into a SLURM job array
(`--mode=slurm`, see write_slurm);
`--mode=table` collects what exists into a markdown table whose header names
the budget, the dataset and the command, so that a reduced run never passes
for the paper's setting.
"""
from __future__ import annotations

import ast
import dataclasses
import datetime
import importlib
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

import ml_collections
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "experiments", "results")
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from cnnflax import paths  # noqa: E402  (after the path above)


# The flags every sweep script takes.
flags.DEFINE_enum("mode", "table", ["run", "slurm", "table"],
                  "run: train here, one run after another (or "
                  "--parallel at once); slurm: write a "
                  "job array; table: collect what exists.")
flags.DEFINE_string("root", None, "Folder of the sweep's runs.")
flags.DEFINE_float("budget", 1.0, "Fraction of the papers' schedules.")
flags.DEFINE_string("data_dir", "", "The dataset's local copy (else TFDS).")
flags.DEFINE_integer("parallel", 1, "--mode=run: this many runs at once, "
                     "each pinned to its own share of the cores, each "
                     "writing ROOT/NAME.log.")
flags.DEFINE_multi_string("set", [], "KEY=VALUE config override applied to "
                          "every run after the budget, e.g. "
                          "--set=eval_every_steps=500 (repeatable).")
# What each task of a --mode=slurm job array asks the cluster for.
flags.DEFINE_string("slurm_partition", "", "Partition(s) of each task, e.g. "
                    "gpu or gpu,preempt (empty: the cluster's default).")
flags.DEFINE_string("slurm_account", "", "Account charged for the array.")
flags.DEFINE_string("slurm_time", "", "Time limit of each task: MINUTES, "
                    "HH:MM:SS or D-HH:MM:SS (empty: the partition's default). "
                    "A run that needs longer saves, requeues and resumes.")
flags.DEFINE_integer("slurm_nodes", 1, "Nodes per run, one task per node.")
flags.DEFINE_string("slurm_gpus", "", "GPUs per node: N or TYPE:N "
                    "(--gres=gpu:...; empty: none).")
flags.DEFINE_integer("slurm_cpus", 0, "CPUs per task (0: the cluster's "
                     "default).")
flags.DEFINE_string("slurm_mem", "", "Memory per node, e.g. 64G (empty: the "
                    "cluster's default).")
flags.DEFINE_integer("slurm_warning_s", 120, "SLURM sends SIGTERM this many "
                     "seconds before the time limit: time to save a "
                     "checkpoint and requeue.")
flags.DEFINE_integer("slurm_parallel", 0, "At most this many runs at once "
                     "(0: no limit).")
flags.DEFINE_multi_string("slurm_extra", [], "Another sbatch option for every "
                          "task, e.g. --slurm_extra=--qos=high (repeatable).")


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
          f"--workdir={run_dir(root, run)}", *flags]


def run_dir(root: str, run: Run) -> str:
  """The run's folder under the sweep's root (a local folder or a URL)."""
  return str(paths.path(root) / run.name)


def results(root: str, run: Run) -> dict | None:
  path = paths.path(run_dir(root, run)) / "results.json"
  return json.loads(path.read_text()) if path.exists() else None


def _jsonl(path) -> list[dict]:
  path = paths.path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines()
          if line.strip()]


def read_jsonl(root: str, run: Run, name: str) -> list[dict]:
  return _jsonl(paths.path(run_dir(root, run)) / name)


def wall_minutes(result: dict | None) -> float | None:
  """The run's training wall time (results.json's wall_s) in minutes."""
  return None if result is None else round(result["wall_s"] / 60, 1)


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
  folder = paths.path(workdir)
  metrics = _jsonl(folder / "metrics.jsonl")
  for m in metrics:
    m.pop("images_per_sec", None)
    m.pop("input_wait_s", None)
  results = json.loads((folder / "results.json").read_text())
  results.pop("wall_s")
  return {"metrics": metrics, "eval": _jsonl(folder / "eval.jsonl"),
          "results": results}


def newest_checkpoint(workdir: str) -> int | None:
  """The newest checkpoint step in a run's folder (None: none yet)."""
  folder = paths.path(workdir) / "checkpoints"
  steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if (
      folder.is_dir()) else []
  return max(steps, default=None)


def final_params(workdir: str) -> list:
  """The parameters of a run's newest checkpoint, as flat numpy arrays:
  what the drills compare between an interrupted run and its twin."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  path = (paths.path(workdir) / "checkpoints" /
          str(newest_checkpoint(workdir)) / "state")
  tree = ocp.StandardCheckpointer().restore(path)
  return [np.asarray(x) for x in jax.tree.leaves(tree["params"])]


def run_locally(runs: Sequence[Run], root: str, budget: float,
                extra: dict | None = None, parallel: int = 1) -> list[str]:
  """Runs what has no results.json yet; returns the names that failed.

  With `parallel` > 1, that many runs at once, each pinned to its own share
  of this process's cores, its output in a log file. On a small machine two
  runs of one core each can get through more images than one run of two
  (ResNet-56 in bf16 on 2 cores, measured: 2 x 183 against 262 img/s)."""
  waiting = []
  for run in runs:
    if results(root, run) is not None:
      print(f"[skip] {run.name}: results.json exists")
    else:
      waiting.append(run)
  shares = core_shares(parallel) if parallel > 1 else [None]
  failed, active = [], {}  # share index -> (process, run)
  try:
    while waiting or active:
      for slot in range(len(shares)):
        if slot not in active and waiting:
          run = waiting.pop(0)
          active[slot] = (start(run, root, budget, extra, shares[slot]), run)
      for slot, (process, run) in list(active.items()):
        if process.poll() is not None:
          del active[slot]
          if process.returncode != 0:
            failed.append(run.name)
      if active:
        time.sleep(0.5)
  finally:  # stopped: each run saves its checkpoint on SIGTERM and exits
    for process, _ in active.values():
      process.terminate()
      process.wait()
  return failed


def core_shares(n: int) -> list[set[int]]:
  """This process's cores cut into `n` contiguous shares, as even as may be."""
  cores = sorted(os.sched_getaffinity(0))
  if not 1 <= n <= len(cores):
    raise ValueError(f"--parallel={n} is not valid: this process may use "
                     f"{len(cores)} cores; give 1 to {len(cores)}")
  cut = [round(i * len(cores) / n) for i in range(n + 1)]
  return [set(cores[a:b]) for a, b in zip(cut, cut[1:])]


def start(run: Run, root: str, budget: float, extra: dict | None,
          cores: set[int] | None) -> subprocess.Popen:
  """Starts one run: in this terminal, or on `cores` with its output in
  a log file (the run's folder's name + .log, beside it on a local root)."""
  cmd = command(run, root, budget, extra)
  if cores is None:
    print(f"[run] {run.name}: {shlex.join(cmd)}", flush=True)
    return subprocess.Popen(cmd, cwd=ROOT)
  log = log_path(root, run)
  print(f"[run] {run.name} on cores {sorted(cores)}, log {log}: "
        f"{shlex.join(cmd)}", flush=True)
  with open(log, "ab") as out:  # the child keeps its own copy open
    return subprocess.Popen(cmd, cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT,
                            preexec_fn=lambda: os.sched_setaffinity(0, cores))


def log_path(root: str, run: Run) -> str:
  """Where a pinned run writes its output: beside its folder, or in the
  temporary folder when the root is a bucket."""
  folder = os.path.join(tempfile.gettempdir(), "cnnflax-sweep") \
      if paths.is_url(root) else root
  os.makedirs(folder, exist_ok=True)
  return os.path.join(folder, f"{run.name}.log")


@dataclasses.dataclass(frozen=True)
class Slurm:
  """What each task of a job array asks the cluster for (empty or 0: the
  cluster's default). One task is one run, one process per node."""
  partition: str = ""
  account: str = ""
  time: str = ""  # time limit: MINUTES, HH:MM:SS, D-HH:MM:SS, ...
  nodes: int = 1
  gpus: str = ""  # per node: "N" or "TYPE:N"
  cpus: int = 0  # per task
  mem: str = ""  # per node, e.g. "64G"
  warning_s: int = 120  # SIGTERM this long before the time limit
  parallel: int = 0  # at most this many tasks at once
  extra: tuple[str, ...] = ()  # further sbatch options, "--qos=high"


_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")

# sbatch options that write_slurm sets itself: the sweep flag to use instead.
_OWN_OPTIONS = {"--partition": "--slurm_partition",
                "--account": "--slurm_account", "--time": "--slurm_time",
                "--nodes": "--slurm_nodes", "--gres": "--slurm_gpus",
                "--gpus-per-node": "--slurm_gpus",
                "--cpus-per-task": "--slurm_cpus", "--mem": "--slurm_mem",
                "--signal": "--slurm_warning_s", "--array": "--slurm_parallel"}
_FIXED_OPTIONS = ("--ntasks-per-node", "--ntasks", "--requeue", "--no-requeue",
                  "--output", "--error", "--open-mode")


def time_limit_seconds(text: str) -> int | None:
  """A SLURM time limit in seconds (None: not a form SLURM reads)."""
  m = _TIME.fullmatch(text)
  if not m:
    return None
  days, *clock = m.groups()
  numbers = [int(v) for v in clock if v is not None]
  if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
    hours, minutes, seconds = numbers + [0] * (3 - len(numbers))
  elif len(numbers) == 3:  # HH:MM:SS
    hours, minutes, seconds = numbers
  else:  # MM, MM:SS
    hours, minutes, seconds = 0, numbers[0], (numbers + [0])[1]
  return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def _extra_problem(option: str) -> str | None:
  if not re.fullmatch(r"--[a-z][a-z-]*(=[^\n]+)?", option):
    return "write one long sbatch option, e.g. --slurm_extra=--qos=high"
  name = option.split("=")[0]
  if name in _OWN_OPTIONS:
    return f"use {_OWN_OPTIONS[name]} for {name}"
  if name in _FIXED_OPTIONS:
    return f"the sweep sets {name} itself"
  return None


# Each resource flag: whether SLURM takes its value, and how to write it.
_SLURM_CHECKS = (
    ("partition", lambda v: not v or re.fullmatch(r"[\w.-]+(,[\w.-]+)*", v),
     "write partition names separated by commas, e.g. --slurm_partition=gpu"),
    ("account", lambda v: not v or re.fullmatch(r"[\w.-]+", v),
     "write one account name, e.g. --slurm_account=mylab"),
    ("time", lambda v: not v or time_limit_seconds(v),
     "write MINUTES, HH:MM:SS or D-HH:MM:SS, e.g. --slurm_time=12:00:00"),
    ("nodes", lambda v: v >= 1,
     "a run needs at least one node, e.g. --slurm_nodes=1"),
    ("gpus", lambda v: not v or re.fullmatch(r"([\w.-]+:)?[1-9]\d*", v),
     "write GPUs per node as N or TYPE:N, e.g. --slurm_gpus=8 or "
     "--slurm_gpus=a100:8"),
    ("cpus", lambda v: v >= 0,
     "write CPUs per task, or 0 for the cluster's default"),
    ("mem", lambda v: not v or re.fullmatch(r"[1-9]\d*[KMGT]?", v),
     "write memory per node as a number with K, M, G or T, e.g. "
     "--slurm_mem=64G"),
    ("warning_s", lambda v: 1 <= v <= 65535,
     "SLURM takes 1 to 65535 seconds, e.g. --slurm_warning_s=120"),
    ("parallel", lambda v: v >= 0,
     "write how many runs may go at once, or 0 for no limit"),
)


def check_slurm(slurm: Slurm) -> None:
  """Raises ValueError naming the first flag SLURM would not take."""
  for field, ok, fix in _SLURM_CHECKS:
    value = getattr(slurm, field)
    if not ok(value):
      raise ValueError(f"--slurm_{field}={value}: {fix}")
  if slurm.time and time_limit_seconds(slurm.time) <= slurm.warning_s:
    raise ValueError(
        f"--slurm_warning_s={slurm.warning_s}: must be shorter than "
        f"--slurm_time={slurm.time}, else each run is told to stop at once")
  for option in slurm.extra:
    problem = _extra_problem(option)
    if problem:
      raise ValueError(f"--slurm_extra={option}: {problem}")


def slurm_from_flags() -> Slurm:
  f = flags.FLAGS
  return Slurm(f.slurm_partition, f.slurm_account, f.slurm_time,
               f.slurm_nodes, f.slurm_gpus, f.slurm_cpus, f.slurm_mem,
               f.slurm_warning_s, f.slurm_parallel, tuple(f.slurm_extra))


def sbatch_options(slurm: Slurm, root: str, tasks: int) -> list[str]:
  """The #SBATCH lines of the array."""
  throttle = f"%{slurm.parallel}" if slurm.parallel else ""
  asked = {"--partition": slurm.partition, "--account": slurm.account,
           "--time": slurm.time, "--gres": slurm.gpus and f"gpu:{slurm.gpus}",
           "--cpus-per-task": slurm.cpus or "", "--mem": slurm.mem}
  options = [f"--job-name={os.path.basename(root) or 'sweep'}",
             f"--array=0-{tasks - 1}{throttle}",
             f"--nodes={slurm.nodes}", "--ntasks-per-node=1",
             *[f"{k}={v}" for k, v in asked.items() if v],
             # SIGTERM to the job steps (main.py), not to the batch shell.
             f"--signal=TERM@{slurm.warning_s}",
             "--requeue",  # the cluster may requeue it (preemption)
             "--open-mode=append",  # one log across requeues
             f"--output={os.path.join(root, 'slurm-%A_%a.out')}",
             *slurm.extra]
  return [f"#SBATCH {shlex.quote(o)}" for o in options]


def task_cases(todo: Sequence[Run], root: str, budget: float,
               extra: dict | None) -> list[str]:
  """A `case` arm per array index: the run's name, workdir and command."""
  lines = ['case "$SLURM_ARRAY_TASK_ID" in']
  for i, run in enumerate(todo):
    cmd = shlex.join(command(run, root, budget, extra))
    lines += [f"  {i}) name={shlex.quote(run.name)}",
              f"     workdir={shlex.quote(run_dir(root, run))}",
              f"     run=({cmd}) ;;"]
  lines += ['  *) echo "no run for array index ${SLURM_ARRAY_TASK_ID:-}: '
            'submit this file with sbatch" >&2; exit 2 ;;', "esac"]
  return lines


# What every task does with its run. main.py saves a checkpoint and exits
# 143 on SIGTERM; the same command on the same workdir resumes it exactly.
TASK = r"""
task="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
say() { echo "[sweep $(date '+%F %T')] task $task, run $name: $*"; }
if [ -e "$workdir/results.json" ]; then
  say "results.json exists: nothing to do"
  exit 0
fi
say "start $((${SLURM_RESTART_COUNT:-0} + 1)) on $(hostname)"

# SIGTERM to this shell (scancel --full, the job's end) must not end it: bash
# runs the trap once srun returns, and the shell lives to see how the run
# ended.
signalled=0
trap 'signalled=1' TERM
# A job step: SLURM's --signal and a preemption's SIGTERM go to job steps.
srun "${srun_options[@]}" "${run[@]}"
rc=$?

if [ -e "$workdir/results.json" ]; then
  say "finished"
  exit 0
fi
# Cancelled, timed out or requeued by SLURM itself: leave it to SLURM.
state=$(scontrol show job "$task" 2>/dev/null | grep -o 'JobState=[A-Z_]*')
if [ "$state" != "JobState=RUNNING" ]; then
  say "exit $rc while SLURM ends the task (${state:-JobState unknown})"
  exit "$rc"
fi
# 143: main.py saved and stopped on SIGTERM. A signalled shell: the SIGTERM
# reached srun too (scancel --full), which kills the run at once; it resumes
# from its last periodic checkpoint.
if [ "$rc" -eq 143 ] || [ "$signalled" -eq 1 ]; then
  say "exit $rc after SIGTERM: requeued, resumes from its last checkpoint"
  scontrol requeue "$task" && exit 0
  say "scontrol requeue failed: resubmit this array to resume the run"
  exit "$rc"
fi
say "failed with exit $rc"
exit $((rc == 0 ? 1 : rc))
"""


def write_slurm(runs: Sequence[Run], root: str, budget: float,
                extra: dict | None = None,
                slurm: Slurm = Slurm()) -> str | None:
  """A job array with one task per unfinished run; returns its path (None:
  every run has results.json).

  Each run is a job step (srun), so that SLURM's SIGTERM reaches main.py:
  `--signal=TERM@warning_s` before the time limit, and a preemption's. It
  saves and exits 143; the task then requeues itself and the same command
  resumes from the workdir. A task the cluster requeues resumes the same way.
  SLURM keeps the submitted script, so an index means the same run across
  requeues however often this file is rewritten.
  """
  check_slurm(slurm)
  if paths.is_url(root):  # SLURM writes the tasks' logs into the root
    raise ValueError(
        f"--root={root}: --mode=slurm writes its script and SLURM's logs "
        "into the root, which must be a folder every node sees; use a "
        "shared folder (runs of main.py itself may write to a bucket)")
  todo = [r for r in runs if results(root, r) is None]
  if not todo:
    return None
  srun = f"--cpus-per-task={slurm.cpus}" if slurm.cpus else ""
  lines = ["#!/bin/bash", *sbatch_options(slurm, root, len(todo)),
           f"# Written by experiments/sweep.py --mode=slurm on "
           f"{datetime.date.today().isoformat()}: one task per run without "
           "results.json.",
           f"cd {shlex.quote(ROOT)}", "export PYTHONUNBUFFERED=1",
           # Not every SLURM passes --cpus-per-task on to steps: say it.
           f"srun_options=({srun})",
           *task_cases(todo, root, budget, extra), TASK]
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
  sets = [a.split("=", 1)[1] for a in argv if a.startswith("--set=")]
  if sets:
    lines.append(f"- set on every run: {', '.join(sets)}" + (
        " (half_precision: bfloat16 compute, float32 parameters)"
        if "half_precision=True" in sets else ""))
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
  extra = {"dataset.data_dir": str(paths.path(f.data_dir))} if f.data_dir \
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
  f.root = str(paths.path(f.root))  # absolute, or a bucket URL
  if f.mode == "run":
    try:
      failed = run_locally(runs, f.root, f.budget, extra, f.parallel)
    except ValueError as e:
      sys.exit(f"error: {e}")
    if failed:
      print("failed:", ", ".join(failed))
  elif f.mode == "slurm":
    try:
      path = write_slurm(runs, f.root, f.budget, extra, slurm_from_flags())
    except ValueError as e:
      sys.exit(f"error: {e}")
    if path:
      print(f"sbatch {path}\nlogs: {f.root}/slurm-JOBID_INDEX.out")
    else:
      print("nothing to submit: every run has results.json")
    return False
  return True
