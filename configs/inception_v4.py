"""Inception-v4 on ImageNet, Szegedy et al. 2017 ("Inception-v4,
Inception-ResNet and the Impact of Residual Connections on Learning",
Table 2: one model, one crop, 20.0% top-1 and 5.0% top-5 error on the
ILSVRC-2012 validation set).

Recipe (Section 4): RMSProp with decay 0.9 and epsilon 1.0, learning rate
0.045 decayed by 0.94 every two epochs, dropout keep 0.8 (Fig. 9). The
paper states nothing else (20 asynchronous replicas, no batch size or epoch
count), so the rest is Inception v3's recipe (configs/inception_v3.py):
batch 256, 100 epochs, RMSProp momentum 0.9, gradient clipping 2.0, label
smoothing 0.1, weight decay 4e-5. No auxiliary head (the paper shows none).

  python main.py --config=configs/inception_v4.py --workdir=runs/inception_v4 \
      --config.dataset.data_dir=/path/to/tensorflow_datasets
"""
import ml_collections

from configs import inception_v3


def get_config() -> ml_collections.ConfigDict:
  c = inception_v3.get_config()
  c.model.name = "inception_v4"
  c.aux_loss_weights = ()
  return c
