"""AlexNet (Krizhevsky, Sutskever and Hinton 2012)."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnflax.backend.kernels import Kernels
from cnnflax.models import register_model
from cnnflax.models.layers import (LRN, Conv, SplitConv, activation,
                                   batch_norm, check_choice, check_rate)
from cnnflax.models.vgg import fc_window, fc_windows

# Section 3 of the paper: (features, kernel, stride, padding, split into the
# two columns, LRN after, 3x3/2 max-pool after). conv1 is unpadded so that
# 227x227 gives 55x55x96.
CONVS = (
    (96, 11, 4, "VALID", False, True, True),
    (256, 5, 1, 2, True, True, True),
    (384, 3, 1, 1, False, False, False),
    (384, 3, 1, 1, True, False, False),
    (256, 3, 1, 1, True, False, True),
)
# The paper initialises these biases to 1 (the rest to 0) so that the ReLUs
# start with positive inputs.
UNIT_BIAS = ("conv2", "conv4", "conv5", "fc6", "fc7")


def _init(weight_init: str, name: str) -> tuple[Callable, Callable]:
  if weight_init == "paper":  # N(0, 0.01) weights (Section 5)
    bias = 1.0 if name in UNIT_BIAS else 0.0
    return (nn.initializers.normal(0.01), nn.initializers.constant(bias))
  return nn.initializers.he_normal(), nn.initializers.zeros


class AlexNetFeatures(nn.Module):
  """conv1-conv5 with LRN and overlapping 3x3/2 max-pooling: 6x6x256 at 227."""
  groups: int = 2
  lrn: bool = True
  batch_norm: bool = False
  activation: str = "relu"
  weight_init: str = "he"
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    act = activation(self.activation)
    for i, (features, k, stride, pad, split, lrn, pool) in enumerate(CONVS, 1):
      name = f"conv{i}"
      kernel_init, bias_init = _init(self.weight_init, name)
      padding = pad if isinstance(pad, str) else ((pad, pad), (pad, pad))
      common = dict(strides=(stride, stride), padding=padding,
                    use_bias=not self.batch_norm, kernel_init=kernel_init,
                    bias_init=bias_init, dtype=self.dtype,
                    kernels=self.kernels, name=name)
      if split and self.groups > 1:
        x = SplitConv(features, (k, k), self.groups, **common)(x)
      else:
        x = Conv(features, (k, k), **common)(x)
      if self.batch_norm:
        x = batch_norm(train, self.dtype, self.axis_name, self.kernels)(x)
      x = act(x)
      if lrn and self.lrn:  # after the ReLU, before pooling (Section 3.3)
        x = LRN(size=5, k=2.0, alpha=1e-4, beta=0.75, name=f"lrn{i}")(x)
      if pool:  # overlapping pooling (Section 3.4)
        x = self.kernels.pool_max(x, (3, 3), (2, 2))
    return x


class AlexNet(nn.Module):
  """Five convolutions and three fully connected layers, 227x227 input.

  `groups=2` is the paper's two-column network (conv2, conv4 and conv5 see
  only their own GPU's half of the maps: 60,965,224 parameters); `groups=1`
  connects every map (62,378,344). The columns are computed as two ordinary
  convolutions on channel halves, not a grouped convolution.

  `weight_init="paper"`: N(0, 0.01) weights, biases 1 in conv2, conv4, conv5
  and the hidden FC layers (Section 5); "he" (default): He-normal, zero
  biases, which trains without the paper's hand-tuned start.
  Other input sizes work (fc6 then sees a different map size) down to 67x67.
  """
  num_classes: int = 1000
  groups: int = 2
  lrn: bool = True
  batch_norm: bool = False
  activation: str = "relu"
  dropout_rate: float = 0.5
  weight_init: str = "he"
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  def __post_init__(self):
    check_choice("groups", self.groups, (1, 2))
    check_choice("weight_init", self.weight_init, ("he", "paper"))
    check_rate("dropout_rate", self.dropout_rate)
    activation(self.activation)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               dense: bool = False) -> jax.Array:
    """Logits [N, classes]; with dense=True the class score map
    [N, H', W', classes] of the FC layers applied as convolutions over a
    larger image (as VGG's dense evaluation, `vgg.fc_windows`)."""
    if min(x.shape[-3:-1]) < 67:
      raise ValueError(f"AlexNet takes inputs of at least 67x67, got "
                       f"{x.shape[-3:-1]}; set config.dataset.image_size")
    x = AlexNetFeatures(self.groups, self.lrn, self.batch_norm,
                        self.activation, self.weight_init, self.dtype,
                        self.axis_name, self.kernels, name="features")(
                            x.astype(self.dtype), train)
    x = (fc_windows(x, fc_window(self, "fc6", x)) if dense
         else x.reshape(x.shape[0], -1))
    act = activation(self.activation)
    for name in ("fc6", "fc7"):
      x = act(self._dense(4096, name)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return self._dense(self.num_classes, "fc8")(x)

  def _dense(self, features: int, name: str) -> nn.Dense:
    kernel_init, bias_init = _init(self.weight_init, name)
    return nn.Dense(features, kernel_init=kernel_init, bias_init=bias_init,
                    dtype=self.dtype, name=name)


_PAPER = ("Krizhevsky, Sutskever and Hinton 2012, ImageNet classification "
          "with deep convolutional neural networks")
# Parameters: Section 3 ("60 million"), exact count at 227x227x3, 1000 classes.
# Mult-adds: 724M, as Sze et al. 2017 (Efficient Processing of DNNs) count.
# Error: Table 2, one CNN, ILSVRC-2012 validation top-1.
register_model("alexnet", AlexNet, paper=_PAPER, input_shape=(227, 227, 3),
               num_classes=1000, params=60_965_224, params_paper=60e6,
               flops=724e6, error=40.7, dataset="imagenet2012")
register_model("alexnet_ungrouped", AlexNet, fields=dict(groups=1),
               paper=_PAPER + " (one column: every map connected)",
               input_shape=(227, 227, 3), num_classes=1000,
               params=62_378_344, dataset="imagenet2012")
