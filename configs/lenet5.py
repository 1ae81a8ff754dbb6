"""LeNet-5 on MNIST, after LeCun et al. 1998 (paper: 0.95% test error).

The paper trains 20 passes with a hand-set learning-rate ladder under a
diagonal Levenberg-Marquardt method; we use SGD with momentum and a cosine
schedule over 20 epochs, on the digits padded to 32x32 as in the paper.

  python main.py --config=configs/lenet5.py --workdir=/tmp/cnnflax/lenet5 \
      --config.dataset.data_dir=../shared/data/mnist

`--config=configs/lenet5.py:modern` trains the modern twin (relu, max-pool,
full C3) with the same recipe.
"""
import ml_collections

from configs import default


VARIANTS = {"paper": "lenet5", "modern": "lenet5_modern"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default.get_config()
  variant = arg or "paper"
  if variant not in VARIANTS:
    raise ValueError(f"configs/lenet5.py:{variant} is unknown; use "
                     f"{' or '.join(VARIANTS)}")
  c.model.name = VARIANTS[variant]
  c.dataset.name = "mnist"
  c.batch_size = 128
  c.num_epochs = 20.0
  c.optimizer.learning_rate = 0.05
  c.optimizer.weight_decay = 1e-4
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  return c
