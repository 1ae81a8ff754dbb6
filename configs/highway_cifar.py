"""Convolutional highway network on CIFAR-10, Srivastava, Greff and
Schmidhuber 2015 (Table 3: 19 layers, 2.3M parameters, 92.40% accuracy,
i.e. 7.60% error).

Our net (cnnflax/models/highway.py): 18 3x3 convolutional layers in three
stages of 32, 80 and 128 maps (the first of each stage plain, the rest
highway layers), 2x2 max-pooling between stages, global average pooling
and a linear layer: 2.26M parameters. The paper's own layer table was not
available to us. Recipe (ours; the paper gives none in the text): batch
128, SGD momentum 0.9, weight decay 5e-4, learning rate 0.05 divided by 10
at epochs 80 and 120, 160 epochs; 4-pixel pad, 32x32 crop, flip.

  python main.py --config=configs/highway_cifar.py --workdir=runs/hw_cifar \
      --config.dataset.data_dir=../shared/data/cifar10
  python main.py --config=configs/highway_cifar.py:plain ...  # plain twin
"""
import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "highway", "plain"):
    raise ValueError(f"configs/highway_cifar.py:{arg} is unknown; use "
                     "highway or plain")
  c = default.get_config()
  c.model.name = "plain_cifar" if arg == "plain" else "highway_cifar"
  default.cifar10(c)
  c.num_epochs = 160.0
  default.sgd_steps(c, 0.05, 5e-4, (80, 120))
  return c
