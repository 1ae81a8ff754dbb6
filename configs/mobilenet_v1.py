"""MobileNet v1 on ImageNet, Howard et al. 2017 ("MobileNets: Efficient
Convolutional Neural Networks for Mobile Vision Applications").

Paper, top-1 accuracy (Tables 6-7): 1.0 MobileNet-224 70.6% (569M
mult-adds, 4.2M parameters); width 0.75 68.4%, 0.5 63.7%, 0.25 50.6%;
resolution 192 69.1%, 160 67.2%, 128 64.4%.

ARG is ALPHA[,RESOLUTION]: the width multiplier and the input size
(default 1.0,224), e.g. :0.5,160.

Recipe. The paper trains with asynchronous RMSProp "similar to Inception
V3", with less augmentation and regularisation and little or no weight
decay on the depthwise filters, and gives no numbers. We use the Inception
v3 recipe it points to (configs/inception_v3.py, from the authors' TF-slim
code) without what the paper drops: RMSProp decay 0.9, momentum 0.9,
epsilon 1.0, learning rate 0.045 decayed by 0.94 every 2 epochs, 100
epochs, synchronous batch 256, weight decay 4e-5 on weights only (the
depthwise filters included: the optimizer has no per-layer mask), no label
smoothing, dropout 0.001 before the classifier (TF-slim), random-resized
crops and flips.

  python main.py --config=configs/mobilenet_v1.py --workdir=runs/mobilenet_v1 \
      --config.dataset.data_dir=/path/to/tensorflow_datasets
"""
import ml_collections

from configs import default


def parse(arg: str | None, config: str,
          words: tuple = ()) -> tuple[float, int, set]:
  """'ALPHA[,RESOLUTION][,WORD]' -> (alpha, resolution, words given)."""
  tokens = (arg or "1.0").split(",")
  given = {t for t in tokens if t in words}
  numbers = [t for t in tokens if t not in words]
  try:
    alpha = float(numbers[0])
    size = int(numbers[1]) if len(numbers) > 1 else 224
    if len(numbers) > 2 or alpha <= 0 or size < 32:
      raise ValueError
  except (ValueError, IndexError):
    extra = "".join(f"[,{w}]" for w in words)
    raise ValueError(f"configs/{config}:{arg} is unknown; use "
                     f"ALPHA[,RESOLUTION]{extra}, e.g. :1.0 or :0.5,160"
                     ) from None
  return alpha, size, given


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  alpha, size, _ = parse(arg, "mobilenet_v1.py")
  c = default.get_config()
  c.model.name = "mobilenet_v1"
  c.model.width_multiplier = alpha
  default.imagenet(c, image_size=size)
  c.num_epochs = 100.0
  default.exponential_rmsprop(c)
  return c
