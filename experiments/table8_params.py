"""Table 8: parameters and mult-adds of every registered model beside the
published numbers (the registry's `params`, `params_paper` and `flops`).

  python experiments/table8_params.py            # all models
  python experiments/table8_params.py --models=resnet50,vgg16

Counts come from `cnnflax.summary` on the model's registered input size and
class count (abstract evaluation: nothing is trained or even allocated).
Writes experiments/results/table8_params.md.
"""
from __future__ import annotations

import sys

from absl import app, flags

import sweep  # noqa: F401  (puts the repository on the path)
from cnnflax import models, summary

FLAGS = flags.FLAGS

COLUMNS = ["model", "input", "classes", "params (ours)",
           "params (standard code)", "params (paper)", "diff to paper %",
           "mult-adds (ours)", "mult-adds (published)", "diff %", "paper"]


def percent(ours: int, ref: float | None) -> str:
  return "-" if not ref else f"{100 * (ours - ref) / ref:+.2f}"


def row(name: str) -> list:
  info = models.model_info(name)
  model = models.get_model(name, num_classes=info.num_classes)
  counted = summary.count(model, info.input_shape)
  exact, paper = info.params, info.params_paper
  return [name, "x".join(map(str, info.input_shape)), info.num_classes,
          f"{counted['params']:,}",
          "-" if exact is None else f"{exact:,}",
          "-" if paper is None else f"{paper / 1e6:,.2f}M",
          percent(counted["params"], paper),
          f"{counted['flops'] / 1e6:,.1f}M",
          "-" if info.flops is None else f"{info.flops / 1e6:,.1f}M",
          percent(counted["flops"], info.flops), info.paper]


def build(names: list[str], argv: list[str]) -> str:
  rows = [row(n) for n in names]
  text = sweep.header(
      "Table 8: parameters and mult-adds of every registered model",
      None, "none (counted by cnnflax.summary, abstract evaluation)", argv,
      note="standard code = the exact count of the reference implementation "
      "the registry names (torchvision, timm, the authors' code) or, where "
      "none exists, ours; paper = the paper's rounded figure")
  return text + sweep.markdown_table(COLUMNS, rows)


def main(argv):
  del argv
  names = FLAGS.models or models.list_models()
  text = build(names, sys.argv)
  print(text)
  print("written to", sweep.save(FLAGS.out, text))


def define_flags() -> None:
  """Only when run as a script: scripts import each other."""
  flags.DEFINE_list("models", [], "Models to count; empty: every registered one.")
  flags.DEFINE_string("out", "table8_params.md", "File under experiments/results.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
