"""How long a checkpoint save holds the training loop up: waiting for each
write (checkpoint_async=False) against writing in the background (the
default), on a real model's train state.

  python benchmarks/checkpoint_save.py --config=configs/vgg.py:D \
      --config.batch_size=4 --steps_after=3 --rounds=3 --dir=/tmp/ckpt_bench

After one untimed save in each mode, each round saves the state once in
each mode, the modes alternating (a noisy machine's slow spells fall on
both). `stall_s` is the time the loop is
blocked in `save` (fetching the state to the host included); with --steps_after=N,
N train steps then run while a background write goes on, and `round_s` is
the time until both the steps and the write are done. One JSON line per
save, then a summary line with the medians. --dir may be a bucket URL.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":  # before jax loads: nothing before it survives
  from cnnflax import backend
  backend.start()

import jax
from absl import app, flags

from cnnflax import checkpoint, data, paths
from cnnflax import run as run_lib
from cnnflax.benchmark import synthetic_like

FLAGS = flags.FLAGS  # --config comes with cnnflax.benchmark
flags.DEFINE_string("dir", "/tmp/cnnflax_ckpt_bench", "Where to save.")
flags.DEFINE_integer("rounds", 3, "Saves per mode.")
flags.DEFINE_integer("steps_after", 0, "Train steps run after each save.")

MODES = {"waiting": False, "background": True}


def state_bytes(tree) -> int:
  return int(sum(x.nbytes for x in jax.tree.leaves(tree)))


def one_save(run, state, train_fn, arrays, batch, folder, background: bool,
             steps: int) -> tuple[dict, object]:
  ckpts = checkpoint.Checkpoints(folder, 1, {}, background=background)
  start = time.perf_counter()
  ckpts.save(1, run.devices.fetch(state))
  stall = time.perf_counter() - start
  for _ in range(steps):
    state, metrics = train_fn(state, arrays, batch)
  if steps:
    jax.block_until_ready(metrics)
  ckpts.close()
  return {"stall_s": round(stall, 3),
          "round_s": round(time.perf_counter() - start, 3)}, state


def main(argv):
  del argv
  config = FLAGS.config
  run = run_lib.Run(synthetic_like(config), workdir="")
  state = run.devices.replicate(run.init_state())
  arrays = run.devices.replicate(
      data.device_arrays(run.dataset, run.config.dataset, True))
  batch = run.devices.shard(run.train_batch(0))
  train_fn = run.train_fn()
  if FLAGS.steps_after:
    state, metrics = train_fn(state, arrays, batch)  # compile, untimed
    jax.block_until_ready(metrics)
  size = state_bytes(run.devices.fetch(state))
  root = paths.path(FLAGS.dir)
  # An untimed save of each mode first: orbax and tensorstore start up.
  for mode, background in MODES.items():
    _, state = one_save(run, state, train_fn, arrays, batch,
                        root / f"{mode}_warmup", background, 0)
    (root / f"{mode}_warmup").rmtree(missing_ok=True)
  seen = {mode: [] for mode in MODES}
  for round_index in range(FLAGS.rounds):
    for mode, background in MODES.items():
      folder = root / f"{mode}_{round_index}"
      record, state = one_save(run, state, train_fn, arrays, batch, folder,
                               background, FLAGS.steps_after)
      seen[mode].append(record)
      print(json.dumps({"mode": mode, "round": round_index, **record}),
            flush=True)
      folder.rmtree(missing_ok=True)
  summary = {"model": config.model.name, "state_bytes": size,
             "steps_after_save": FLAGS.steps_after, "dir": str(root),
             "batch_size": config.batch_size}
  for mode, records in seen.items():
    for key in ("stall_s", "round_s"):
      summary[f"{mode}_{key}"] = statistics.median(r[key] for r in records)
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  sys.exit(app.run(main))
