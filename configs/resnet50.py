"""ResNet-50 on ImageNet, He et al. 2016 (Table 3: 22.85% top-1 error,
10-crop; single 224 crop is about 24%).

Recipe: batch 256, SGD momentum 0.9, weight decay 1e-4, learning rate 0.1
divided by 10 at epochs 30 and 60, 90 epochs; random-resized crops and
flips; BatchNorm statistics per device as in the original multi-GPU
training. Option B shortcuts.

  python main.py --config=configs/resnet50.py --workdir=runs/r50 \
      --config.dataset.data_dir=/path/to/tensorflow_datasets
"""
import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  depth = int(arg or 50)
  c = default.get_config()
  c.model.name = f"resnet{depth}"
  default.imagenet(c)
  c.num_epochs = 90.0
  default.sgd_steps(c, 0.1, 1e-4, (30, 60))
  c.batch_norm_sync = False
  c.eval_every_steps = -1
  return c
