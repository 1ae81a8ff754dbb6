"""Network in Network on CIFAR-10, Lin, Chen and Yan 2014 (Table 1: 10.41%
test error with dropout, 8.81% with dropout and translation/flip
augmentation).

Recipe (Section 4.1): batch 128, dropout 0.5 between the mlpconv blocks,
the learning rate divided by 10 twice so that it ends at 1% of its start
(the paper: when training accuracy stopped improving). Ours: SGD momentum
0.9, weight decay 1e-4 (the authors' Caffe solver), learning rate 0.05
divided by 10 at epochs 60 and 90, 120 epochs; 4-pixel pad, 32x32 crop,
flip. The paper whitened the images (global contrast normalisation + ZCA);
we normalise each channel.

With He initialisation the paper's net (no BatchNorm) does not start in
this recipe: its ReLU'd class maps die and the loss stays at ln 10 (seen in
short runs; the authors' Caffe net used hand-set Gaussian stds and per-layer
learning rates). `--config.model.batch_norm=True` trains from the start.

  python main.py --config=configs/nin_cifar.py --workdir=runs/nin_cifar \
      --config.dataset.data_dir=../shared/data/cifar10
"""
import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.model.name = "nin_cifar"
  default.cifar10(c)
  c.num_epochs = 120.0
  default.sgd_steps(c, 0.05, 1e-4, (60, 90))
  return c
