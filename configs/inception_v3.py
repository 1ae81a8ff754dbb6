"""Inception v3 on ImageNet, Szegedy et al. 2016 ("Rethinking the Inception
Architecture for Computer Vision", Table 3: one model, one 299x299 crop,
21.2% top-1 and 5.6% top-5 error on the ILSVRC-2012 validation set).

Recipe (Section 8): RMSProp with decay 0.9 and epsilon 1.0, learning rate
0.045 decayed by 0.94 every two epochs, gradients clipped at norm 2.0, 100
epochs; label smoothing 0.1 (Section 7); the BN auxiliary head. What the
paper leaves out is taken from the authors' released training code
(tensorflow/models `inception`, TF-slim): RMSProp momentum 0.9, auxiliary
loss weight 0.4 (label-smoothed too), weight decay 4e-5 on weights only,
dropout keep 0.8.

Batch: the paper ran 50 asynchronous replicas of 32 images, each applying
its own gradient at 0.045. We run one synchronous batch of 256, 32 per
device on 8 accelerators, and keep 0.045: neither 32 (one replica) nor
1,600 (all replicas at once) reproduces asynchronous training, and 256 is
the batch the rest of this repository's ImageNet recipes use. The paper
evaluates a running average of the parameters, which we do not keep.

  python main.py --config=configs/inception_v3.py --workdir=runs/inception_v3 \
      --config.dataset.data_dir=/path/to/tensorflow_datasets
"""
import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.model.name = "inception_v3"
  default.imagenet(c, image_size=299)
  c.batch_size = 256
  c.num_epochs = 100.0
  default.exponential_rmsprop(c)
  c.optimizer.grad_clip_norm = 2.0
  c.label_smoothing = 0.1
  c.aux_loss_weights = (0.4,)
  return c
