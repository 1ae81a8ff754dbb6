"""MobileNet v2 on ImageNet, Sandler et al. 2018 ("MobileNetV2: Inverted
Residuals and Linear Bottlenecks"), Table 4: 72.0% top-1 at 1.0-224, 300M
mult-adds, 3.4M parameters (3,504,872 in torchvision's count).

ARG is ALPHA[,RESOLUTION][,sgd] (default 1.0,224), e.g. :1.4 or :0.5,160.

Recipe (Section 6.1): RMSProp with decay 0.9 and momentum 0.9, learning
rate 0.045 decayed by 0.98 per epoch, weight decay 4e-5, batch 96 on each
of 16 GPU workers (asynchronous). We keep the optimizer, rate, decay and
weight decay, run one synchronous batch of 256 (32 per device on 8; the
repository's ImageNet batch, as configs/inception_v3.py argues), take
RMSProp's epsilon 1.0 from the authors' TF-slim code, decay weights only,
and train 300 epochs (the paper gives no length; torchvision's recipe uses
300 with the same per-epoch decay). Dropout 0.2 before the classifier.

`sgd` is torchvision's recipe, which reproduces 71.88% top-1: SGD momentum
0.9, batch 256, learning rate 0.045 decayed by 0.98 per epoch, weight decay
4e-5 on every parameter, 300 epochs.

  python main.py --config=configs/mobilenet_v2.py --workdir=runs/mobilenet_v2 \
      --config.dataset.data_dir=/path/to/tensorflow_datasets
  ... --config=configs/mobilenet_v2.py:1.0,224,sgd   # torchvision's recipe
"""
import ml_collections

from configs import default
from configs.mobilenet_v1 import parse


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  alpha, size, words = parse(arg, "mobilenet_v2.py", ("sgd",))
  c = default.get_config()
  c.model.name = "mobilenet_v2"
  c.model.width_multiplier = alpha
  default.imagenet(c, image_size=size)
  c.num_epochs = 300.0
  c.optimizer.learning_rate = 0.045
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 4e-5
  c.schedule.name = "exponential"
  c.schedule.decay_factor = 0.98
  c.schedule.decay_every_epochs = 1.0
  if "sgd" in words:
    c.optimizer.name = "sgd"
    return c
  c.optimizer.name = "rmsprop"
  c.optimizer.rmsprop_decay = 0.9
  c.optimizer.epsilon = 1.0
  c.optimizer.decay_bias_and_bn = False
  return c
