"""LeNet-5 on MNIST, after LeCun et al. 1998 (paper: 0.95% test error).

The paper trains 20 passes with a hand-set learning-rate ladder under a
diagonal Levenberg-Marquardt method; we use SGD with momentum and a cosine
schedule over 20 epochs, on the digits padded to 32x32 as in the paper.

  python main.py --config=configs/lenet5.py --workdir=/tmp/cnnflax/lenet5 \
      --config.dataset.data_dir=../shared/data/mnist
"""
import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.model.name = "lenet5"
  c.dataset.name = "mnist"
  c.batch_size = 128
  c.num_epochs = 20.0
  c.optimizer.learning_rate = 0.05
  c.optimizer.weight_decay = 1e-4
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  return c
