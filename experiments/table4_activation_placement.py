"""Table 4: where the activations go in a residual unit ("Identity Mappings
in Deep Residual Networks", He et al. 2016, Table 2): ResNet-110 (basic
units) and ResNet-164 (bottlenecks) on CIFAR-10, one run per
`model.unit` and depth.

  python experiments/table4_activation_placement.py --mode=run \\
      --budget=0.05 --root=runs/table4 --data_dir=../shared/data/cifar10

Writes experiments/results/table4_activation_placement.{md,png}.
"""
from __future__ import annotations

from absl import app, flags

import sweep

# unit -> (figure, paper's test error % for ResNet-110, ResNet-164).
PAPER = {"original": ("4(a)", 6.61, 5.93),
         "bn_after_add": ("4(b)", 8.17, 6.50),
         "relu_before_add": ("4(c)", 7.84, 6.14),
         "relu_only_preact": ("4(d)", 6.71, 5.91),
         "full_preact": ("4(e)", 6.37, 5.46)}

FLAGS = flags.FLAGS


def runs(depths) -> list[sweep.Run]:
  out = []
  for depth in map(int, depths):
    column = 1 if depth == 110 else 2 if depth == 164 else None
    for unit, paper in PAPER.items():
      out.append(sweep.Run(
          f"{unit}_{depth}", f"configs/preact_resnet_cifar.py:{depth}",
          {"model.unit": unit}, paper=paper[column] if column else None))
  return out


def report(all_runs, root: str, budget: float, dataset: str, argv) -> str:
  text = sweep.header(
      "Table 4: activation placement (He et al. 2016, Identity Mappings, "
      "Table 2)", budget, dataset, argv, note="test error in %")
  depths = sorted({int(r.name.rsplit("_", 1)[1]) for r in all_runs})
  by_name = {r.name: r for r in all_runs}
  rows = []
  for unit, (fig, *_) in PAPER.items():
    row = [unit, fig]
    for depth in depths:
      run = by_name[f"{unit}_{depth}"]
      row += [sweep.test_error(sweep.results(root, run)), run.paper]
    rows.append(row)
  columns = ["unit", "Fig."]
  for depth in depths:
    columns += [f"ResNet-{depth} (ours)", f"ResNet-{depth} (paper)"]
  return text + sweep.markdown_table(columns, rows)


def main(argv):
  del argv
  all_runs = runs(FLAGS.depths)
  sweep.finish(all_runs, "table4_activation_placement",
               lambda *a: report(all_runs, *a),
               panels={f"ResNet-{d}": [r for r in all_runs
                                       if r.name.endswith(f"_{d}")]
                       for d in FLAGS.depths})

def define_flags() -> None:
  """Only when run as a script: scripts import each other."""
  flags.DEFINE_list("depths", ["110", "164"], "ResNet depths: 6n+2 gives "
                    "basic units, 9n+2 bottlenecks (the paper: 110 and 164).")


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("root")
  app.run(main)
