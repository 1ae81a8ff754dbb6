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
  c.dataset.name = "cifar10"
  c.dataset.image_size = 32
  c.dataset.augment = "cifar"
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 160.0
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.schedule.name = "piecewise"
  c.schedule.boundaries = (80, 120)
  c.schedule.boundaries_unit = "epochs"
  c.schedule.decay_factor = 0.1
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2_000
  return c
