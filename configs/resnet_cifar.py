"""ResNet on CIFAR-10, He et al. 2016 ("Deep Residual Learning"), Sec. 4.2.

Paper (Table 6): ResNet-20/32/44/56/110 reach 8.75/7.51/7.17/6.97/6.43% test
error. Recipe: batch 128, SGD momentum 0.9, weight decay 1e-4, learning rate
0.1 divided by 10 at 32k and 48k iterations, stop at 64k; ResNet-110 warms up
at 0.01 for its first 400 iterations; 4-pixel pad, 32x32 crop, flip;
option A shortcuts. (The paper trains on 45k images and keeps 5k for
validation; we train on all 50k.)

  python main.py --config=configs/resnet_cifar.py:110 --workdir=runs/r110 \
      --config.dataset.data_dir=../shared/data/cifar10
  ... --config.model.plain=True      # the plain twin (Fig. 6, left)
"""
import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  depth = int(arg or 20)
  c = default.get_config()
  # The paper's depths by their registered names; any other 6n+2 as such.
  c.model.name = f"resnet{depth}_cifar" if depth in (
      20, 32, 44, 56, 110, 1202) else "resnet_cifar"
  c.model.depth = depth
  cifar_recipe(c)
  if depth >= 110:
    c.schedule.warmup_steps = 400
    c.schedule.warmup_type = "constant"
    c.schedule.warmup_learning_rate = 0.01
  return c


def cifar_recipe(c: ml_collections.ConfigDict) -> None:
  """He et al.'s CIFAR recipe, shared by the residual-family configs."""
  default.cifar10(c)
  c.num_train_steps = 64_000
  default.sgd_steps(c, 0.1, 1e-4, (32_000, 48_000), unit="steps")
  c.log_every_steps = 100
  c.eval_every_steps = 2_000
  c.checkpoint_every_steps = 2_000
