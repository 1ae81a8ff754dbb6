"""DenseNet-BC on ImageNet, Huang et al. 2017 ("Densely Connected
Convolutional Networks"), Table 3: single-crop top-1 / top-5 error of
DenseNet-121 25.02 / 7.71, -169 23.80 / 6.85, -201 22.58 / 6.34, -264
22.15 / 6.12 (k=32; Table 1's layouts).

ARG is the depth: 121 (default), 169, 201 or 264.

Recipe (Section 4.2): batch 256, 90 epochs, SGD with Nesterov momentum 0.9,
weight decay 1e-4, learning rate 0.1 divided by 10 at epochs 30 and 60;
the fb.resnet.torch augmentation (ours: random-resized crops and flips,
without its colour jitter and lighting noise). BatchNorm statistics per
device, as in the authors' multi-GPU Torch training.

  python main.py --config=configs/densenet121.py --workdir=runs/densenet121 \
      --config.dataset.data_dir=/path/to/tensorflow_datasets
  ... --config.model.memory_efficient=True   # recompute concat-BN-ReLU-1x1
"""
import ml_collections

from configs import default

DEPTHS = (121, 169, 201, 264)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  depth = arg or "121"
  if not depth.isdigit() or int(depth) not in DEPTHS:
    raise ValueError(f"configs/densenet121.py:{arg} is unknown; use one of "
                     f"{', '.join(map(str, DEPTHS))}")
  c = default.get_config()
  c.model.name = f"densenet{depth}"
  default.imagenet(c)
  c.num_epochs = 90.0
  default.sgd_steps(c, 0.1, 1e-4, (30, 60))
  c.optimizer.nesterov = True
  c.batch_norm_sync = False
  return c
