"""BN-Inception ("Inception v2") on ImageNet, Ioffe and Szegedy 2015
(Fig. 3: BN-x30, one network, single crop, 74.8% top-1 accuracy on the
ILSVRC-2012 validation set; 25.2% error).

Recipe (Section 4.2.1, the changes that make BN-x30): the learning rate 30x
Inception's 0.0015 (0.045 at the paper's mini-batch of 32), no dropout, L2
weight decay 5x smaller, the exponential decay 6x faster, no LRN, lighter
photometric distortions (ours has none). SGD with momentum 0.9. Ours: batch
256 with the rate scaled linearly (0.36) after a 2-epoch linear warm-up;
weight decay 4e-5 (GoogLeNet's Caffe 2e-4 / 5); GoogLeNet's decay of 4%
every 8 epochs made 6x faster, 4% every 4/3 epochs; 100 epochs (the paper
gives steps only: 2.7M steps of 32, about 67 epochs, to reach 72.2%).

  python main.py --config=configs/bn_inception.py --workdir=runs/bn_inception \
      --config.dataset.data_dir=/path/to/tensorflow_datasets
  ... --config.model.conv1_depth_multiplier=0   # ordinary 7x7 conv1
"""
import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.model.name = "bn_inception"
  default.imagenet(c)
  c.num_epochs = 100.0
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.045 * 256 / 32
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 4e-5
  c.schedule.name = "exponential"
  c.schedule.decay_factor = 0.96
  c.schedule.decay_every_epochs = 8.0 / 6.0
  c.schedule.warmup_epochs = 2.0
  return c
