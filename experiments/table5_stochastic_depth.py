"""Table 5: stochastic depth against constant depth on ResNet-110 (Huang et
al. 2016, Table 1 and Fig. 3): test error and training time, with the test
error curves against epochs.

  python experiments/table5_stochastic_depth.py --mode=run --budget=0.02 \\
      --root=runs/table5 --data_dir=../shared/data/cifar10

Writes experiments/results/table5_stochastic_depth.{md,png}.
"""
from __future__ import annotations

from absl import app, flags

import sweep

# Huang et al. 2016, Table 1, CIFAR-10+: test error (%); the paper reports
# about 25% less training time with stochastic depth (p_L = 0.5).
PAPER = {"constant_depth": 6.41, "stochastic_depth": 5.25}
PAPER_TIME = {"constant_depth": 1.0, "stochastic_depth": 0.75}

FLAGS = flags.FLAGS


def runs(depth: int = 110) -> list[sweep.Run]:
  config = "configs/stochastic_depth_cifar.py"
  fields = {"model.depth": depth}
  return [sweep.Run("constant_depth", config,
                    {**fields, "model.survival_prob_last": 1.0},
                    paper=PAPER["constant_depth"]),
          sweep.Run("stochastic_depth", config, fields,
                    paper=PAPER["stochastic_depth"])]


def report(all_runs, root: str, budget: float, dataset: str, argv) -> str:
  text = sweep.header(
      "Table 5: stochastic depth vs constant depth (Huang et al. 2016)",
      budget, dataset, argv, note="test error in %; time: training wall "
      "clock (evaluations included) relative to constant depth")
  results = {r.name: sweep.results(root, r) for r in all_runs}
  base = results["constant_depth"]
  rows = []
  for run in all_runs:
    result = results[run.name]
    wall = result and result["wall_s"]
    rows.append([run.name, sweep.test_error(result), run.paper, wall,
                 wall / base["wall_s"] if wall and base else None,
                 PAPER_TIME[run.name]])
  return text + sweep.markdown_table(
      ["run", "error (ours)", "error (paper)", "train wall s (ours)",
       "time vs constant (ours)", "time vs constant (paper)"], rows)


def main(argv):
  del argv
  all_runs = runs(FLAGS.depth)
  sweep.finish(all_runs, "table5_stochastic_depth",
               lambda *a: report(all_runs, *a),
               panels={f"ResNet-{FLAGS.depth} on CIFAR-10": all_runs},
               x="epoch")

def define_flags() -> None:
  """Only when run as a script: scripts import each other."""
  flags.DEFINE_integer("depth", 110, "Depth of the CIFAR ResNet (6n+2).")


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("root")
  app.run(main)
