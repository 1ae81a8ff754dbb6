"""VGG-16 with BatchNorm on CIFAR-10: configuration D of Simonyan and
Zisserman 2015 with a CIFAR head (dropout, FC-512, FC-512, FC-10).

The paper reports no CIFAR result; this widely used variant reaches about
93-94% test accuracy. Recipe: batch 128, SGD momentum 0.9, weight decay
5e-4, learning rate 0.1 divided by 10 at epochs 80 and 120, 160 epochs;
4-pixel pad, 32x32 crop, flip.

  python main.py --config=configs/vgg_cifar.py --workdir=runs/vgg16_cifar \
      --config.dataset.data_dir=../shared/data/cifar10
"""
import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.model.name = "vgg16_cifar"
  default.cifar10(c)
  c.num_epochs = 160.0
  default.sgd_steps(c, 0.1, 5e-4, (80, 120))
  return c
