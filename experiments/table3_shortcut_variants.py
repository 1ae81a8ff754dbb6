"""Table 3: the shortcut variants of "Identity Mappings in Deep Residual
Networks" (He et al. 2016, Table 1) on CIFAR-10, ResNet-110 by default
(--depth). Each variant is a config switch (`model.shortcut_variant`,
`shortcut_scale`, `scale_residual`, `gate_bias_init`).

  python experiments/table3_shortcut_variants.py --mode=run --depth=110 \\
      --budget=0.05 --root=runs/table3 --data_dir=../shared/data/cifar10

Writes experiments/results/table3_shortcut_variants.{md,png}.
"""
from __future__ import annotations

from absl import app, flags

import sweep

FLAGS = flags.FLAGS

# (name, on the shortcut, on F, overrides, paper's test error in %;
# "fail": above 20%).
VARIANTS = (
    ("original", "1", "1", {}, 6.61),
    ("scaling_0", "0", "1", {"shortcut_variant": "scaling",
                             "shortcut_scale": 0.0}, "fail"),
    ("scaling_0.5", "0.5", "1", {"shortcut_variant": "scaling",
                                 "shortcut_scale": 0.5}, "fail"),
    ("scaling_0.5_both", "0.5", "0.5", {"shortcut_variant": "scaling",
                                        "shortcut_scale": 0.5,
                                        "scale_residual": True}, 12.35),
    ("exclusive_gating_b0", "1-g(x)", "g(x)", {
        "shortcut_variant": "exclusive_gating", "gate_bias_init": 0.0},
     "fail"),
    ("exclusive_gating_b-6", "1-g(x)", "g(x)", {
        "shortcut_variant": "exclusive_gating", "gate_bias_init": -6.0},
     8.70),
    ("exclusive_gating_b-7", "1-g(x)", "g(x)", {
        "shortcut_variant": "exclusive_gating", "gate_bias_init": -7.0},
     9.81),
    ("shortcut_gating_b0", "1-g(x)", "1", {
        "shortcut_variant": "shortcut_gating", "gate_bias_init": 0.0}, 12.86),
    ("shortcut_gating_b-6", "1-g(x)", "1", {
        "shortcut_variant": "shortcut_gating", "gate_bias_init": -6.0}, 6.91),
    ("conv1x1", "1x1 conv", "1", {"shortcut_variant": "conv1x1"}, 12.22),
    ("dropout", "dropout 0.5", "1", {"shortcut_variant": "dropout",
                                     "shortcut_dropout": 0.5}, "fail"),
)


def runs(depth: int = 110) -> list[sweep.Run]:
  return [sweep.Run(name, f"configs/resnet_cifar.py:{depth}",
                    {f"model.{k}": v for k, v in fields.items()}, paper=err)
          for name, _, _, fields, err in VARIANTS]


def report(all_runs, root: str, budget: float, dataset: str, argv) -> str:
  text = sweep.header(
      "Table 3: shortcut variants (He et al. 2016, Identity Mappings, "
      "Table 1)", budget, dataset, argv, note="test error in %; 'fail': "
      "the paper's error was above 20%")
  rows = [[run.name, short, on_f, sweep.test_error(sweep.results(root, run)),
           run.paper] for run, (_, short, on_f, _, _) in zip(all_runs,
                                                             VARIANTS)]
  return text + sweep.markdown_table(
      ["case", "on shortcut", "on F", "error (ours)", "error (paper)"], rows)


def main(argv):
  del argv
  all_runs = runs(FLAGS.depth)
  sweep.finish(all_runs, "table3_shortcut_variants",
               lambda *a: report(all_runs, *a),
               panels={"shortcut variants": all_runs})

def define_flags() -> None:
  """Only when run as a script: scripts import each other."""
  flags.DEFINE_integer("depth", 110, "Depth of the CIFAR ResNet (6n+2).")


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("root")
  app.run(main)
