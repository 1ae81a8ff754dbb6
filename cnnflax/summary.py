"""Layer table, parameters and multiply-adds of a config's model.

  python -m cnnflax.summary --config=configs/default.py [--json]

Mult-adds count what the ResNet and MobileNet papers count as FLOPs: one per
multiply-accumulate of convolutions and fully connected layers, per image.
"""
from __future__ import annotations

import dataclasses
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file.", lock_config=False,
    accept_new_attributes=True)
flags.DEFINE_bool("json", False, "Print only {\"params\": N, \"flops\": F}.")


@dataclasses.dataclass
class Row:
  path: str
  kind: str
  output_shape: tuple
  params: int
  flops: int


def _size(tree) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _flops(module: nn.Module, inputs, output) -> int:
  """Multiply-adds per image of one call of a linear layer."""
  if not isinstance(output, jax.Array) and not hasattr(output, "shape"):
    return 0
  out = output.shape
  if isinstance(module, nn.Conv):
    kernel = module.variables["params"]["kernel"].shape
    return math.prod(out[1:]) * math.prod(kernel[:-1])
  if isinstance(module, nn.Dense):
    kernel = module.variables["params"]["kernel"].shape
    return math.prod(out[1:-1]) * kernel[0] * kernel[1]
  return 0


def layer_table(model: nn.Module, image_shape: tuple[int, int, int],
                train: bool = False) -> list[Row]:
  """Every module call in order, with output shape, own parameters and
  mult-adds (for one image)."""
  rows: list[Row] = []

  def record(next_fun, args, kwargs, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    slot = len(rows)
    rows.append(None)  # rows in call order: a parent before its children
    out = next_fun(*args, **kwargs)
    module = context.module
    first = jax.tree.leaves(out)[0] if jax.tree.leaves(out) else None
    own = {k: v for k, v in module.variables.get("params", {}).items()
           if not isinstance(v, dict)}
    if hasattr(module, "flops_per_image"):  # custom linear layers
      flops = module.flops_per_image(out)
    else:
      flops = _flops(module, args, out)
    if hasattr(module, "summary_shape"):  # an output that is not one array
      shape = module.summary_shape(out)
    else:
      shape = tuple(first.shape[1:]) if first is not None else ()
    rows[slot] = Row("/".join(module.path) or module.__class__.__name__,
                     module.__class__.__name__, shape, _size(own), flops)
    return out

  if getattr(model, "scan_blocks", None) is not None or hasattr(
      model, "scanned"):
    # Same math and parameters, but every block shows (and is counted) on
    # its own row instead of once inside a scan.
    model = model.clone(scan_blocks=False)
  x = jnp.zeros((1, *image_shape), jnp.float32)
  variables = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0),
                          "dropout": jax.random.key(1)}, x, train=train))

  def apply(variables):
    with nn.intercept_methods(record):
      return model.apply(variables, x, train=train,
                         rngs={"dropout": jax.random.key(1)},
                         mutable=["batch_stats"] if train else False)

  jax.eval_shape(apply, variables)
  return rows


def count(model: nn.Module, image_shape) -> dict[str, int]:
  rows = layer_table(model, image_shape)
  return {"params": sum(r.params for r in rows),
          "flops": sum(r.flops for r in rows)}


def format_table(rows: list[Row]) -> str:
  width = max([len(r.path) for r in rows] + [5])
  lines = [f"{'layer':<{width}}  {'type':<14} {'output':<18} {'params':>12} "
           f"{'mult-adds':>15}"]
  for r in rows:
    shape = "x".join(map(str, r.output_shape))
    lines.append(f"{r.path:<{width}}  {r.kind:<14} {shape:<18} "
                 f"{r.params:>12,} {r.flops:>15,}")
  total_p = sum(r.params for r in rows)
  total_f = sum(r.flops for r in rows)
  lines.append(f"{'total':<{width}}  {'':<14} {'':<18} {total_p:>12,} "
               f"{total_f:>15,}")
  return "\n".join(lines)


def model_and_shape(config: ml_collections.ConfigDict):
  from cnnflax import data
  from cnnflax import run as run_lib
  return run_lib.build_model(config, None), data.image_shape(config.dataset)


def main(argv):
  del argv
  model, shape = model_and_shape(FLAGS.config)
  rows = layer_table(model, shape)
  totals = {"params": sum(r.params for r in rows),
            "flops": sum(r.flops for r in rows)}
  if FLAGS.json:
    print(json.dumps(totals))
    return
  print(f"{FLAGS.config.model.name} at {'x'.join(map(str, shape))}")
  print(format_table(rows))


if __name__ == "__main__":
  from cnnflax import cli
  flags.mark_flags_as_required(["config"])
  cli.run(main)
