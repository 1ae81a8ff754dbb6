"""Highway vs plain fully connected nets on MNIST, Srivastava, Greff and
Schmidhuber 2015 (Figure 1: at depths 10, 20, 50 and 100 the highway nets
(width 50) keep training well while plain nets (width 71) get worse with
depth and fail at 100 layers).

ARG is DEPTH or DEPTH,plain: `:50` is a 50-layer highway net, `:50,plain`
its plain twin (default 100). Depth counts the first plain layer that
changes dimensionality, not the softmax layer; MNIST is used at its own
28x28 (784 inputs, as in the paper).

The paper tunes learning rate, momentum and gate bias for every network by
random search. Ours is one recipe for all: batch 128, SGD momentum 0.9,
learning rate 0.01, cosine over 50 epochs, no weight decay, transform-gate
bias -2 below 50 layers and -4 from 50 on (change with
--config.model.gate_bias_init; see the comment in get_config).

  python main.py --config=configs/highway_mnist.py:50,plain \
      --workdir=runs/plain50 --config.dataset.data_dir=../shared/data/mnist
"""
import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  depth, _, kind = (arg or "100").partition(",")
  if not depth.isdigit() or kind not in ("", "plain", "highway"):
    raise ValueError(f"configs/highway_mnist.py:{arg} is unknown; use DEPTH "
                     "or DEPTH,plain, e.g. :50 or :50,plain")
  plain = kind == "plain"
  c = default.get_config()
  c.model.name = "plain_mnist" if plain else "highway_mnist"
  c.model.depth = int(depth)
  c.model.width = 71 if plain else 50
  if not plain:
    # At init each highway layer keeps about 1 - sigmoid(b) of its input's
    # signal: with b = -2, 100 layers leave ~1e-4 of it and the net does not
    # start to learn in our recipe; b = -4 keeps ~0.2 and it trains.
    c.model.gate_bias_init = -2.0 if int(depth) < 50 else -4.0
  c.dataset.name = "mnist"
  c.dataset.image_size = 28
  c.dataset.augment = "none"
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 50.0
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 0.0
  c.schedule.name = "cosine"
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2_000
  return c
