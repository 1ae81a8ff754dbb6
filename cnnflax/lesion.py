"""Lesion studies of trained residual nets (Veit et al. 2016, "Residual
Networks Behave Like Ensembles of Relatively Shallow Networks"): blocks
removed or reordered at test time, without retraining.

`lesioned` turns a trained ResNet and its variables into the unrolled net
whose `drop_blocks` / `block_order` fields (or a run-time `keep` array)
apply; `Evaluator` scores any lesion through the project's eval step
(step.make_eval_program, the same preprocessing, padding and masking as
training's evaluation), compiled once for all lesions.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnflax import step as step_lib
from cnnflax import data, train
from cnnflax.models import resnet


def unroll_variables(model: resnet.ResNet, variables: dict) -> dict:
  """Variables of a scanned model in the unrolled layout: `stageK_rest`
  (stacked along axis 0) becomes `stageK_block2`, `stageK_block3`, ..."""
  out = {}
  for collection, tree in variables.items():
    tree = dict(tree)
    for stage, n in enumerate(model.stage_sizes):
      stacked = tree.pop(f"stage{stage + 1}_rest", None)
      if stacked is None:
        continue
      for i in range(n - 1):
        tree[f"stage{stage + 1}_block{i + 2}"] = jax.tree.map(
            lambda a, i=i: a[i], stacked["unit"])
    out[collection] = tree
  return out


def reorder_variables(model: resnet.ResNet, variables: dict,
                      order: Sequence[int]) -> dict:
  """Unrolled variables with block order[p]'s weights at position p: the
  unrolled model then computes what `block_order=order` computes, without a
  new compilation."""
  model.clone(block_order=tuple(order))  # checks the permutation
  names = [name for *_, name in model._units()]
  out = {}
  for collection, tree in variables.items():
    tree = dict(tree)
    moved = {names[p]: tree[names[b]] for p, b in enumerate(order)
             if names[b] in tree}
    tree.update(moved)
    out[collection] = tree
  return out


def lesioned(model: resnet.ResNet, variables: dict, drop_blocks: Sequence[int] = (),
             block_order: Sequence[int] = ()) -> tuple[resnet.ResNet, dict]:
  """For the lesion experiment: a trained network and its variables, with
  blocks removed and/or reordered (Veit et al. 2016), without retraining.
  Scanned checkpoints are converted to the unrolled layout first."""
  if model.scanned:
    variables = unroll_variables(model, variables)
  return model.clone(scan_blocks=False, drop_blocks=tuple(drop_blocks),
                     block_order=tuple(block_order)), variables


class Lesioned(nn.Module):
  """`net` with the blocks of `batch_stats/keep` (1: kept, 0: removed, one
  per block) at run time, so that one compiled eval step serves every
  lesion. The net's own variables sit under `net`."""
  net: resnet.ResNet

  @nn.compact
  def __call__(self, x, train: bool = False):
    keep = self.variable("batch_stats", "keep", jnp.ones,
                         (self.net.num_blocks,), jnp.float32)
    return self.net(x, train, keep=keep.value)


class Evaluator:
  """Test error (%) of one trained net of `run` under any lesion, through
  the project's eval step on the first `num_images` test images."""

  def __init__(self, run, variables: dict, num_images: int):
    self.run = run
    self.model, self.variables = lesioned(run.model, variables)
    cfg = run.config.dataset
    preprocess = data.device_preprocess(run.dataset, cfg, False, run.dtype)
    self._eval = run.devices.map_eval(step_lib.make_eval_program(
        Lesioned(self.model), preprocess))
    self.arrays = run.devices.replicate(data.device_arrays(run.dataset, cfg,
                                                           False))
    self.test_size = run.dataset.num_test
    self.num_images = min(num_images, self.test_size)
    self.batches = [run.devices.shard(b)
                    for b in run.eval_batches(limit=self.num_images)]

  def error(self, deleted: Sequence[int] = (),
            order: Sequence[int] | None = None) -> float:
    keep = np.ones(self.model.num_blocks, np.float32)
    keep[list(deleted)] = 0.0
    variables = self.variables if order is None else reorder_variables(
        self.model, self.variables, order)
    state = self.run.devices.replicate(step_lib.TrainState(
        step=np.zeros((), np.int32), params={"net": variables["params"]},
        batch_stats={"net": variables.get("batch_stats", {}), "keep": keep},
        opt_state=(), rng=np.zeros((2,), np.uint32)))
    total = None
    for batch in self.batches:
      sums = self.run.devices.first(self._eval(state, self.arrays, batch))
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    return 100.0 * (1.0 - train.summarize(jax.device_get(total))["top1_acc"])
