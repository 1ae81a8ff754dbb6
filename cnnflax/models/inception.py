"""The Inception line after GoogLeNet, part 1.

* BN-Inception, "Inception v2" (Ioffe and Szegedy 2015, Appendix, Fig. 5).
* Inception v3 (Szegedy et al. 2016, "Rethinking the Inception
  Architecture for Computer Vision").

Every Inception module here is a table: a tuple of branches, each a
sequence of layers (`conv`, `pool`, `fork`), whose outputs `Mixed`
concatenates. Inception v4 and Inception-ResNet (inception_v4.py) are built
from the same pieces.

BatchNorm's epsilon is 1e-3 throughout the family (`bn_epsilon`): the papers
do not state it, and the authors' released TF-slim code sets
`batch_norm_epsilon=0.001` for every Inception net (nets/inception_utils.py
`inception_arg_scope`, used by inception_v1/v2/v3/v4; and
`inception_resnet_v2_arg_scope`). torch/Caffe nets keep 1e-5 (layers.py).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnflax.backend.kernels import Kernels
from cnnflax.models import register_model
from cnnflax.models.layers import (ConvBNAct, SplitConv, activation,
                                   check_at_least, check_rate)

VALID = "VALID"
# TF-slim's batch_norm_epsilon for every Inception net (see above).
SLIM_EPSILON = 1e-3


def conv(features: int, kernel: int | tuple[int, int] = 1, stride: int = 1,
         padding: str = "SAME") -> tuple:
  """A convolution-BN-activation layer of a branch."""
  k = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  return ("conv", features, k, stride, padding)


def pool(kind: str, window: int = 3, stride: int = 1,
         padding: str = "SAME") -> tuple:
  return (kind, window, stride, padding)


def fork(*layers: tuple) -> tuple:
  """Layers applied side by side to the same input and concatenated: the
  expanded filter bank of v3's Fig. 7 (1x3 and 3x1 after a shared conv)."""
  return ("fork", layers)


AVG = pool("avg")  # the 3x3/1 pool in front of a pool projection
MAX_2 = pool("max", 3, 2, VALID)  # the pooling half of a grid reduction


class Mixed(nn.Module):
  """An Inception module: every branch is a sequence of layers, and their
  outputs are concatenated along the channels. One branch is a plain stack
  (the stems). Average pools leave the padding out of the average (TF's SAME
  pooling, which the authors used) unless `count_include_pad`."""
  branches: tuple
  batch_norm: bool = True
  activation: str = "relu"
  dtype: Any = jnp.float32
  axis_name: str | None = None
  bn_epsilon: float = SLIM_EPSILON
  count_include_pad: bool = False
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    outs = []
    for i, branch in enumerate(self.branches):
      y = x
      for j, layer in enumerate(branch):
        name = f"layer{j}" if len(self.branches) == 1 else f"branch{i}_{j}"
        y = self._layer(layer, y, train, name)
      outs.append(y)
    return jnp.concatenate(outs, axis=-1)

  def _layer(self, layer: tuple, x: jax.Array, train: bool,
             name: str) -> jax.Array:
    kind = layer[0]
    if kind == "fork":
      return jnp.concatenate(
          [self._layer(part, x, train, f"{name}{'abcd'[k]}")
           for k, part in enumerate(layer[1])], axis=-1)
    if kind == "conv":
      _, features, kernel, stride, padding = layer
      return ConvBNAct(features, kernel, (stride, stride), padding,
                       self.batch_norm, self.activation, dtype=self.dtype,
                       axis_name=self.axis_name,
                       kernels=self.kernels, epsilon=self.bn_epsilon,
                       name=name)(x, train)
    _, window, stride, padding = layer
    if kind == "max":
      return self.kernels.pool_max(x, (window, window), (stride, stride),
                                    padding)
    return nn.avg_pool(x, (window, window), (stride, stride), padding,
                       count_include_pad=self.count_include_pad)


def check_input_size(x: jax.Array, minimum: int, model: str) -> None:
  if min(x.shape[-3:-1]) < minimum:
    raise ValueError(f"{model} takes inputs of at least {minimum}x{minimum}, "
                     f"got {x.shape[-3:-1]}; set config.dataset.image_size")


def check_epsilon(value: float) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      value <= 0):
    raise ValueError(f"bn_epsilon={value!r} is not valid; choose a number "
                     "> 0 (TF-slim's 1e-3, torch's 1e-5)")


def classifier(x: jax.Array, num_classes: int, dropout_rate: float,
               train: bool, dtype: Any) -> jax.Array:
  """Global average pool, dropout, the linear layer (named "logits")."""
  x = jnp.mean(x, axis=(1, 2))
  x = nn.Dropout(dropout_rate, deterministic=not train)(x)
  return nn.Dense(num_classes, dtype=dtype, name="logits")(x)


# --- BN-Inception ------------------------------------------------------------

# Fig. 5: #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool,
# pool proj (0: "pass through"), stride of the last layer of each branch.
# Its output column lists 576 channels for 4c-4d and 1024 for 4e, but its
# own widths give 608 and 1056 (as the released Caffe model has them).
BN_INCEPTION = {
    "3a": (64, 64, 64, 64, 96, "avg", 32, 1),
    "3b": (64, 64, 96, 64, 96, "avg", 64, 1),
    "3c": (0, 128, 160, 64, 96, "max", 0, 2),
    "4a": (224, 64, 96, 96, 128, "avg", 128, 1),
    "4b": (192, 96, 128, 96, 128, "avg", 128, 1),
    "4c": (160, 128, 160, 128, 160, "avg", 128, 1),
    "4d": (96, 128, 192, 160, 192, "avg", 128, 1),
    "4e": (0, 128, 192, 192, 256, "max", 0, 2),
    "5a": (352, 192, 320, 160, 224, "avg", 128, 1),
    "5b": (352, 192, 320, 192, 224, "max", 128, 1),
}


def bn_inception_module(n1: int, r3: int, n3: int, rd: int, nd: int,
                        kind: str, proj: int, stride: int) -> tuple:
  """One row of Fig. 5: GoogLeNet's module with the 5x5 as two 3x3."""
  branches = [(conv(n1),)] if n1 else []
  branches.append((conv(r3), conv(n3, 3, stride)))
  branches.append((conv(rd), conv(nd, 3), conv(nd, 3, stride)))
  pooled = (pool(kind, 3, stride),)
  branches.append(pooled + ((conv(proj),) if proj else ()))
  return tuple(branches)


class BNInception(nn.Module):
  """GoogLeNet with BatchNorm after every convolution and the changes of
  the batch-normalisation paper's Appendix (Fig. 5): two 3x3 in place of
  each 5x5, three 28x28 modules, average or max pooling per module, and
  stride 2 inside modules 3c and 4e (a 3x3/2 max-pool passed through) in
  place of pooling between modules. 224x224 gives 28, 14, 7 grids; all
  padding is SAME, so any input size works.

  `conv1_depth_multiplier=8`: conv1 is the paper's separable convolution
  (a 7x7 per input channel, 8 maps each, then 1x1 to 64); 0: an ordinary
  7x7 convolution, as the released Caffe model has it. `batch_norm=False`
  is the paper's non-BN baseline layout. The paper removed dropout
  (Section 4.2.1), hence `dropout_rate=0`; it shows no auxiliary heads.
  `bn_epsilon`: 1e-3, as the authors' released TF-slim code (inception_v2,
  through inception_arg_scope) has it; the third-party Caffe model uses
  1e-5.
  """
  num_classes: int = 1000
  conv1_depth_multiplier: int = 8
  batch_norm: bool = True
  activation: str = "relu"
  dropout_rate: float = 0.0
  bn_epsilon: float = SLIM_EPSILON
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  def __post_init__(self):
    check_at_least("conv1_depth_multiplier", self.conv1_depth_multiplier, 0)
    check_rate("dropout_rate", self.dropout_rate)
    check_epsilon(self.bn_epsilon)
    activation(self.activation)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self._conv1(x.astype(self.dtype), train)
    # pool1, conv2 (1x1 reduce 64, 3x3 192), pool2.
    stem = ((pool("max", 3, 2), conv(64), conv(192, 3), pool("max", 3, 2)),)
    x = self._mixed(stem, "stem")(x, train)
    for name, row in BN_INCEPTION.items():
      x = self._mixed(bn_inception_module(*row), f"inception_{name}")(
          x, train)
    return classifier(x, self.num_classes, self.dropout_rate, train,
                      self.dtype)

  def _conv1(self, x: jax.Array, train: bool) -> jax.Array:
    common = dict(batch_norm=self.batch_norm, act=self.activation,
                  dtype=self.dtype, axis_name=self.axis_name,
                  kernels=self.kernels,
                  epsilon=self.bn_epsilon)
    mult = self.conv1_depth_multiplier
    if not mult:
      return ConvBNAct(64, (7, 7), (2, 2), "SAME", name="conv1", **common)(
          x, train)
    # Depthwise (one group per input channel), then pointwise with BN.
    channels = x.shape[-1]
    x = SplitConv(channels * mult, (7, 7), groups=channels, strides=(2, 2),
                  padding="SAME", use_bias=False, dtype=self.dtype,
                  kernels=self.kernels, name="conv1_depthwise")(x)
    return ConvBNAct(64, (1, 1), name="conv1", **common)(x, train)

  def _mixed(self, branches: tuple, name: str) -> Mixed:
    return Mixed(branches, self.batch_norm, self.activation, self.dtype,
                 self.axis_name, self.bn_epsilon, kernels=self.kernels,
                 name=name)


# --- Inception v3 ------------------------------------------------------------

V3_STEM = ((conv(32, 3, 2, VALID), conv(32, 3, 1, VALID), conv(64, 3), MAX_2,
            conv(80, 1, 1, VALID), conv(192, 3, 1, VALID), MAX_2),)


def v3_module_a(pool_proj: int, five_by_five: bool) -> tuple:
  """Fig. 5 on the 35x35 grid: 1x1; 1x1 -> 3x3 -> 3x3 (the factorised 5x5);
  pool -> 1x1; and 1x1 -> 5x5 (released model) or -> 3x3 (as drawn)."""
  return ((conv(64),), (conv(48), conv(64, 5 if five_by_five else 3)),
          (conv(64), conv(96, 3), conv(96, 3)), (AVG, conv(pool_proj)))


def v3_module_c(width: int) -> tuple:
  """Fig. 6 on the 17x17 grid: 7x7s factorised as 1x7 then 7x1."""
  return ((conv(192),),
          (conv(width), conv(width, (1, 7)), conv(192, (7, 1))),
          (conv(width), conv(width, (7, 1)), conv(width, (1, 7)),
           conv(width, (7, 1)), conv(192, (1, 7))),
          (AVG, conv(192)))


# Fig. 10: grid reductions, stride-2 convolutions beside a stride-2 pool.
V3_REDUCTION_35 = ((conv(384, 3, 2, VALID),),
                   (conv(64), conv(96, 3), conv(96, 3, 2, VALID)), (MAX_2,))
V3_REDUCTION_17 = ((conv(192), conv(320, 3, 2, VALID)),
                   (conv(192), conv(192, (1, 7)), conv(192, (7, 1)),
                    conv(192, 3, 2, VALID)), (MAX_2,))
# Fig. 7 on the 8x8 grid: expanded filter banks (1x3 and 3x1 side by side).
V3_MODULE_E = ((conv(320),),
               (conv(384), fork(conv(384, (1, 3)), conv(384, (3, 1)))),
               (conv(448), conv(384, 3),
                fork(conv(384, (1, 3)), conv(384, (3, 1)))),
               (AVG, conv(192)))


def v3_layout(five_by_five: bool) -> list[tuple[str, tuple]]:
  """(name, module) in order; the names are the released model's."""
  a = lambda proj: v3_module_a(proj, five_by_five)  # noqa: E731
  return [("stem", V3_STEM), ("mixed_5b", a(32)), ("mixed_5c", a(64)),
          ("mixed_5d", a(64)), ("mixed_6a", V3_REDUCTION_35),
          ("mixed_6b", v3_module_c(128)), ("mixed_6c", v3_module_c(160)),
          ("mixed_6d", v3_module_c(160)), ("mixed_6e", v3_module_c(192)),
          ("mixed_7a", V3_REDUCTION_17), ("mixed_7b", V3_MODULE_E),
          ("mixed_7c", V3_MODULE_E)]


class AuxHead(nn.Module):
  """Fig. 8's side head on the last 17x17 grid, batch-normalised (the
  paper's "BN-auxiliary"): 5x5/3 average pool, 1x1 conv 128, a 5x5 conv
  768 over the whole 5x5 map (the fully connected layer, with BN) and a
  linear classifier. On maps smaller than 17x17 the windows shrink to fit,
  as the authors' code shrinks the 5x5 conv."""
  num_classes: int
  batch_norm: bool = True
  activation: str = "relu"
  dtype: Any = jnp.float32
  axis_name: str | None = None
  bn_epsilon: float = SLIM_EPSILON
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    window = tuple(min(5, n) for n in x.shape[1:3])
    x = nn.avg_pool(x, window, (3, 3))
    common = dict(batch_norm=self.batch_norm, act=self.activation,
                  dtype=self.dtype, axis_name=self.axis_name,
                  kernels=self.kernels,
                  epsilon=self.bn_epsilon)
    x = ConvBNAct(128, (1, 1), name="conv0", **common)(x, train)
    kernel = tuple(min(5, n) for n in x.shape[1:3])
    x = ConvBNAct(768, kernel, padding=VALID, name="conv1", **common)(
        x, train)
    return classifier(x, self.num_classes, 0.0, train, self.dtype)


class InceptionV3(nn.Module):
  """Inception v3 as released (the paper's Table 1 does not add up; the
  authors' TF-slim graph, which torchvision copies, is the reference):
  299x299 input; stem to 35x35x192; three Fig. 5 modules (35x35x288); the
  Fig. 10 reduction; four Fig. 6 modules (17x17x768); the reduction; two
  Fig. 7 modules (8x8x2048); average pool, dropout, linear.

  `module_a_5x5`: the released 35x35 modules keep one 1x1 -> 5x5 branch
  beside the two-3x3 branch; False makes it the 3x3 that Fig. 5 draws.
  `aux_logits`: in training the call returns (logits, (aux,)) from the
  BN auxiliary head on mixed_6e; the head exists only then, so evaluation
  and the parameter count leave it out (3,326,696 parameters at 1000
  classes). Inputs of 75x75 and up work.

  `bn_epsilon`: 1e-3, TF-slim's (torchvision's port keeps it too).
  `avg_pool_count_pad`: the 3x3/1 average pools in front of the pool
  projections leave the padding out of the average, as TF's SAME pooling
  in the released graph does; torchvision's port counts the zeros
  (count_include_pad=True), so True is only for its weights (see
  cnnflax/convert.py).
  """
  num_classes: int = 1000
  aux_logits: bool = True
  module_a_5x5: bool = True
  batch_norm: bool = True
  activation: str = "relu"
  dropout_rate: float = 0.2  # TF-slim's keep probability 0.8
  bn_epsilon: float = SLIM_EPSILON
  avg_pool_count_pad: bool = False
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  def __post_init__(self):
    check_rate("dropout_rate", self.dropout_rate)
    check_epsilon(self.bn_epsilon)
    activation(self.activation)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    check_input_size(x, 75, "Inception v3")
    x = x.astype(self.dtype)
    common = dict(batch_norm=self.batch_norm, activation=self.activation,
                  dtype=self.dtype, axis_name=self.axis_name,
                  kernels=self.kernels,
                  bn_epsilon=self.bn_epsilon)
    aux = ()
    for name, branches in v3_layout(self.module_a_5x5):
      x = Mixed(branches, count_include_pad=self.avg_pool_count_pad,
                name=name, **common)(x, train)
      if name == "mixed_6e" and train and self.aux_logits:
        aux = (AuxHead(self.num_classes, name="aux", **common)(x, train),)
    logits = classifier(x, self.num_classes, self.dropout_rate, train,
                        self.dtype)
    return (logits, aux) if aux else logits


_V2_PAPER = ("Ioffe and Szegedy 2015, Batch Normalization: Accelerating Deep "
             "Network Training by Reducing Internal Covariate Shift")
_V3_PAPER = ("Szegedy et al. 2016, Rethinking the Inception Architecture for "
             "Computer Vision")
# BN-Inception: no public model has the paper's separable conv1. The
# released Caffe model (pretrained-models.pytorch / imgclsmob `bninception`,
# 11,295,240 parameters: an ordinary 7x7 conv1 and a bias before every BN)
# has our layout: 11,295,240 - 10,016 conv biases = 11,285,224 with
# conv1_depth_multiplier=0, and the paper's conv1 (3*8*49 + 24*64 = 2,712
# weights in place of 9,408) gives 11,278,528. Mult-adds: 1.95G (2.03G with
# the ordinary conv1), the "about 30%" over GoogLeNet's 1.5G that the
# Appendix states. Error: Fig. 3, BN-x30, single crop (74.8% top-1).
register_model("bn_inception", BNInception, paper=_V2_PAPER,
               input_shape=(224, 224, 3), num_classes=1000,
               params=11_278_528, error=25.2, dataset="imagenet2012")
# Inception v3: torchvision's inception_v3 has 23,834,568 parameters
# without the auxiliary head (27,161,264 with it) and 5.71G mult-adds (its
# "GFLOPS"; ours 5,713,216,096); the paper: "5 billion multiply-adds",
# "less than 25 million parameters". Error: Table 3, single crop top-1.
register_model("inception_v3", InceptionV3, paper=_V3_PAPER,
               input_shape=(299, 299, 3), num_classes=1000,
               params=23_834_568, flops=5_710_000_000, error=21.2,
               dataset="imagenet2012")
