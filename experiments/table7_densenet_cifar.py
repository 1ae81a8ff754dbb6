"""Table 7: DenseNet on CIFAR (Huang et al. 2017, Table 2), the CIFAR rows:
six nets by four columns (C10 and C100 without augmentation, C10+ and
C100+ with it). Which rows and columns run are flags; CIFAR-100 comes
through TFDS.

  python experiments/table7_densenet_cifar.py --mode=run --columns=C10+ \\
      --rows=bc,100,12 --budget=0.01 --root=runs/table7 \\
      --data_dir=../shared/data/cifar10

Writes experiments/results/table7_densenet_cifar.{md,png}.
"""
from __future__ import annotations

from absl import app, flags

import sweep

# Table 2, test error (%): row -> (C10, C10+, C100, C100+); None: not run.
PAPER = {"40,12": (7.00, 5.24, 27.55, 24.42),
         "100,12": (5.77, 4.10, 23.79, 20.20),
         "100,24": (5.83, 3.74, 23.42, 19.25),
         "bc,100,12": (5.92, 4.51, 24.15, 22.27),
         "bc,250,24": (5.19, 3.62, 19.64, 17.60),
         "bc,190,40": (None, 3.46, None, 17.18)}
COLUMNS = {"C10": ",noaug", "C10+": "", "C100": ",noaug,c100",
           "C100+": ",c100"}

FLAGS = flags.FLAGS


def runs(rows, columns) -> list[sweep.Run]:
  out = []
  for row in rows:
    for column in columns:
      paper = PAPER.get(row, (None,) * 4)[list(COLUMNS).index(column)]
      out.append(sweep.Run(f"{row.replace(',', '_')}_{column}",
                           f"configs/densenet_cifar.py:{row}{COLUMNS[column]}",
                           paper=paper))
  return out


def report(all_runs, root: str, budget: float, dataset: str, argv, rows,
           columns) -> str:
  text = sweep.header(
      "Table 7: DenseNet on CIFAR (Huang et al. 2017, Table 2)", budget,
      dataset, argv, note="test error in %; '+': standard augmentation")
  by_name = {r.name: r for r in all_runs}
  table_rows = []
  for row in rows:
    cells = [row]
    for column in columns:
      run = by_name[f"{row.replace(',', '_')}_{column}"]
      result = sweep.results(root, run)
      cells += [sweep.test_error(result), run.paper]
    table_rows.append(cells)
  names = ["model ([bc,]L,k)"]
  for column in columns:
    names += [f"{column} (ours)", f"{column} (paper)"]
  return text + sweep.markdown_table(names, table_rows)


def main(argv):
  del argv
  all_runs = runs(FLAGS.rows, FLAGS.columns)
  sweep.finish(all_runs, "table7_densenet_cifar",
               lambda *a: report(all_runs, *a, FLAGS.rows, FLAGS.columns),
               "CIFAR", panels={c: [r for r in all_runs
                                    if r.name.endswith("_" + c)]
                                for c in FLAGS.columns}, x="epoch")

def define_flags() -> None:
  """Only when run as a script: scripts import each other."""
  flags.DEFINE_multi_string("rows", list(PAPER), "Table 2 rows as "
                            "configs/densenet_cifar.py args ([bc,]L,k).")
  flags.DEFINE_list("columns", ["C10+"], "Any of C10, C10+, C100, C100+.")


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("root")
  app.run(main)
