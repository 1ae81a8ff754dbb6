"""Pre-activation ResNet on CIFAR, He et al. 2016 ("Identity Mappings").

Paper (Table 4, CIFAR-10): ResNet-110 6.37%, ResNet-164 5.46%,
ResNet-1001 4.92% test error with full pre-activation units. Recipe as in
"Deep Residual Learning": batch 128, lr 0.1 /10 at 32k and 48k, 64k
iterations, weight decay 1e-4, momentum 0.9; the 110- and 1001-layer nets
warm up at 0.01 for 400 iterations.

  python main.py --config=configs/preact_resnet_cifar.py:164 --workdir=runs/p164 \
      --config.dataset.data_dir=../shared/data/cifar10
  ... --config.model.unit=relu_before_add   # Table 2's activation ablations
"""
import ml_collections

from cnnflax import models
from configs import default
from configs.resnet_cifar import cifar_recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  depth = int(arg or 164)
  c = default.get_config()
  # The paper's depths by their registered names; others as the family
  # with basic (6n+2 below 164, as ResNet-110) or bottleneck blocks.
  registered = f"preact_resnet{depth}_cifar"
  if registered in models.list_models():
    c.model.name = registered
  else:
    c.model.name = "preact_resnet_cifar"
    c.model.block = ("basic" if depth % 6 == 2 and depth < 164
                     else "bottleneck")
  c.model.depth = depth
  cifar_recipe(c)
  if depth in (110, 1001):
    c.schedule.warmup_steps = 400
    c.schedule.warmup_type = "constant"
    c.schedule.warmup_learning_rate = 0.01
  return c
