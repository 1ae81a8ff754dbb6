"""VGG on ImageNet, Simonyan and Zisserman 2015 (Table 3, single-scale
evaluation, training scale S=256: top-1 error A 29.6%, A-LRN 29.7%, B 28.7%,
C 28.1%, D 27.0%, E 27.3%).

Recipe (Section 3.1): batch 256, SGD momentum 0.9, weight decay 5e-4,
dropout 0.5 in the first two FC layers, learning rate 0.01 divided by 10
three times, 74 epochs. The paper divided the rate when validation accuracy
stopped improving; we fix the divisions at epochs 30, 50 and 65. It
trained the deeper nets from configuration A's weights; we train every one
from He-normal init. Training crops are the paper's: random 224 crops of
the image rescaled to short side S=256, flips, and AlexNet's colour shift.
Multi-scale training (Table 3, S in [256, 512]: D 25.6% top-1 at Q=384)
is `--config.dataset.scale_range="(256, 512)"`.

  python main.py --config=configs/vgg.py:D --workdir=runs/vgg16 \
      --config.dataset.data_dir=/path/to/tensorflow_datasets
  ... --config.model.batch_norm=True   # the BN twin (vgg16_bn)

ARG is the column of Table 1: A, A-LRN, B, C, D or E (default D).
"""
import ml_collections

from configs import default

MODELS = {"A": "vgg11", "A-LRN": "vgg11_lrn", "B": "vgg13", "C": "vgg16_c",
          "D": "vgg16", "E": "vgg19"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  column = arg or "D"
  if column not in MODELS:
    raise ValueError(f"configs/vgg.py:{column} is unknown; use one of "
                     f"{', '.join(MODELS)}")
  c = default.get_config()
  c.model.name = MODELS[column]
  default.imagenet(c)
  c.num_epochs = 74.0
  default.sgd_steps(c, 0.01, 5e-4, (30, 50, 65))
  c.dataset.train_crop = "scale"
  c.dataset.scale_range = (256, 256)
  c.dataset.pca_noise = 0.1
  return c
