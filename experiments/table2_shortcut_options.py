"""Table 2: shortcut options A, B and C (He et al. 2016, Table 3).

A: zero-padding shortcuts where the shape changes, identity elsewhere;
B: projections where the shape changes; C: projections everywhere. The
paper compares them on ImageNet ResNet-34 (and a plain-34); here the same
four runs on CIFAR-10 (--setting=cifar, depth a flag), or the paper's
ImageNet setting (--setting=imagenet, configs/resnet50.py:34).

  python experiments/table2_shortcut_options.py --mode=run --depth=20 \\
      --budget=0.03 --root=runs/table2 --data_dir=../shared/data/cifar10

Writes experiments/results/table2_shortcut_options.{md,png}.
"""
from __future__ import annotations

from absl import app, flags

import sweep

# He et al. 2016, Table 3: ImageNet val top-1 error (%), 10-crop, 34 layers.
PAPER = {"plain": 28.54, "A": 25.03, "B": 24.52, "C": 24.19}

FLAGS = flags.FLAGS


def runs(depth: int = 20, setting: str = "cifar") -> list[sweep.Run]:
  config = (f"configs/resnet_cifar.py:{depth}" if setting == "cifar"
            else "configs/resnet50.py:34")
  out = [sweep.Run("plain", config, {"model.plain": True},
                   paper=PAPER["plain"])]
  out += [sweep.Run(f"option_{o}", config, {"model.shortcut": o},
                    paper=PAPER[o]) for o in "ABC"]
  return out


def report(all_runs, root: str, budget: float, dataset: str, argv) -> str:
  text = sweep.header(
      "Table 2: shortcut options A/B/C (He et al. 2016, Table 3)", budget,
      dataset, argv, note="ours: test top-1 error in %; the paper's column "
      "is ImageNet ResNet-34 (10-crop top-1 error), so compare the order "
      "of the rows, not the numbers")
  rows = []
  for run in all_runs:
    result = sweep.results(root, run)
    rows.append([run.name, sweep.test_error(result),
                 result and result["params"], run.paper])
  return text + sweep.markdown_table(
      ["run", "error (ours)", "params (ours)", "paper (ImageNet-34)"], rows)


def main(argv):
  del argv
  all_runs = runs(FLAGS.depth, FLAGS.setting)
  sweep.finish(all_runs, "table2_shortcut_options",
               lambda *a: report(all_runs, *a),
               "cifar10" if FLAGS.setting == "cifar" else "imagenet2012",
               panels={"shortcut options": all_runs})

def define_flags() -> None:
  """Only when run as a script: scripts import each other."""
  flags.DEFINE_integer("depth", 20, "CIFAR depth (6n+2); ImageNet uses 34.")
  flags.DEFINE_enum("setting", "cifar", ["cifar", "imagenet"],
                    "CIFAR-10 nets, or the paper's ImageNet ResNet-34.")


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("root")
  app.run(main)
