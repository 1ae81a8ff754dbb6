"""train_and_evaluate: the loop, logging, evaluation and checkpoint cadence
(the run it loops over is set up in run.py)."""
from __future__ import annotations

import collections
import itertools
import json
import logging as std_logging
import queue
import signal
import threading
import time
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from cnnflax import checkpoint, data, lock, memory, models, paths
from cnnflax import step as step_lib
from cnnflax.errors import NumericalError, Stopped
from cnnflax.run import Run, count_params


def prefetch(items: Iterable, size: int) -> Iterator:
  """Runs `items` in a thread, `size` ahead, so that host work and transfers
  overlap the running step. The thread starts now (a grain pipeline's
  workers start while the step compiles). Closing the result stops the
  thread and closes `items` (a grain pipeline's workers end)."""
  if size <= 0:
    return _Closing(items)
  return _Prefetch(items, size)


class _Closing:
  """`items` as an iterator whose close() closes them."""

  def __init__(self, items: Iterable):
    self.items = items
    self.iterator = iter(items)

  def __iter__(self):
    return self

  def __next__(self):
    return next(self.iterator)

  def close(self) -> None:
    for obj in (self.iterator, self.items):
      if hasattr(obj, "close"):
        obj.close()


class _Prefetch:
  """The thread behind `prefetch`; errors are re-raised in the consumer."""
  _DONE = object()

  def __init__(self, items: Iterable, size: int):
    self.items = items
    self.queue: queue.Queue = queue.Queue(maxsize=size)
    self.stop = threading.Event()
    self.thread = threading.Thread(target=self._work, daemon=True)
    self.thread.start()

  def _put(self, item) -> bool:
    while not self.stop.is_set():
      try:
        self.queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def _work(self) -> None:
    try:
      for item in self.items:
        if not self._put(item):
          break
      self._put(self._DONE)
    except BaseException as e:
      self._put(e)
    finally:
      if hasattr(self.items, "close"):
        self.items.close()

  def __iter__(self):
    return self

  def __next__(self):
    item = self.queue.get()
    if item is self._DONE:
      self.queue.put(item)  # later calls stop too
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self.stop.set()
    # A daemon thread still inside jax's C++ when the interpreter exits is
    # unwound there, which aborts the process (seen after a preemption's
    # save): let it finish the batch in hand.
    self.thread.join(timeout=60)
    if self.thread.is_alive():
      logging.warning("the input thread did not stop within 60 s")


class Writer:
  """JSONL, TensorBoard and absl logs; only process 0 writes anything.
  The workdir may be a local folder or a bucket URL (cnnflax.paths)."""

  def __init__(self, workdir: str, resume_step: int):
    self.active = jax.process_index() == 0
    self.workdir = paths.path(workdir)
    self._tb = None
    if not self.active:
      return
    self._logs = {kind: paths.LineLog(
        self.workdir / f"{kind}.jsonl",
        _truncate_after(self.workdir / f"{kind}.jsonl", resume_step))
        for kind in ("metrics", "eval")}
    try:
      from tensorboardX import SummaryWriter
    except ImportError:
      logging.warning("tensorboardX is not installed: no TensorBoard events")
      return
    paths.register_tensorboard()
    self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

  def write(self, kind: str, record: dict[str, Any]) -> None:
    if not self.active:
      return
    self._logs[kind].append(json.dumps(record))
    if self._tb is not None:
      prefix = "train" if kind == "metrics" else "eval"
      for key, value in record.items():
        if key not in ("step", "epoch") and isinstance(value, (int, float)):
          self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])

  def write_json(self, name: str, payload: dict) -> None:
    if self.active:
      paths.write_atomic(self.workdir / name,
                         json.dumps(payload, indent=2, sort_keys=True))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _truncate_after(path, step: int) -> list[str]:
  """Drops records past `step`: a resumed run rewrites them, and the log ends
  as if the run had never stopped. Returns the records kept."""
  path = paths.path(path)
  if not path.exists():
    return []
  kept = [line for line in path.read_text().splitlines()
          if _step_of(line) is not None and _step_of(line) <= step]
  paths.write_atomic(path, "".join(f"{line}\n" for line in kept))
  return kept


def _step_of(line: str) -> int | None:
  """The record's step; None for a line cut short by a killed process."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return None


def summarize(sums: dict[str, np.ndarray]) -> dict[str, float]:
  count = max(float(sums["count"]), 1.0)
  return {"loss": float(sums["loss"]) / count,
          "top1_acc": float(sums["top1"]) / count,
          "top5_acc": float(sums["top5"]) / count}


def evaluate(run: Run, eval_fn, state, test_arrays) -> dict[str, float]:
  """Every test example exactly once (padded, masked); one host sync."""
  total = None
  batches = prefetch((run.devices.shard(b) for b in run.eval_batches()),
                     run.config.dataset.prefetch)
  try:
    for batch in batches:
      sums = run.devices.first(eval_fn(state, test_arrays, batch))
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  finally:
    batches.close()
  return summarize(jax.device_get(total))


def quiet_library_logs() -> None:
  """Keeps orbax's per-save INFO chatter out of the training log."""

  def keep(record) -> bool:
    return record.levelno >= 30 or "orbax" not in record.pathname

  for handler in (logging.get_absl_handler(), *std_logging.root.handlers):
    if keep not in handler.filters:
      handler.addFilter(keep)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Trains and evaluates the configured model; resumes from `workdir`."""
  quiet_library_logs()
  step_lib.initialize_distributed()
  run = Run(config, workdir)
  paths.check_writable(workdir)
  with lock.hold(workdir) as held:
    return _train_and_evaluate(run, held)


def _train_and_evaluate(run: Run, held: lock.WorkdirLock | None
                        ) -> dict[str, Any]:
  config, workdir = run.config, run.workdir
  ckpts = run.checkpoints()
  host_state = jax.device_get(run.init_state())
  params = count_params(host_state.params)
  meta = {}
  if ckpts.latest_step() is not None:
    host_state, meta = ckpts.restore(host_state)
    logging.info("Resumed from %s at step %d", ckpts.directory,
                 int(host_state.step))
  writer = Writer(workdir, int(host_state.step))
  writer.write_json("config.json", {**config.to_dict(),
                                    "backend": run.backend.record()})
  logging.info("backend: %s", json.dumps(run.backend.record()))
  logging.info("%s: %s parameters, %d steps (%d per epoch), %d devices",
               config.model.name, f"{params:,}", run.num_steps,
               run.steps_per_epoch, run.devices.count)
  if run.streamed:
    logging.info("reading %s and %s with %d grain workers",
                 run.dataset.train.where, run.dataset.test.where, run.workers)
  loop = Loop(run, ckpts, writer, meta, held)
  try:
    final = loop.train(host_state)
  except BaseException:  # e.g. preempted: the events so far still land
    writer.close()
    raise
  results = {"test_top1_acc": final["top1_acc"],
             "test_top5_acc": final["top5_acc"], "test_loss": final["loss"],
             "steps": run.num_steps, "params": params,
             "wall_s": round(loop.wall_s(), 3), "model": config.model.name,
             "dataset": config.dataset.name, "devices": run.devices.count}
  if run.streamed:  # which prepared copy (version, format) was read
    results["data"] = [run.dataset.train.where, run.dataset.test.where]
  writer.write_json("results.json", results)
  writer.close()
  logging.info("Done: test top-1 %.4f, top-5 %.4f, loss %.4f",
               final["top1_acc"], final["top5_acc"], final["loss"])
  return results


METRIC_SUMS = ("loss", "top1", "top5", "count")
AHEAD = 2  # steps dispatched but not finished


class Loop:
  """The step loop: metrics stay on the devices until a log step; evaluation
  and checkpoints at their cadence; the partial log interval travels in the
  checkpoint so that a resumed run logs what an uninterrupted one would."""

  def __init__(self, run: Run, ckpts: checkpoint.Checkpoints,
               writer: Writer, meta: dict,
               held: lock.WorkdirLock | None = None):
    self.run, self.ckpts, self.writer = run, ckpts, writer
    self.held = held  # the workdir's lock (process 0 only)
    self.config = run.config
    self.wall_before = meta.get("wall_s", 0.0)
    # A run stopped on a step that evaluates saved before evaluating (the
    # signal's grace period is for the save): the evaluation is owed.
    self.eval_owed = bool(meta.get("eval_owed", False))
    carried = meta.get("log_sums")
    # (step, metrics) since the last log; step None: sums from a checkpoint.
    self.pending = [(None, carried)] if carried else []
    self.started = time.perf_counter()
    eval_every = self.config.eval_every_steps
    self.eval_every = run.steps_per_epoch if eval_every < 0 else eval_every

  def wall_s(self) -> float:
    return self.wall_before + time.perf_counter() - self.started

  def train(self, host_state) -> dict[str, float]:
    run, config = self.run, self.config
    start = int(host_state.step)
    state = run.devices.replicate(host_state)
    self.train_arrays = run.devices.replicate(
        data.device_arrays(run.dataset, config.dataset, True))
    self.test_arrays = run.devices.replicate(
        data.device_arrays(run.dataset, config.dataset, False))
    train_fn, self.eval_fn = run.train_fn(), run.eval_fn()
    self.quantities = step_lib.gradient_names(host_state.params)
    batches = prefetch((run.devices.shard(b)
                        for b in run.train_batches(start)),
                       config.dataset.prefetch)
    self.input_wait = 0.0
    try:
      first = [self.next_batch(batches)] if start < run.num_steps else []
      if first:
        train_fn = self.compile(train_fn, state, first[0])
      if self.eval_owed:
        self.evaluate(start, state)
      self.last_log, self.last_time = start, time.perf_counter()
      final = self._steps(start, state, train_fn,
                          itertools.chain(first, batches))
    except BaseException:
      self.ckpts.finish_quietly()  # a good save in flight still lands
      raise
    finally:
      batches.close()
    self.ckpts.close()
    return final

  def compile(self, train_fn, state, batch):
    """The train step compiled before its first call, so that a step too big
    for the machine is refused before it runs (cnnflax.memory)."""
    compiled = train_fn.lower(state, self.train_arrays, batch).compile()
    memory.check_step(compiled, self.run.devices.devices, self.config,
                      models.module_fields(type(self.run.model)))
    return compiled

  def next_batch(self, batches):
    """The next batch, counting the time the loop waits for it."""
    start = time.perf_counter()
    batch = next(batches)
    self.input_wait += time.perf_counter() - start
    return batch

  def _steps(self, start: int, state, train_fn, batches) -> dict[str, float]:
    run, config = self.run, self.config
    in_flight = collections.deque()
    with StopSignals() as stop:
      for step in range(start + 1, run.num_steps + 1):
        state, metrics = train_fn(state, self.train_arrays,
                                  self.next_batch(batches))
        self.pending.append((step, run.devices.first(metrics)))
        # Dispatch stays at most AHEAD steps in front of the devices (which
        # still always have work queued), so a stop signal is answered
        # within a few steps rather than a whole log interval.
        in_flight.append(metrics["count"])
        if len(in_flight) > AHEAD:
          in_flight.popleft().block_until_ready()
        if step == start + 1:
          logging.info("First step compiled and ran in %.1fs",
                       time.perf_counter() - self.started)
        if step % config.log_every_steps == 0 or step == run.num_steps:
          self.log(step)
        if stop.reached(step) and step < run.num_steps:
          self.save(step, state, eval_owed=self.evaluates(step))
          self.ckpts.wait()  # the signal's grace period is for this write
          raise Stopped(stop.name, stop.exit_code, step)
        if step < run.num_steps:
          self.maybe_evaluate_and_save(step, state, metrics)
      self.save(run.num_steps, state)
    return self.evaluate(run.num_steps, state)  # while the last save writes

  def log(self, step: int) -> None:
    sums = self._fetch_pending()  # the one host sync per log interval
    now = time.perf_counter()  # after the sync: the steps have finished
    seconds, steps = now - self.last_time, step - self.last_log
    record = {"step": step, "epoch": round(step / self.run.steps_per_epoch, 4),
              **summarize(sums), "learning_rate": sums["learning_rate"],
              "images_per_sec": round(steps * self.config.batch_size
                                      / max(seconds, 1e-9), 1),
              # Time the loop waited for input: near 0 when input keeps up.
              "input_wait_s": round(self.input_wait, 3)}
    self.writer.write("metrics", record)
    self.ckpts.poll()  # a background save that failed stops the run now
    logging.info("step %d/%d epoch %.2f loss %.4f top1 %.4f lr %.4g "
                 "%.0f img/s input wait %.2fs ETA %s", step,
                 self.run.num_steps, record["epoch"], record["loss"],
                 record["top1_acc"], record["learning_rate"],
                 record["images_per_sec"], self.input_wait,
                 _eta((self.run.num_steps - step) * seconds / steps))
    self.pending, self.last_log, self.last_time = [], step, time.perf_counter()
    self.input_wait = 0.0

  def evaluates(self, step: int) -> bool:
    return self.eval_every > 0 and step % self.eval_every == 0

  def maybe_evaluate_and_save(self, step: int, state, metrics) -> None:
    do_eval = self.evaluates(step)
    do_save = step % self.config.checkpoint_every_steps == 0
    if not (do_eval or do_save):
      return
    jax.block_until_ready(metrics)  # so that images/s counts steps only
    pause = time.perf_counter()
    if do_eval:
      self.evaluate(step, state)
    if do_save:
      self.save(step, state)
    self.last_time += time.perf_counter() - pause

  def save(self, step: int, state, eval_owed: bool = False) -> None:
    if self.held is not None:
      self.held.check()  # another run took the workdir over: write nothing
    extra = {"wall_s": self.wall_s(), "eval_owed": eval_owed}
    if self.pending:  # also checks that these steps stayed finite
      extra["log_sums"] = self._fetch_pending()
    self.ckpts.save(step, self.run.devices.fetch(state), extra)

  def _fetch_pending(self) -> dict[str, float]:
    """Host sums of the pending steps, after checking they were finite."""
    host = jax.device_get([m for _, m in self.pending])
    for (step, _), metrics in zip(self.pending, host):
      if step is not None and not np.all(metrics["finite"]):
        raise self._numerical_error(step, metrics)
    return _add_up(host)

  def _numerical_error(self, step: int, metrics: dict) -> NumericalError:
    first = int(np.argmin(metrics["finite"]))
    what = self.quantities[first]
    if first == 0:
      count = max(float(metrics["count"]), 1.0)
      what = f"loss ({float(metrics['loss']) / count})"
    self.ckpts.wait()  # the save in flight holds finite steps only
    latest = self.ckpts.latest_step()
    kept = (f"the last good checkpoint (step {latest}) is kept"
            if latest is not None else "no checkpoint was written")
    return NumericalError(
        f"step {step}: {what} is not finite, the first non-finite quantity; "
        f"training stopped and {kept}; lower config.optimizer.learning_rate, "
        "add config.schedule.warmup_steps, or check the input data")

  def evaluate(self, step: int, state) -> dict[str, float]:
    return _eval_and_write(self.run, self.eval_fn, state, self.test_arrays,
                           self.writer, step)


def _add_up(host: list) -> dict[str, float]:
  """Sums per-step metric sums (host values); keeps the last rate."""
  sums = {k: float(sum(float(m[k]) for m in host)) for k in METRIC_SUMS}
  sums["learning_rate"] = float(host[-1]["learning_rate"])
  return sums


class StopSignals:
  """SIGTERM (preemption) and SIGINT (Ctrl-C) ask the loop to save and stop.

  The handler only sets a flag, checked once per step on the host. With
  several hosts, jax's preemption sync point makes all of them stop at the
  same step (it needs no signal handler of ours; Ctrl-C then just kills).
  A second Ctrl-C aborts.
  """
  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.name, self.exit_code = "", 0
    self._previous = {}

  def __enter__(self) -> "StopSignals":
    # Several hosts: jax's own SIGTERM notifier must stay installed.
    if (jax.process_count() == 1
        and threading.current_thread() is threading.main_thread()):
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame) -> None:
    if self.name and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.name = signal.Signals(signum).name
    self.exit_code = 128 + signum
    logging.warning("%s received: saving a checkpoint and stopping",
                    self.name)

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.name, self.exit_code = self.name or "SIGTERM", 143
        return True
      return False
    return bool(self.name)


def _eval_and_write(run, eval_fn, state, test_arrays, writer, step):
  result = evaluate(run, eval_fn, state, test_arrays)
  writer.write("eval", {"step": step,
                        "epoch": round(step / run.steps_per_epoch, 4),
                        "test_loss": result["loss"],
                        "test_top1_acc": result["top1_acc"],
                        "test_top5_acc": result["top5_acc"]})
  logging.info("eval at step %d: loss %.4f top1 %.4f top5 %.4f", step,
               result["loss"], result["top1_acc"], result["top5_acc"])
  return result


def _eta(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
