"""Inception-ResNet-v2 on ImageNet, Szegedy et al. 2017 (Table 2: one
model, one crop, 19.9% top-1 and 4.9% top-5 error on the ILSVRC-2012
validation set; Inception-ResNet-v1: 21.3% and 5.5%).

Recipe (Section 4), as for Inception-v4 (configs/inception_v4.py): RMSProp
with decay 0.9 and epsilon 1.0, learning rate 0.045 decayed by 0.94 every
two epochs, dropout keep 0.8, and Inception v3's recipe for what the paper
leaves out. Residual scaling 0.17 / 0.1 / 0.2 on the A / B / C blocks
(Section 3.3 asks for 0.1-0.3; these are the released model's).

  python main.py --config=configs/inception_resnet_v2.py --workdir=runs/irn_v2 \
      --config.dataset.data_dir=/path/to/tensorflow_datasets
  python main.py --config=configs/inception_resnet_v2.py:v1 ...   # -v1
  ... --config.model.residual_scale=0.3   # one factor for every block
"""
import ml_collections

from configs import inception_v4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  version = arg or "v2"
  if version not in ("v1", "v2"):
    raise ValueError(f"configs/inception_resnet_v2.py:{arg}: choose v1 or v2")
  c = inception_v4.get_config()
  c.model.name = f"inception_resnet_{version}"
  return c
