"""ResNeXt-29 on CIFAR-10, Xie et al. 2017, Sec. 5.3.

Paper (Table 7): ResNeXt-29 8x64d 3.65%, 16x64d 3.58% test error. Recipe:
batch 128, 300 epochs, lr 0.1 /10 at epochs 150 and 225, weight decay 5e-4,
momentum 0.9, standard augmentation.

  python main.py --config=configs/resnext_cifar.py:8x64d --workdir=runs/rx29 \
      --config.dataset.data_dir=../shared/data/cifar10
"""
import ml_collections

from configs import default
from configs.resnet_cifar import cifar_recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "8x64d"
  c = default.get_config()
  c.model.name = f"resnext29_{variant}"
  cifar_recipe(c)
  c.num_train_steps = -1
  c.num_epochs = 300.0
  c.optimizer.weight_decay = 5e-4
  c.schedule.boundaries = (150, 225)
  c.schedule.boundaries_unit = "epochs"
  return c
