"""DenseNet on CIFAR, Huang et al. 2017 ("Densely Connected Convolutional
Networks"), Table 2. Test error on C10+ (standard augmentation) / C10 (none):

  ARG          model                           params  C10+   C10
  40,12        DenseNet (L=40, k=12)            1.0M   5.24   7.00
  100,12       DenseNet (L=100, k=12)           7.0M   4.10   5.77
  100,24       DenseNet (L=100, k=24)          27.2M   3.74   5.83
  bc,100,12    DenseNet-BC (L=100, k=12)        0.8M   4.51   5.92
  bc,250,24    DenseNet-BC (L=250, k=24)       15.3M   3.62   5.19
  bc,190,40    DenseNet-BC (L=190, k=40)       25.6M   3.46   -

ARG is [bc,]DEPTH,K[,noaug][,c100] (default bc,100,12, the headline run of
configs/densenet_bc.py). `noaug`: no augmentation and dropout 0.2 after
every convolution but the first, as the paper trains C10/C100; `c100`:
CIFAR-100 (Table 2's C100+ / C100 columns). Other depths work too: L=3n+4,
or 6n+4 with `bc`.

Recipe (Section 4.2): batch 64, 300 epochs, SGD with Nesterov momentum 0.9
(no dampening), weight decay 1e-4, learning rate 0.1 divided by 10 at
epochs 150 and 225 (50% and 75%); 4-pixel pad, 32x32 crop, flip. The paper
trains on all 50k training images.

  python main.py --config=configs/densenet_cifar.py:bc,250,24 \
      --workdir=runs/densenet_bc250 \
      --config.dataset.data_dir=../shared/data/cifar10
  ... --config.model.memory_efficient=True   # recompute concat-BN-ReLU-conv
"""
import ml_collections

from configs import default

MODELS = {(False, 40, 12): "densenet40_k12_cifar",
          (False, 100, 12): "densenet100_k12_cifar",
          (False, 100, 24): "densenet100_k24_cifar",
          (True, 100, 12): "densenet_bc100_k12_cifar",
          (True, 250, 24): "densenet_bc250_k24_cifar",
          (True, 190, 40): "densenet_bc190_k40_cifar"}


def parse(arg: str) -> tuple[bool, int, int, set]:
  """'[bc,]DEPTH,K[,noaug][,c100]' -> (bc, depth, k, flags)."""
  tokens = arg.split(",")
  bc = tokens[0] == "bc"
  tokens = tokens[1:] if bc else tokens
  numbers, flags = tokens[:2], set(tokens[2:])
  if (len(numbers) != 2 or not all(t.isdigit() for t in numbers)
      or not flags <= {"noaug", "c100"}):
    raise ValueError(f"configs/densenet_cifar.py:{arg} is unknown; use "
                     "[bc,]DEPTH,K[,noaug][,c100], e.g. :40,12 or "
                     ":bc,250,24 or :100,12,noaug")
  return bc, int(numbers[0]), int(numbers[1]), flags


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  bc, depth, k, flags = parse(arg or "bc,100,12")
  c = default.get_config()
  # The paper's nets by their registered names; others as their family.
  c.model.name = MODELS.get((bc, depth, k),
                            "densenet_bc_cifar" if bc else "densenet_cifar")
  c.model.depth = depth
  c.model.growth_rate = k
  default.cifar10(c)
  if "c100" in flags:
    c.dataset.name = "cifar100"
  if "noaug" in flags:
    c.dataset.augment = "none"
    c.model.dropout_rate = 0.2
  c.batch_size = 64
  c.num_epochs = 300.0
  default.sgd_steps(c, 0.1, 1e-4, (150, 225))
  c.optimizer.nesterov = True
  return c
