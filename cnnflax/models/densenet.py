"""DenseNet (Huang et al. 2017, "Densely Connected Convolutional Networks").

Each layer of a dense block sees the concatenation of the block's input and
of every earlier layer's output, and adds `growth_rate` (k) maps:

* the composite function H: BN-ReLU-3x3 conv (DenseNet), or with
  `bottleneck` BN-ReLU-1x1 conv (4k maps)-BN-ReLU-3x3 conv (DenseNet-B);
* transition layers between blocks: BN-ReLU-1x1 conv to floor(theta * m)
  maps, 2x2 average pool; `compression` is theta (DenseNet-C; both: -BC);
* `dropout_rate` after every convolution but the first (the paper: 0.2 on
  the datasets without augmentation);
* the end: BN-ReLU, global average pool, linear.

`stem="cifar"`: a 3x3 conv with 16 maps (2k for DenseNet-BC) and three
blocks, L = 3n+4 (6n+4 with bottlenecks). `stem="imagenet"`: 7x7/2 conv
with 2k maps, BN-ReLU, 3x3/2 max pool, four blocks (Table 1). The 16 maps
follow the paper's text; the authors' released code starts every CIFAR net
with 2k (`stem_width`). Convolutions have no bias (BN follows), as there.

A dense block keeps its feature maps as a list and never concatenates them
for the gradient: BatchNorm is per channel, so each map's batch moments are
computed once for all the layers that read it, and each BN-ReLU's VJP
(norm.scale_shift) hands back per-map slices that autodiff sums. Against
one BatchNorm over each concatenation, the DenseNet-BC-100 train step on a
2-core CPU went from 3133 to 2573 ms (issue 8, benchmarks/README.md).

`memory_efficient` recomputes, in the backward pass, each dense layer's
concatenation, BN, ReLU and first convolution (the 1x1 bottleneck; the 3x3
without bottlenecks) instead of storing them (Pleiss et al. 2017): stored
activations then grow linearly with depth, not quadratically. The variables
are the same either way. XLA:CPU's cse_barrier_expander pass would drop the
optimisation barriers that keep the recomputation apart and merge it back
into the forward pass; cnnflax turns that pass off by default on CPUs (see
cnnflax/__init__.py). The train step of DenseNet-BC-190, k=40, batch 64
plans 23.1 GB of temporaries stored, 7.3 GB recomputed (10^9 bytes).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnflax.backend.kernels import Kernels
from cnnflax.models import norm, register_model
from cnnflax.models.layers import (Conv, batch_norm, check_at_least,
                                   check_choice, check_rate)

IMAGENET_BLOCKS = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32),
                   201: (6, 12, 48, 32), 264: (6, 12, 64, 48)}

# The authors' code initialises as fb.resnet.torch: N(0, 2 / (k*k*out)).
he_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def cifar_block_sizes(depth: int, bottleneck: bool) -> tuple[int, int, int]:
  """Three blocks of n layers: L = 3n+4 (6n+4 when each layer has two
  convolutions), counting the first conv, two transitions and the classifier."""
  per_layer = 2 if bottleneck else 1
  n, rest = divmod(depth - 4, 3 * per_layer)
  if rest or n < 1:
    form, examples = (("6n+4", "16, 100, 190, 250") if bottleneck
                      else ("3n+4", "13, 40, 100"))
    kind = "bottleneck=True" if bottleneck else "bottleneck=False"
    raise ValueError(f"depth={depth} is not {form} for a CIFAR DenseNet with "
                     f"{kind}; use e.g. {examples}")
  return (n, n, n)


def layer_count(block_sizes: Sequence[int], bottleneck: bool) -> int:
  """Convolutions and the classifier: stem, layers, transitions, linear."""
  per_layer = 2 if bottleneck else 1
  return 1 + per_layer * sum(block_sizes) + len(block_sizes) - 1 + 1


class BNReLUConv(nn.Module):
  """BN, ReLU, convolution, dropout. A list input is normalised as its
  concatenation (the dense connectivity), with `moments` the batch moments of
  each listed array (None: computed here); memory_efficient recomputes this
  concatenation, BN and ReLU."""
  features: int
  kernel: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  @nn.compact
  def __call__(self, x, moments, train: bool) -> jax.Array:
    x = batch_norm(train, self.dtype, self.axis_name, self.kernels,
                   relu=True, name="bn")(x, moments)
    k = self.kernel
    x = Conv(self.features, (k, k), (1, 1), k // 2, use_bias=False,
             kernels=self.kernels, kernel_init=he_init, dtype=self.dtype,
             name="conv")(x)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


# Argument 3 is `train` (0 is the module, 1 the input, 2 its moments).
RecomputedBNReLUConv = nn.remat(BNReLUConv, static_argnums=(3,))


class DenseLayer(nn.Module):
  """H_l on the list of all earlier feature maps; returns k new maps."""
  growth_rate: int
  bottleneck: bool = True
  bottleneck_factor: int = 4
  dropout_rate: float = 0.0
  memory_efficient: bool = False
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  @nn.compact
  def __call__(self, features: list, moments: list, train: bool) -> jax.Array:
    first = RecomputedBNReLUConv if self.memory_efficient else BNReLUConv
    common = dict(dropout_rate=self.dropout_rate, dtype=self.dtype,
                  axis_name=self.axis_name, kernels=self.kernels)
    if not self.bottleneck:
      return first(self.growth_rate, 3, **common, name="conv1")(
          features, moments, train)
    x = first(self.bottleneck_factor * self.growth_rate, 1, **common,
              name="conv1")(features, moments, train)
    return BNReLUConv(self.growth_rate, 3, **common, name="conv2")(
        x, None, train)


class DenseBlock(nn.Module):
  """`num_layers` dense layers; returns the input and all their outputs
  (m + num_layers * k maps), as a list, and the list of their batch moments.

  The features stay a list: each BatchNorm normalises their concatenation,
  per channel, so the moments of each feature map are computed once, for
  all the later layers that read it, and its gradient gathers from them
  without a copy of every concatenation (norm.scale_shift)."""
  num_layers: int
  layer: tuple  # DenseLayer's fields as sorted (name, value) pairs

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[list, list]:
    features, moments = [x], [self.moments(x, train)]
    for i in range(self.num_layers):
      h = DenseLayer(**dict(self.layer), name=f"layer{i + 1}")(
          features, moments, train)
      features.append(h)
      moments.append(self.moments(h, train))
    return features, moments

  def summary_shape(self, output) -> tuple:
    """The concatenated maps' shape, for summary.layer_table."""
    features, _ = output
    return (*features[0].shape[1:-1], sum(f.shape[-1] for f in features))

  def moments(self, x, train):
    if not train:
      return None  # BatchNorm uses its running averages
    axis_name = dict(self.layer)["axis_name"]
    return norm.moments(x, None if self.is_initializing() else axis_name)


class DenseNet(nn.Module):
  """DenseNet, DenseNet-B/C/BC on CIFAR-size or ImageNet-size images."""
  num_classes: int = 1000
  depth: int = 121
  growth_rate: int = 32  # k
  bottleneck: bool = True  # the B of BC
  bottleneck_factor: int = 4  # the 1x1 conv makes bottleneck_factor * k maps
  compression: float = 0.5  # theta, the C of BC (1.0: none)
  dropout_rate: float = 0.0
  stem: str = "imagenet"  # imagenet | cifar
  block_sizes: Sequence[int] = ()  # layers per block; () = from depth
  stem_width: int = 0  # 0: 2k (CIFAR without BC: 16)
  memory_efficient: bool = False
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  def __post_init__(self):
    check_choice("stem", self.stem, ("imagenet", "cifar"))
    check_at_least("growth_rate", self.growth_rate, 1)
    check_at_least("bottleneck_factor", self.bottleneck_factor, 1)
    check_at_least("stem_width", self.stem_width, 0)
    check_rate("dropout_rate", self.dropout_rate)
    if isinstance(self.compression, bool) or not (
        0 < self.compression <= 1):
      raise ValueError(f"compression={self.compression!r} is not valid; "
                       "choose theta in (0, 1] (0.5 in DenseNet-BC)")
    self.transition_widths()  # raises for a bad depth or block_sizes
    super().__post_init__()

  # --- layout ----------------------------------------------------------------

  @property
  def blocks(self) -> tuple[int, ...]:
    """Layers per dense block."""
    if self.block_sizes:
      sizes = tuple(self.block_sizes)
      if not all(isinstance(n, int) and n >= 1 for n in sizes):
        raise ValueError(f"block_sizes={sizes} is not valid; choose whole "
                         "numbers >= 1")
      implied = layer_count(sizes, self.bottleneck)
      named = IMAGENET_BLOCKS.get(self.depth) == sizes  # 264 counts 265
      if self.depth not in (0, implied) and not named:
        raise ValueError(
            f"depth={self.depth} does not match block_sizes={sizes}, which "
            f"make a {implied}-layer net; set depth={implied} or depth=0")
      return sizes
    if self.stem == "cifar":
      return cifar_block_sizes(self.depth, self.bottleneck)
    if self.depth not in IMAGENET_BLOCKS:
      raise ValueError(
          f"depth={self.depth} is not an ImageNet DenseNet; use one of "
          f"{', '.join(map(str, IMAGENET_BLOCKS))} or set block_sizes")
    return IMAGENET_BLOCKS[self.depth]

  @property
  def stem_features(self) -> int:
    if self.stem_width:
      return self.stem_width
    is_bc = self.bottleneck and self.compression < 1
    return 16 if self.stem == "cifar" and not is_bc else 2 * self.growth_rate

  def transition_widths(self) -> list[int]:
    """Maps after each transition: floor(theta * m)."""
    widths, m = [], self.stem_features
    for n in self.blocks[:-1]:
      m = int(self.compression * (m + n * self.growth_rate))
      if m < 1:
        raise ValueError(f"compression={self.compression} leaves no maps "
                         "after a transition; choose a larger theta")
      widths.append(m)
    return widths

  # --- the network -----------------------------------------------------------

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self._stem(x.astype(self.dtype), train)
    layer = tuple(sorted(dict(
        growth_rate=self.growth_rate, bottleneck=self.bottleneck,
        bottleneck_factor=self.bottleneck_factor,
        dropout_rate=self.dropout_rate,
        memory_efficient=self.memory_efficient, dtype=self.dtype,
        axis_name=self.axis_name, kernels=self.kernels).items()))
    widths = self.transition_widths()
    for b, n in enumerate(self.blocks):
      features, moments = DenseBlock(n, layer, name=f"block{b + 1}")(x, train)
      if b < len(widths):
        x = BNReLUConv(widths[b], 1, self.dropout_rate, self.dtype,
                       self.axis_name, self.kernels,
                       name=f"transition{b + 1}")(
                           features, moments, train)
        x = nn.avg_pool(x, (2, 2), (2, 2))
    x = batch_norm(train, self.dtype, self.axis_name, self.kernels, relu=True,
                   name="final_bn")(features, moments)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)

  def _stem(self, x, train):
    width = self.stem_features
    if self.stem == "cifar":  # the first dense layer's BN-ReLU follows
      return Conv(width, (3, 3), (1, 1), 1, use_bias=False,
                  kernels=self.kernels, kernel_init=he_init,
                  dtype=self.dtype, name="stem_conv")(x)
    x = Conv(width, (7, 7), (2, 2), 3, use_bias=False, kernels=self.kernels,
             kernel_init=he_init, dtype=self.dtype, name="stem_conv")(x)
    x = batch_norm(train, self.dtype, self.axis_name, self.kernels, relu=True,
                   name="stem_bn")(x)
    return self.kernels.pool_max(x, (3, 3), (2, 2), ((1, 1), (1, 1)))


def _register():
  paper = "Huang et al. 2017, Densely Connected Convolutional Networks"
  cifar = dict(input_shape=(32, 32, 3), num_classes=10, dataset="cifar10",
               paper=paper)
  # Table 2 (C10+ errors, rounded counts) and our exact counts; BC-100's
  # 769,162 is also osmr/imgclsmob's. Table 2 rounds it to 0.8M, 4% off,
  # beyond the registry check's 2%, so that one paper count is left out.
  for name, depth, k, bc, params, exact, err in (
      ("densenet40_k12_cifar", 40, 12, False, 1.0e6, 1_019_722, 5.24),
      ("densenet100_k12_cifar", 100, 12, False, 7.0e6, 6_979_642, 4.10),
      ("densenet100_k24_cifar", 100, 24, False, 27.2e6, 27_249_082, 3.74),
      ("densenet_bc100_k12_cifar", 100, 12, True, None, 769_162, 4.51),
      ("densenet_bc250_k24_cifar", 250, 24, True, 15.3e6, 15_324_406, 3.62),
      ("densenet_bc190_k40_cifar", 190, 40, True, 25.6e6, 25_624_430, 3.46)):
    register_model(name, DenseNet, fields=dict(
        depth=depth, growth_rate=k, bottleneck=bc,
        compression=0.5 if bc else 1.0, stem="cifar"),
                   params=exact, params_paper=params, error=err, **cifar)
  # Any depth and growth rate, for the configs: a run records the network
  # it trains, not the nearest registered one.
  for name, bc in (("densenet_cifar", False), ("densenet_bc_cifar", True)):
    register_model(name, DenseNet, fields=dict(
        depth=40 if not bc else 100, growth_rate=12, bottleneck=bc,
        compression=0.5 if bc else 1.0, stem="cifar"), **cifar)
  imagenet = dict(input_shape=(224, 224, 3), num_classes=1000,
                  dataset="imagenet2012", paper=paper)
  # Table 3, single-crop top-1 error; exact counts and mult-adds as in
  # torchvision. No standard code has DenseNet-264 with k=32: its exact
  # count is ours, beside the rounded 33.3M.
  for depth, params, paper_params, flops, err in (
      (121, 7_978_856, None, 2.83e9, 25.02),
      (169, 14_149_480, None, 3.36e9, 23.80),
      (201, 20_013_928, None, 4.29e9, 22.58),
      (264, 33_337_704, 33.3e6, None, 22.15)):
    register_model(f"densenet{depth}", DenseNet, fields=dict(depth=depth),
                   params=params, params_paper=paper_params,
                   flops=int(flops) if flops else None, error=err, **imagenet)


_register()
