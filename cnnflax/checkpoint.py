"""Orbax checkpoints of the whole train state, written atomically.

A checkpoint holds the parameters, batch statistics, optimizer state, step and
RNG (the input position follows from the step: see `data.TrainOrder`), plus a
small JSON record of what run wrote it, checked before anything is loaded.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import serialization

from cnnflax.errors import CheckpointError


class Checkpoints:
  """Save every N steps, keep the last K, restore the newest."""

  def __init__(self, directory: str, keep: int, identity: dict[str, Any]):
    self.directory = os.path.abspath(directory)
    self.identity = identity  # what must match to resume (model, dataset ...)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, extra: dict | None = None) -> None:
    """Saves a host copy of the state; orbax writes to a temporary folder and
    renames it when complete, so a crash never leaves a half checkpoint as the
    newest one."""
    if step in self._manager.all_steps():
      return
    tree = _to_tree(state)
    meta = {**self.identity, "step": int(step), **(extra or {})}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))

  def restore(self, template: Any,
              step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores (state, meta) into the structure of `template`."""
    step = self.latest_step() if step is None else step
    path = os.path.join(self.directory, str(step))
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:
      raise _unreadable(path, e) from None
    self._check_identity(meta, path)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_to_tree(template))))["state"]
      return serialization.from_state_dict(template, restored), meta
    except Exception as e:
      raise _unreadable(path, e) from None

  def _check_identity(self, meta: dict, path: str) -> None:
    for key, want in self.identity.items():
      if key in meta and meta[key] != want:
        raise CheckpointError(
            f"checkpoint {path} was written with {key}={meta[key]!r} but this "
            f"run has {key}={want!r}; use a new --workdir or restore the "
            "original config")

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _to_tree(state: Any) -> dict:
  # Orbax wants plain arrays, not numpy scalars or jax arrays being donated.
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
