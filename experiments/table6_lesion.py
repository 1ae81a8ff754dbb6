"""Table 6: the lesion study of Veit et al. 2016 ("Residual Networks Behave
Like Ensembles of Relatively Shallow Networks"), on trained checkpoints and
without retraining, for a residual net and its plain twin of the same depth:

  (a) test error after deleting each single block (Fig. 3),
  (b) test error against the number of blocks deleted at random (Fig. 5a),
  (c) test error against Kendall's tau of a random reordering (Fig. 5b).

The nets are table 1's runs (`plainD`, `resnetD` under --root): --mode=run
trains the missing ones first, --mode=slurm writes their job array.

  python experiments/table6_lesion.py --mode=run --depth=56 --budget=0.03 \\
      --root=runs/table1 --data_dir=../shared/data/cifar10

Every lesion is an input of one compiled network (`keep`, one 0/1 per block;
a reordering moves the blocks' weights), so the study compiles once per net.
A plain block that changes the shape cannot be deleted or moved. Results are
cached in each run's folder (lesion.json); the table and plot go to
experiments/results/table6_lesion.{md,png}.
"""
from __future__ import annotations

import json
import sys

if __name__ == "__main__":  # before jax loads: see cnnflax/allocator.py
  from cnnflax import backend
  backend.start()

import jax
import numpy as np
from absl import app, flags, logging

import sweep
import table1_resnet_cifar
from cnnflax import lesion, paths

FLAGS = flags.FLAGS

# Veit et al. on CIFAR-10 (ResNet-110 and a 15-layer VGG-style net): the
# statements this table is read against.
PAPER = {
    "single": "ResNet: deleting any one block barely moves the error, "
              "except some downsampling blocks; plain/VGG: every deletion "
              "gives chance error (~90%)",
    "random": "ResNet: the error rises smoothly with the number deleted "
              "(about 20% error at 10 of 54 blocks deleted)",
    "reorder": "ResNet: the error rises smoothly as Kendall's tau falls",
}


# --- the lesions --------------------------------------------------------------


def kendall_tau(order) -> float:
  """Kendall's rank correlation of `order` with 0, 1, 2, ..."""
  n = len(order)
  pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
  concordant = sum(order[i] < order[j] for i, j in pairs)
  return (2 * concordant - len(pairs)) / len(pairs)


def deletable(model) -> list[int]:
  """Blocks that can go: all in a residual net (downsampling blocks keep
  their shortcut), those that keep the shape in a plain one."""
  return [b for b, (stride, cin, cout) in enumerate(model.block_shapes())
          if not model.plain or (stride == 1 and cin == cout)]


def random_order(model, swaps: int, rng: np.random.Generator) -> list[int]:
  """The identity order with `swaps` random swaps of blocks whose shapes
  match (so that the network still composes)."""
  shapes = model.block_shapes()
  movable = deletable(model)
  partners = {a: [b for b in movable if b != a and shapes[b] == shapes[a]]
              for a in movable}
  swappable = [a for a in movable if partners[a]]
  order = list(range(model.num_blocks))
  for _ in range(swaps if swappable else 0):
    a = rng.choice(swappable)
    b = rng.choice(partners[a])
    order[a], order[b] = order[b], order[a]
  return order


def study(evaluator: lesion.Evaluator, samples: int, seed: int) -> dict:
  """(a), (b) and (c) for one net."""
  model = evaluator.model
  rng = np.random.default_rng(seed)
  can_go = deletable(model)
  logging.info("lesion study: %d single deletions", len(can_go))
  single = [evaluator.error([b]) if b in can_go else None
            for b in range(model.num_blocks)]
  logging.info("lesion study: random deletions, then reorderings")
  random = []
  for k in range(1, len(can_go) // 2 + 1):
    errors = [evaluator.error(rng.choice(can_go, k, replace=False))
              for _ in range(samples)]
    random.append({"deleted": k, "errors": errors})
  reorder = []
  for swaps in (1, 2, 4, 8, 16, 32):
    for _ in range(samples):
      order = random_order(model, swaps, rng)
      reorder.append({"swaps": swaps, "tau": kendall_tau(order),
                      "error": evaluator.error(order=order)})
  return {"baseline": evaluator.error(), "single": single, "random": random,
          "reorder": reorder, "eval_images": evaluator.num_images,
          "samples": samples, "seed": seed,
          "test_size": evaluator.test_size,
          "shapes": [list(s) for s in model.block_shapes()]}


# --- trained nets --------------------------------------------------------------


def restore(config, workdir: str):
  """The trained run's run.Run and its last checkpoint's variables."""
  from cnnflax import run as run_lib
  run = run_lib.Run(config, workdir)
  ckpts = run.checkpoints()
  state, _ = ckpts.restore(jax.device_get(run.init_state()))
  ckpts.close()
  return run, {"params": state.params, "batch_stats": state.batch_stats}


def lesion_results(run: sweep.Run, root: str, budget: float, extra: dict,
                   eval_images: int, samples: int, seed: int) -> dict | None:
  """The study of one trained run, from its cache when the cache matches."""
  if sweep.results(root, run) is None:
    return None
  path = paths.path(root) / run.name / "lesion.json"
  if path.exists():
    cached = json.loads(path.read_text())
    asked = (min(eval_images, cached["test_size"]), samples, seed)
    if (cached["eval_images"], cached["samples"], cached["seed"]) == asked:
      return cached
  config = sweep.final_config(run, budget, extra)
  trained, variables = restore(config, str(paths.path(root) / run.name))
  result = study(lesion.Evaluator(trained, variables, eval_images), samples,
                 seed)
  paths.write_atomic(path, json.dumps(result))
  return result


# --- the table and the figure ----------------------------------------------------


def _mean(values):
  values = [v for v in values if v is not None]
  return sum(values) / len(values) if values else None


def report(studies: dict, budget: float, dataset: str, argv) -> str:
  """studies: {"plain": result or None, "resnet": result or None}."""
  res, plain = studies.get("resnet"), studies.get("plain")
  any_result = res or plain
  images = any_result["eval_images"] if any_result else "-"
  text = sweep.header(
      "Table 6: lesion study (Veit et al. 2016) on CIFAR-10", budget,
      dataset, argv, note=f"test error in % on the first {images} test "
      "images; no retraining after a lesion; '-': a plain block that changes "
      "the shape cannot be deleted")
  get = lambda r, key, i=None: None if r is None else (
      r[key] if i is None else r[key][i])
  text += "## Baseline\n\n" + sweep.markdown_table(
      ["net", "error (no lesion)"],
      [["ResNet", get(res, "baseline")], ["plain", get(plain, "baseline")]])
  n = len((res or plain or {"single": []})["single"])
  rows = [[b, _shape(res or plain, b), get(res, "single", b),
           get(plain, "single", b)] for b in range(n)]
  text += ("\n## (a) Deleting one block\n\npaper: " + PAPER["single"] + "\n\n"
           + sweep.markdown_table(["block", "stride, in, out", "ResNet",
                                   "plain"], rows))
  text += ("\n## (b) Deleting k random blocks (mean of the draws)\n\npaper: "
           + PAPER["random"] + "\n\n" + sweep.markdown_table(
               ["k", "ResNet", "plain"], _by_count(res, plain)))
  text += ("\n## (c) Random reorderings (mean of the draws)\n\npaper: "
           + PAPER["reorder"] + "\n\n" + sweep.markdown_table(
               ["swaps", "Kendall tau (ResNet)", "ResNet", "Kendall tau "
                "(plain)", "plain"], _by_swaps(res, plain)))
  return text


def _shape(result, b):
  return "-" if result is None else ", ".join(map(str, result["shapes"][b]))


def _by_count(res, plain):
  ks = sorted({r["deleted"] for s in (res, plain) if s for r in s["random"]})
  def at(s, k):
    rows = [r for r in (s or {}).get("random", []) if r["deleted"] == k]
    return _mean(rows[0]["errors"]) if rows else None
  return [[k, at(res, k), at(plain, k)] for k in ks]


def _by_swaps(res, plain):
  counts = sorted({r["swaps"] for s in (res, plain) if s
                   for r in s["reorder"]})
  def at(s, n, key):
    return _mean([r[key] for r in (s or {}).get("reorder", [])
                  if r["swaps"] == n])
  return [[n, at(res, n, "tau"), at(res, n, "error"), at(plain, n, "tau"),
           at(plain, n, "error")] for n in counts]


def plot(studies: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for name, s in studies.items():
    if s is None:
      continue
    label = "ResNet" if name == "resnet" else "plain"
    blocks = [b for b, e in enumerate(s["single"]) if e is not None]
    line, = axes[0].plot(blocks, [s["single"][b] for b in blocks], "o-",
                         ms=3, label=label)
    for ax in axes:
      ax.axhline(s["baseline"], color=line.get_color(), ls="--", lw=0.8)
    ks = [r["deleted"] for r in s["random"]]
    axes[1].errorbar(ks, [np.mean(r["errors"]) for r in s["random"]],
                     yerr=[np.std(r["errors"]) for r in s["random"]],
                     marker="o", ms=3, capsize=2, label=label,
                     color=line.get_color())
    axes[2].scatter([r["tau"] for r in s["reorder"]],
                    [r["error"] for r in s["reorder"]], s=12, label=label,
                    color=line.get_color())
  axes[0].set(title="(a) one block deleted", xlabel="deleted block",
              ylabel="test error (%)")
  axes[1].set(title="(b) k random blocks deleted", xlabel="k")
  axes[2].set(title="(c) blocks reordered", xlabel="Kendall tau")
  axes[2].invert_xaxis()
  for ax in axes:
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  runs = table1_resnet_cifar.runs([FLAGS.depth])
  if not sweep.execute(runs):
    return
  extra = sweep.sweep_extra()
  studies = {run.name.rstrip("0123456789"): lesion_results(
      run, FLAGS.root, FLAGS.budget, extra, FLAGS.eval_images, FLAGS.samples,
      FLAGS.seed) for run in runs}
  text = report(studies, FLAGS.budget,
                f"cifar10 ({FLAGS.data_dir or 'TFDS'})", sys.argv)
  sweep.publish("table6_lesion", text)
  plot(studies, sweep.result_path("table6_lesion.png"))


def define_flags() -> None:
  """Only when run as a script: scripts import each other."""
  flags.DEFINE_integer("depth", 56, "Depth of the residual and plain nets.")
  flags.DEFINE_integer("eval_images", 10_000, "Test images per evaluation "
                       "(the first N of the test split).")
  flags.DEFINE_integer("samples", 3, "Random draws per point of (b) and (c).")
  flags.DEFINE_integer("seed", 0, "Seed of the random deletions and orders.")


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("root")
  app.run(main)
