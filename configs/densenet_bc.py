"""DenseNet-BC (L=100, k=12) on CIFAR-10, Huang et al. 2017 ("Densely
Connected Convolutional Networks"): the headline run of this repository.

Paper (Table 2): 4.51% test error with standard augmentation (C10+), 0.8M
parameters (769,162 exactly). Recipe (Section 4.2): batch 64, 300 epochs,
SGD with Nesterov momentum 0.9, weight decay 1e-4, learning rate 0.1
divided by 10 at epochs 150 and 225; 4-pixel pad, 32x32 crop, flip;
bottleneck layers (4k maps), compression 0.5, a 24-map (2k) first conv.

  python main.py --config=configs/densenet_bc.py --workdir=runs/densenet_bc \
      --config.dataset.data_dir=../shared/data/cifar10

The other rows of Table 2 are configs/densenet_cifar.py:ARG.
"""
import ml_collections

from configs import densenet_cifar


def get_config() -> ml_collections.ConfigDict:
  return densenet_cifar.get_config("bc,100,12")
