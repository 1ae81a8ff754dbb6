"""Table 1: He et al. 2016, Table 6 and Fig. 6 -- plain and residual nets of
20, 32, 44, 56 and 110 layers on CIFAR-10.

  python experiments/table1_resnet_cifar.py --mode=run --budget=0.05 \
      --root=runs/table1 --data_dir=../shared/data/cifar10
  python experiments/table1_resnet_cifar.py --mode=slurm --root=...  # cluster
  python experiments/table1_resnet_cifar.py --mode=table --root=...  # collect

Writes experiments/results/table1_resnet_cifar.md and .png (train and test
error curves, Fig. 6: plain left, residual right).
"""
from __future__ import annotations

from absl import app, flags

import sweep

PAPER_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}  # Table 6

FLAGS = flags.FLAGS


def runs(depths, config: str = "configs/resnet_cifar.py") -> list[sweep.Run]:
  out = []
  for depth in map(int, depths):
    for plain in (True, False):
      name = f"{'plain' if plain else 'resnet'}{depth}"
      out.append(sweep.Run(name, f"{config}:{depth}", {"model.plain": plain},
                           paper=None if plain else PAPER_ERROR.get(depth)))
  return out


def table(all_runs, root: str) -> list[list]:
  rows = []
  for plain, res in zip(all_runs[::2], all_runs[1::2]):
    depth = int(res.name.removeprefix("resnet"))
    done = sweep.results(root, plain), sweep.results(root, res)
    rows.append([depth, *map(sweep.test_error, done), res.paper,
                 *map(sweep.wall_minutes, done)])
  return rows


def panels(all_runs) -> dict:
  """Fig. 6: plain nets left, residual nets right."""
  return {kind: [r for r in all_runs if r.name.startswith(kind)]
          for kind in ("plain", "resnet")}


def report(all_runs, root: str, budget: float, dataset: str, argv) -> str:
  text = sweep.header("Table 1: plain vs residual nets on CIFAR-10 "
                      "(He et al. 2016, Table 6 / Fig. 6)", budget, dataset,
                      argv, note="test error in %; the paper trains on 45k "
                      "images, we train on all 50k")
  return text + sweep.markdown_table(
      ["depth", "plain (ours)", "ResNet (ours)", "ResNet (paper)",
       "plain: minutes", "ResNet: minutes"],
      table(all_runs, root))


def main(argv):
  del argv
  all_runs = runs(FLAGS.depths, FLAGS.base_config)
  sweep.finish(all_runs, "table1_resnet_cifar",
               lambda *a: report(all_runs, *a),
               panels=panels(all_runs))

def define_flags() -> None:
  """Only when run as a script: scripts import each other."""
  flags.DEFINE_list("depths", ["20", "32", "44", "56", "110"], "Depths to run.")
  flags.DEFINE_string("base_config", "configs/resnet_cifar.py",
                      "Config file whose :DEPTH variants are run.")


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("root")
  app.run(main)
