"""ResNet-110 with stochastic depth on CIFAR-10, Huang et al. 2016.

Paper (Table 1): 5.25% test error (constant depth: 6.41%), and about 25%
less training time. Recipe: linear decay to p_L = 0.5, 500 epochs, batch
128, lr 0.1 /10 at epochs 250 and 375, weight decay 1e-4, Nesterov momentum
0.9, standard augmentation; the residual branch of a dropped block is skipped
for the whole mini-batch.

  python main.py --config=configs/stochastic_depth_cifar.py --workdir=runs/sd110 \
      --config.dataset.data_dir=../shared/data/cifar10
  ... --config.model.survival_prob_last=1.0   # the constant-depth baseline
"""
import ml_collections

from configs import default
from configs.resnet_cifar import cifar_recipe


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.model.name = "stochastic_depth_resnet110_cifar"
  c.model.survival_prob_last = 0.5
  c.model.stochastic_mode = "batch"
  cifar_recipe(c)
  c.num_train_steps = -1
  c.num_epochs = 500.0
  c.optimizer.nesterov = True
  c.schedule.boundaries = (250, 375)
  c.schedule.boundaries_unit = "epochs"
  return c
