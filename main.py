"""Trains and evaluates one config.

  python main.py --config=configs/default.py --workdir=/tmp/cnnflax/default
  python main.py --config=configs/lenet5.py --workdir=DIR --config.seed=1
"""
import sys

if __name__ == "__main__":  # before jax loads: nothing before it survives
  from cnnflax import backend
  backend.start()

from absl import flags, logging
from ml_collections import config_flags

from cnnflax import cli, train
from cnnflax.errors import Stopped

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")
config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file.", lock_config=False,
    accept_new_attributes=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv  # cli.run refuses stray arguments
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except Stopped as e:  # preempted or interrupted: resumable, not an error
    logging.warning("%s", e)
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  cli.run(main)
