"""Orbax checkpoints of the whole train state, written atomically and, by
default, in the background.

A checkpoint holds the parameters, batch statistics, optimizer state, step and
RNG (the input position follows from the step: see `data.TrainOrder`), plus a
small JSON record of what run wrote it, checked before anything is loaded.

The folder may be local or a bucket URL (`cnnflax.paths`). Orbax writes a
checkpoint under a temporary name and commits it when complete (a rename on
disks, a commit marker in buckets), so a crash never leaves a half checkpoint
as the newest one, and it removes old checkpoints only after a new one is
committed, so a failed save keeps the previous one.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import serialization

from cnnflax import paths
from cnnflax.errors import CheckpointError


class Checkpoints:
  """Save every N steps, keep the last K, restore the newest."""

  def __init__(self, directory: str, keep: int, identity: dict[str, Any],
               background: bool = True, read_only: bool = False,
               recipe: dict[str, Any] | None = None):
    self.directory = paths.path(directory)
    self.identity = identity  # what must match to resume (model, dataset ...)
    # Training's config fields that must match too (config_check.recipe);
    # None for readers (evaluation) and for writers of fresh weights.
    self.recipe = recipe
    # Leftover temporary folders (a save cut short by SIGKILL) are never
    # restored; cleaning them at start keeps the folder tidy. A reader
    # (evaluation beside a running training) creates and cleans nothing: the
    # temporary folder may be a save in progress.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only,
        cleanup_tmp_directories=not read_only, read_only=read_only,
        enable_async_checkpointing=background)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))
    self.background = background
    self._in_flight: tuple[int, int | None] | None = None  # (step, kept)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, extra: dict | None = None) -> None:
    """Starts writing a host copy of `state`; returns once the copy is taken
    (or, with background=False, once it is written).

    The previous save is finished first, so that its failure is reported
    here, naming the checkpoint that is kept, before anything newer starts.
    """
    self.wait()
    if step in self._manager.all_steps():
      return
    tree = _to_tree(state)
    meta = {**self.identity, "step": int(step), **(extra or {})}
    if self.recipe is not None:
      meta["recipe"] = self.recipe
    kept = self.latest_step()
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # e.g. no space left on the device
      raise self._save_failed(step, kept, e) from None
    self._in_flight = (step, kept)
    if not self.background:
      self.wait()

  def _save_failed(self, step: int, kept: int | None,
                   error: Exception) -> CheckpointError:
    """The temporary folder of a failed save never becomes a checkpoint;
    this says which one a rerun would resume from."""
    first = str(error).strip().splitlines()[0][:200] if str(error) else ""
    previous = (f"the previous checkpoint (step {kept}) is kept" if kept
                is not None else "there is no earlier checkpoint")
    return CheckpointError(
        f"saving the checkpoint of step {step} in {self.directory} failed "
        f"({type(error).__name__}: {first}); {previous}; free space or fix "
        "the folder, then rerun the same command to resume")

  def restore(self, template: Any,
              step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores (state, meta) into the structure of `template`."""
    step = self.latest_step() if step is None else step
    path = self.directory / str(step)
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:
      raise _unreadable(path, e) from None
    self._check_identity(meta, path)
    self._check_recipe(meta.get("recipe"), path)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_to_tree(template))))["state"]
      return serialization.from_state_dict(template, restored), meta
    except Exception as e:
      raise _unreadable(path, e) from None

  def _check_identity(self, meta: dict, path: str) -> None:
    for key, want in self.identity.items():
      if key not in meta or meta[key] == want:
        continue
      if isinstance(want, dict) and isinstance(meta[key], dict):
        # A field the model no longer has (e.g. conv_impl, now a backend
        # choice) cannot make the checkpoint another network's.
        diff = [k for k in sorted(want) if want.get(k) != meta[key].get(k)]
        if not diff:
          continue
        if "name" in diff:  # another model: its fields differ anyway
          diff = ["name"]
        had = ", ".join(f"config.{key}.{k}={meta[key].get(k)!r}"
                        for k in diff)
        has = ", ".join(f"config.{key}.{k}={want.get(k)!r}" for k in diff)
      else:
        had, has = f"{key}={meta[key]!r}", f"{key}={want!r}"
      raise CheckpointError(
          f"checkpoint {path} was written with {had} but this run has "
          f"{has}; use a new --workdir or restore the original config")

  def _check_recipe(self, saved: dict | None, path: str) -> None:
    """A field the checkpoint does not record did not exist when it was
    written: it cannot have changed."""
    if self.recipe is None or saved is None:
      return
    diff = [k for k in sorted(self.recipe)
            if k in saved and saved[k] != self.recipe[k]]
    if not diff:
      return
    had = ", ".join(f"config.{k}={_show(saved[k])}" for k in diff)
    has = ", ".join(f"config.{k}={_show(self.recipe[k])}" for k in diff)
    raise CheckpointError(
        f"checkpoint {path} was written with {had} but this run has {has}; "
        "a resumed run keeps its recipe (only its length, logging, "
        "evaluation and checkpoint cadence, data location and backend may "
        "change: README, When things go wrong); restore those values or use "
        "a new --workdir")

  def poll(self) -> None:
    """Reports a background save that has failed, without waiting."""
    if self._in_flight and not self._manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Waits for the save in flight; a failed one raises CheckpointError."""
    if self._in_flight is None:
      return
    step, kept = self._in_flight
    self._in_flight = None
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise self._save_failed(step, kept, e) from None

  def finish_quietly(self) -> None:
    """On the way out of a failing run: lets the save in flight land, and
    logs (rather than raises) its own failure, so the first error stays the
    one reported."""
    try:
      self.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.error("%s", e)

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()


def _show(value: Any) -> str:
  return repr(tuple(value) if isinstance(value, list) else value)


def _to_tree(state: Any) -> dict:
  # Orbax wants plain arrays, not numpy scalars. No copy is needed for the
  # background write: a fetched array that views a device buffer (on CPUs)
  # keeps it, and jax does not reuse a donated buffer that is still viewed
  # (tests/test_reliability.py checks the written states).
  tree = serialization.to_state_dict(state)
  return _map_leaves(tree, np.asarray)


def _map_leaves(tree, fn):
  if isinstance(tree, dict):
    return {k: _map_leaves(v, fn) for k, v in tree.items()}
  return fn(tree)


def _unreadable(path: str, error: Exception) -> CheckpointError:
  first_line = str(error).strip().splitlines()[0][:200] if str(error) else ""
  return CheckpointError(
      f"checkpoint {path} cannot be restored ({type(error).__name__}: "
      f"{first_line}); move that folder aside to resume from the previous "
      "checkpoint, or use a new --workdir")
