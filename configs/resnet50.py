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
  c.dataset.name = "imagenet2012"
  c.dataset.image_size = 224
  c.dataset.augment = "imagenet"
  c.dataset.prefetch = 4
  c.batch_size = 256
  c.eval_batch_size = 500
  c.num_epochs = 90.0
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = "piecewise"
  c.schedule.boundaries = (30, 60)
  c.schedule.boundaries_unit = "epochs"
  c.batch_norm_sync = False
  c.log_every_steps = 100
  c.eval_every_steps = -1
  c.checkpoint_every_steps = 5_000
  return c
