"""GoogLeNet / Inception v1 (Szegedy et al. 2015)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnflax.backend.kernels import Kernels
from cnnflax.models import register_model
from cnnflax.models.layers import (LRN, ConvBNAct, activation, caffe_pool,
                                   check_choice, check_rate)

# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
# Where Table 1 puts a 3x3/2 max-pool, and where the auxiliary heads sit.
POOL_AFTER = ("3b", "4e")
AUX_AFTER = ("4a", "4d")


class Inception(nn.Module):
  """Four branches concatenated: 1x1; 1x1 -> 3x3; 1x1 -> 5x5 (a
  `kernel_5x5` x `kernel_5x5` convolution); 3x3/1 max-pool -> 1x1 ("pool
  proj"). Every convolution is followed by the activation."""
  widths: tuple[int, int, int, int, int, int]
  batch_norm: bool = False
  activation: str = "relu"
  dtype: Any = jnp.float32
  axis_name: str | None = None
  bn_epsilon: float = 1e-3
  kernel_5x5: int = 5
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    n1, r3, n3, r5, n5, proj = self.widths

    def conv(features, k, name):
      return ConvBNAct(features, (k, k), batch_norm=self.batch_norm,
                       act=self.activation, dtype=self.dtype,
                       axis_name=self.axis_name,
                       kernels=self.kernels, epsilon=self.bn_epsilon,
                       name=name)

    b1 = conv(n1, 1, "1x1")(x, train)
    b3 = conv(n3, 3, "3x3")(conv(r3, 1, "3x3_reduce")(x, train), train)
    b5 = conv(n5, self.kernel_5x5, "5x5")(conv(r5, 1, "5x5_reduce")(x, train),
                                          train)
    pooled = self.kernels.pool_max(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
    bp = conv(proj, 1, "pool_proj")(pooled, train)
    return jnp.concatenate([b1, b3, b5, bp], axis=-1)


class AuxClassifier(nn.Module):
  """Section 5: 5x5/3 average pool, 1x1 conv 128, FC 1024, dropout 0.7,
  linear; on 14x14 maps the pool gives 4x4."""
  num_classes: int
  batch_norm: bool = False
  activation: str = "relu"
  dropout_rate: float = 0.7
  dtype: Any = jnp.float32
  axis_name: str | None = None
  bn_epsilon: float = 1e-3
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if min(x.shape[1:3]) < 5:
      raise ValueError(f"the auxiliary classifiers need maps of at least 5x5 "
                       f"at 4a, got {x.shape[1:3]}; use a larger input or "
                       "aux_logits=False")
    x = nn.avg_pool(x, (5, 5), (3, 3))
    x = ConvBNAct(128, (1, 1), batch_norm=self.batch_norm,
                  act=self.activation, dtype=self.dtype,
                  axis_name=self.axis_name,
                  kernels=self.kernels, epsilon=self.bn_epsilon,
                  name="conv")(x, train)
    x = x.reshape(x.shape[0], -1)
    x = activation(self.activation)(
        nn.Dense(1024, dtype=self.dtype, name="fc")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x)


class GoogLeNet(nn.Module):
  """Table 1 layer for layer, 224x224 input, 7x7x1024 before the average pool.

  `lrn` puts the two local response normalisations of Table 1 after
  pool1 and conv2 (Caffe's parameters: size 5, alpha 1e-4 / 5, beta 0.75,
  k 1); `batch_norm` makes every convolution conv-BN-activation without bias
  (the torchvision variant). Pooling rounds up as Caffe's does
  (112 -> 56 -> 28 -> 14 -> 7). The final 7x7 average pool is taken over
  all positions so other input sizes work.

  In training (`train=True`, `aux_logits=True`) the call returns
  (logits, (aux_4a, aux_4d)); the auxiliary heads exist only then, so
  evaluation and the parameter count leave them out (each head adds about
  3.19M parameters).

  With `batch_norm`, BatchNorm's epsilon is `bn_epsilon`, 1e-3 as in
  Google's released GoogLeNet with BatchNorm (TF-slim's inception_v1,
  through inception_arg_scope) and torchvision's port of it.

  That released graph, and torchvision's GoogLeNet, differ from Table 1 in
  two places, kept here as fields for importing their weights only (the
  defaults are the paper's): `kernel_5x5=3`, a 3x3 convolution in the
  "5x5" branch (TF-slim's Conv2d_0b_3x3; with the paper's 5x5 the BN net
  has 380,928 parameters more than torchvision's 6,624,904), and
  `pool4_window=2`, a 2x2/2 max-pool after 4e (MaxPool_5a_2x2) in place of
  Table 1's 3x3/2 (both give 7x7 at 224x224). torchvision's auxiliary heads
  pool adaptively to 4x4 rather than 5x5/3: the same 4x4 at 224x224 but
  over other windows (training only).
  """
  num_classes: int = 1000
  lrn: bool = True
  batch_norm: bool = False
  activation: str = "relu"
  dropout_rate: float = 0.4
  aux_logits: bool = True
  aux_dropout_rate: float = 0.7
  bn_epsilon: float = 1e-3
  kernel_5x5: int = 5
  pool4_window: int = 3
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  def __post_init__(self):
    check_rate("dropout_rate", self.dropout_rate)
    check_rate("aux_dropout_rate", self.aux_dropout_rate)
    check_choice("kernel_5x5", self.kernel_5x5, (5, 3))
    check_choice("pool4_window", self.pool4_window, (3, 2))
    if isinstance(self.bn_epsilon, bool) or not isinstance(
        self.bn_epsilon, (int, float)) or self.bn_epsilon <= 0:
      raise ValueError(f"bn_epsilon={self.bn_epsilon!r} is not valid; choose "
                       "a number > 0 (TF-slim's 1e-3, torch's 1e-5)")
    activation(self.activation)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    x = x.astype(self.dtype)
    x = self._conv(64, 7, "conv1", strides=2, padding=3)(x, train)
    x = caffe_pool(x, "max", 3, 2, self.kernels)
    x = self._lrn("lrn1")(x)
    x = self._conv(64, 1, "conv2_reduce")(x, train)
    x = self._conv(192, 3, "conv2")(x, train)
    x = self._lrn("lrn2")(x)
    x = caffe_pool(x, "max", 3, 2, self.kernels)
    aux = []
    for name, widths in INCEPTION.items():
      x = Inception(widths, self.batch_norm, self.activation, self.dtype,
                    self.axis_name, self.bn_epsilon, self.kernel_5x5,
                    self.kernels, name=f"inception_{name}")(x, train)
      if name in AUX_AFTER and train and self.aux_logits:
        aux.append(AuxClassifier(
            self.num_classes, self.batch_norm, self.activation,
            self.aux_dropout_rate, self.dtype, self.axis_name,
            self.bn_epsilon, self.kernels, name=f"aux_{name}")(x, train))
      if name in POOL_AFTER:
        window = self.pool4_window if name == POOL_AFTER[-1] else 3
        x = caffe_pool(x, "max", window, 2, self.kernels)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x)
    return (logits, tuple(aux)) if aux else logits

  def _conv(self, features: int, k: int, name: str, strides: int = 1,
            padding: int | None = None) -> ConvBNAct:
    pad = (k - 1) // 2 if padding is None else padding
    return ConvBNAct(features, (k, k), (strides, strides),
                     ((pad, pad), (pad, pad)), self.batch_norm,
                     self.activation, dtype=self.dtype,
                     axis_name=self.axis_name,
                     kernels=self.kernels, epsilon=self.bn_epsilon,
                     name=name)

  def _lrn(self, name: str):
    if not self.lrn:
      return lambda x: x
    return LRN(size=5, k=1.0, alpha=1e-4 / 5, beta=0.75, name=name)


_PAPER = "Szegedy et al. 2015, Going deeper with convolutions"
# Exact counts without the auxiliary heads. The paper states no total: its
# Table 1 params column sums to 6.8M but does not follow from its own layer
# widths (e.g. 5b: 1388K listed, 1444K computed), so no params_paper. Its
# ops column matches ours layer by layer except conv1 (34M listed, 118M
# computed), hence our 1.58G mult-adds against the text's "1.5 billion".
# The BN twin equals torchvision's 6,624,904 + 16 * sum(#5x5reduce * #5x5)
# = 380,928 for the paper's 5x5 kernels in place of torchvision's 3x3.
register_model("googlenet", GoogLeNet, paper=_PAPER,
               input_shape=(224, 224, 3), num_classes=1000,
               params=6_998_552, dataset="imagenet2012")
register_model("googlenet_bn", GoogLeNet,
               fields=dict(lrn=False, batch_norm=True),
               paper=_PAPER + " (BatchNorm in place of LRN)",
               input_shape=(224, 224, 3), num_classes=1000,
               params=7_005_832, dataset="imagenet2012")
