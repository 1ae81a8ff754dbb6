"""Preemption drill: kill a run at random moments, resume it, compare.

Runs one config uninterrupted, then runs it again while sending SIGKILL or
SIGTERM (mixed, seeded) at `--kills` random moments, rerunning the same
command after each; at the end the interrupted run's metrics, evaluations,
results and final parameters must equal the uninterrupted run's.

  python experiments/kill_and_resume.py --workdir=/tmp/cnnflax/drill

Prints one line per kill (signal, exit code, newest checkpoint before and
after, steps lost) and the comparison. Exits non-zero if they differ.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from absl import app, flags

import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

flags.DEFINE_string("workdir", None, "Scratch folder (emptied first).")
flags.DEFINE_integer("kills", 10, "How many times to interrupt the run.")
flags.DEFINE_integer("seed", 0, "Seed of the kill times and signals.")
flags.DEFINE_integer("steps", 400, "Training steps of the drilled run.")
flags.DEFINE_float("max_wait", 6.0, "Longest time (s) from the run's first "
                   "new log record to its kill.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def command(workdir: str) -> list[str]:
  return [sys.executable, "main.py", "--config=configs/default.py",
          f"--workdir={workdir}", f"--config.num_train_steps={FLAGS.steps}",
          "--config.log_every_steps=10", "--config.eval_every_steps=100",
          "--config.checkpoint_every_steps=25"]


def logged_step(workdir: str) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  last = 0
  with open(path) as f:
    for line in f:
      try:
        last = json.loads(line)["step"]
      except ValueError:
        pass
  return last


def interrupted_run(workdir: str, rng: random.Random) -> list[dict]:
  kills = []
  while len(kills) < FLAGS.kills:
    before = sweep.newest_checkpoint(workdir)
    proc = subprocess.Popen(command(workdir), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait = rng.uniform(0.0, FLAGS.max_wait)
    sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
    # Kill while it trains: once it logs past where the last attempt got.
    progress = logged_step(workdir)
    while logged_step(workdir) <= progress and proc.poll() is None:
      time.sleep(0.05)
    try:
      proc.wait(timeout=wait)
      raise SystemExit("the run finished before it could be killed; use "
                       "more --steps or a smaller --max_wait")
    except subprocess.TimeoutExpired:
      pass
    reached = logged_step(workdir)
    proc.send_signal(sig)
    _, err = proc.communicate()
    after = sweep.newest_checkpoint(workdir)
    kills.append({"signal": sig.name, "after_s": round(wait, 1),
                  "exit": proc.returncode, "logged_step": reached,
                  "checkpoint_before": before, "checkpoint_after": after,
                  "said": [l for l in err.decode().splitlines()
                           if l.startswith(("stopped:", "error:"))]})
  subprocess.run(command(workdir), cwd=ROOT, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return kills


def main(argv):
  del argv
  import numpy as np
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # no orbax chatter
  shutil.rmtree(FLAGS.workdir, ignore_errors=True)
  whole = os.path.join(FLAGS.workdir, "whole")
  cut = os.path.join(FLAGS.workdir, "cut")
  start = time.time()
  subprocess.run(command(whole), cwd=ROOT, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  print(f"uninterrupted run: {time.time() - start:.0f} s")
  kills = interrupted_run(cut, random.Random(FLAGS.seed))
  print("kill signal   after_s exit logged ckpt_before ckpt_after lost")
  for i, k in enumerate(kills, 1):
    lost = k["logged_step"] - (k["checkpoint_after"] or 0)
    print(f"{i:>4} {k['signal']:<8} {k['after_s']:>6} {k['exit']:>5} "
          f"{k['logged_step']:>6} {str(k['checkpoint_before']):>11} "
          f"{str(k['checkpoint_after']):>10} {max(lost, 0):>4}  "
          f"{' '.join(k['said'])[:100]}")
  same_logs = sweep.run_outputs(whole) == sweep.run_outputs(cut)
  same_params = all(np.array_equal(a, b) for a, b in
                    zip(sweep.final_params(whole), sweep.final_params(cut),
                        strict=True))
  print(f"metrics, evaluations and results identical: {same_logs}")
  print(f"final parameters bitwise identical: {same_params}")
  if not (same_logs and same_params):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
