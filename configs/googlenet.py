"""GoogLeNet (Inception v1) on ImageNet, Szegedy et al. 2015 (Table 3: one
model, one crop, 10.07% top-5 error on the ILSVRC-2014 validation set; the
paper reports no top-1).

Recipe (Section 6): SGD momentum 0.9, the learning rate decreased by 4%
every 8 epochs (exponential, staircase), auxiliary losses weighted 0.3,
dropout 0.4 (0.7 in the auxiliary heads), random crops of 8%-100% of the
image area with aspect ratios 3/4-4/3 (our "imagenet" augmentation). The
paper gives no batch size, base rate or weight decay (asynchronous
DistBelief training). Ours: batch 256, learning rate 0.08 (the Caffe
reproduction's 0.01 at batch 32, scaled linearly) after a 2-epoch linear
warm-up, weight decay 2e-4 (Caffe), 90 epochs.

  python main.py --config=configs/googlenet.py --workdir=runs/googlenet \
      --config.dataset.data_dir=/path/to/tensorflow_datasets
  ... --config.model.name=googlenet_bn   # BatchNorm in place of LRN
"""
import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.model.name = "googlenet"
  default.imagenet(c)
  c.num_epochs = 90.0
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.08
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 2e-4
  c.schedule.name = "exponential"
  c.schedule.decay_factor = 0.96
  c.schedule.decay_every_epochs = 8.0
  c.schedule.warmup_epochs = 2.0
  c.aux_loss_weights = (0.3, 0.3)
  return c
