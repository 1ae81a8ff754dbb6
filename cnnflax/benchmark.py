"""Times the real train step on synthetic data of a config's shape, or,
with --input, the input pipeline alone.

  python -m cnnflax.benchmark --config=configs/default.py --steps=50
  python -m cnnflax.benchmark --config=configs/resnet50.py --input --workers=2

Prints one JSON line: images_per_sec (steps run back to back, one sync at the
end; with --trials=N the median of N such runs of the one compiled step, all
N in images_per_sec_trials), step_ms median/min/max (each step synced),
compile_s (XLA compilation of the train step), trace_s (tracing and
lowering it), init_s (jitted initialisation, compile included), devices,
batch_size, allocator (the process's malloc: see cnnflax/backend/allocator.py), peak
memory where the backend reports it, and `memory`: XLA's account of the
compiled step's buffers in bytes (temp: activations and other scratch;
argument, output, alias: state and batch in, state out, and what is updated
in place), known from compilation alone.

--input times the training input of a streamed dataset (decoding, the
random-resized crop, batching, the trip from the worker processes) without
any model, and prints input_images_per_sec (batches after the first from
every worker, so worker start-up is left out), workers, per_worker, and
startup_s. Without --config.dataset.data_dir it reads a generated
ImageNet-like dataset (cnnflax.data.imagenet_like: about 500x375 px and
110 KB JPEGs) written to a temporary folder.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time

if __name__ == "__main__":  # before jax loads: nothing before it survives
  from cnnflax import backend
  backend.start()

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from cnnflax import cli, data
from cnnflax.memory import compiled_memory, peak_memory
from cnnflax import run as run_lib
from cnnflax.backend import allocator
from cnnflax.data import imagenet_like
from cnnflax.errors import ConfigError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file.", lock_config=False,
    accept_new_attributes=True)
flags.DEFINE_integer("steps", 20, "Timed steps after compilation; 0 times "
                     "only compilation and initialisation and runs no step "
                     "(for `memory` of a step too big to run here).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_integer("trials", 1, "Back-to-back runs of --steps steps; "
                     "images_per_sec is their median.")
flags.DEFINE_bool("input", False, "Time the input pipeline alone.")
flags.DEFINE_integer("workers", -1, "--input: grain worker processes (0: "
                     "in this process); -1: config.dataset.workers.")
flags.DEFINE_integer("input_batches", 0, "--input: timed batches; 0: 8 per "
                     "worker (at least 8).")
flags.DEFINE_integer("input_images", 512, "--input: images generated when "
                     "no data_dir is given.")


def synthetic_like(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same run on random data of the dataset's shape and class count."""
  config = ml_collections.ConfigDict(config.to_dict())
  shape = data.image_shape(config.dataset)
  classes = data.num_classes(config.dataset)
  config.dataset.name = "synthetic"
  config.dataset.synthetic_channels = shape[-1]
  config.dataset.synthetic_num_classes = classes
  config.dataset.synthetic_train_size = config.batch_size * 2
  config.dataset.synthetic_test_size = config.eval_batch_size
  return config


def benchmark(config: ml_collections.ConfigDict, steps: int,
              warmup: int = 2, trials: int = 1) -> dict:
  """`trials` times the compiled step that many times over: compiling once
  and taking the median keeps a noisy machine's outliers out cheaply."""
  if trials < 1:
    raise ValueError(f"trials={trials} is not valid; choose 1 or more")
  run = run_lib.Run(synthetic_like(config), workdir="")
  start = time.perf_counter()
  state = jax.block_until_ready(run.init_state())
  init_s = time.perf_counter() - start
  state = run.devices.replicate(state)
  arrays = run.devices.replicate(
      data.device_arrays(run.dataset, run.config.dataset, True))
  batches = [run.devices.shard(run.train_batch(s)) for s in range(2)]
  start = time.perf_counter()
  lowered = run.train_fn().lower(state, arrays, batches[0])
  trace_s = time.perf_counter() - start
  train_fn = lowered.compile()
  compile_s = time.perf_counter() - start - trace_s
  result = {"model": config.model.name, "compile_s": round(compile_s, 2),
            "trace_s": round(trace_s, 2), "init_s": round(init_s, 2),
            "devices": run.devices.count, "backend": run.backend.record(),
            "batch_size": config.batch_size,
            "half_precision": config.half_precision,
            "allocator": allocator.describe(),
            "memory": compiled_memory(train_fn)}
  if steps <= 0:  # compile and initialisation only
    return {**result, **peak_memory()}
  start = time.perf_counter()
  state, metrics = train_fn(state, arrays, batches[0])
  jax.block_until_ready(metrics)
  result["first_step_s"] = round(time.perf_counter() - start, 2)
  for i in range(warmup):
    state, metrics = train_fn(state, arrays, batches[i % 2])
  jax.block_until_ready(metrics)

  times = []
  for i in range(steps):
    t = time.perf_counter()
    state, metrics = train_fn(state, arrays, batches[i % 2])
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  rates = []
  for _ in range(trials):
    state, seconds = back_to_back(train_fn, state, arrays, batches, steps)
    rates.append(round(steps * config.batch_size / seconds, 1))
  return {**result,
          "images_per_sec": round(statistics.median(rates), 1),
          "images_per_sec_trials": rates,
          "step_ms": {"median": round(statistics.median(times) * 1e3, 2),
                      "min": round(min(times) * 1e3, 2),
                      "max": round(max(times) * 1e3, 2)},
          **peak_memory()}


def back_to_back(train_fn, state, arrays, batches, steps: int):
  """Runs `steps` steps with one sync at the end; (state, seconds)."""
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = train_fn(state, arrays, batches[i % 2])
  jax.block_until_ready(metrics)
  return state, time.perf_counter() - start


def input_benchmark(config: ml_collections.ConfigDict, workers: int,
                    batches: int = 0, images: int = 512) -> dict:
  """Images per second of the training input alone (see the module doc)."""
  config = ml_collections.ConfigDict(config.to_dict())
  if workers >= 0:
    config.dataset.workers = workers
  with tempfile.TemporaryDirectory() as tmp:
    generated = not config.dataset.data_dir
    if generated:
      start = time.perf_counter()
      imagenet_like.write_tfds(tmp, images, 1)
      generate_s = time.perf_counter() - start
      config.dataset.name, config.dataset.data_dir = "imagenet2012", tmp
    run = run_lib.Run(config, workdir="")
    if not run.streamed:
      raise ConfigError(f"config.dataset.name={config.dataset.name!r} is "
                        "held in memory, not streamed; --input times streamed "
                        "datasets (imagenet2012, tfds:NAME)")
    workers = run.workers
    batches = batches or max(8, 8 * workers)
    # Timing starts once every worker has delivered its first batch.
    first = max(workers, 1)
    start = time.perf_counter()
    stream_ = run.train_batches(0, stop=first + batches)
    for _ in range(first):
      next(stream_)
    startup_s = time.perf_counter() - start
    start = time.perf_counter()
    count = sum(len(next(stream_)["label"]) for _ in range(batches))
    seconds = time.perf_counter() - start
    stream_.close()
  rate = count / seconds
  result = {"input_images_per_sec": round(rate, 1), "workers": workers,
            "per_worker": round(rate / max(workers, 1), 1),
            "batch_size": config.batch_size,
            "image_size": config.dataset.image_size, "images_timed": count,
            "seconds": round(seconds, 2), "startup_s": round(startup_s, 2),
            "dataset": config.dataset.name, "generated": generated,
            "allocator": allocator.describe()}
  if generated:
    result["generate_s"] = round(generate_s, 2)
  return result


def main(argv):
  del argv
  if FLAGS.input:
    print(json.dumps(input_benchmark(FLAGS.config, FLAGS.workers,
                                     FLAGS.input_batches,
                                     FLAGS.input_images)))
    return
  print(json.dumps(benchmark(FLAGS.config, FLAGS.steps, FLAGS.warmup,
                             FLAGS.trials)))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
