"""The Inception line, part 2 (Szegedy et al. 2017, "Inception-v4,
Inception-ResNet and the Impact of Residual Connections on Learning").

One skeleton serves the paper's three networks (`version`): stem ->
Inception-A x n -> Reduction-A -> Inception-B x n -> Reduction-B ->
Inception-C x n -> average pool -> dropout -> linear. Inception-v4 stacks
plain Inception modules; Inception-ResNet wraps each module's branches in a
residual unit (layers.residual_merge, which resnet.ResidualUnit ends with
too): a linear 1x1 convolution back to the input width, the scaled sum with
the shortcut, then ReLU. BatchNorm follows the convolutions, not the sums,
with TF-slim's epsilon 1e-3 (see inception.py).

Where the paper's figures and the authors' released TF-slim graph
(research/slim/nets/inception_v4.py, whose checkpoint timm's weights come
from) disagree, the released graph is the default; see `asymmetric`.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnflax.backend.kernels import Kernels
from cnnflax.models import register_model
from cnnflax.models.inception import (AVG, MAX_2, SLIM_EPSILON, V3_STEM,
                                      VALID, Mixed, check_epsilon,
                                      check_input_size, classifier, conv,
                                      fork)
from cnnflax.models.layers import (Conv, ConvBNAct, activation, check_choice,
                                   check_rate, residual_merge)

# --- stems -------------------------------------------------------------------

# Fig. 3 (Inception-v4): 299x299x3 -> 35x35x384. Kernels are (rows, columns),
# as TF-slim's [1, 7] and torch's (1, 7): 1x7 is one row of seven taps.
STEM_V4 = (
    ("stem", ((conv(32, 3, 2, VALID), conv(32, 3, 1, VALID), conv(64, 3)),)),
    ("mixed_3a", ((MAX_2,), (conv(96, 3, 2, VALID),))),
    ("mixed_4a", ((conv(64), conv(96, 3, 1, VALID)),
                  (conv(64), conv(64, (1, 7)), conv(64, (7, 1)),
                   conv(96, 3, 1, VALID)))),
    ("mixed_5a", ((conv(192, 3, 2, VALID),), (MAX_2,))),
)
# Fig. 14 (Inception-ResNet-v1): -> 35x35x256.
STEM_RESNET_V1 = (
    ("stem", ((conv(32, 3, 2, VALID), conv(32, 3, 1, VALID), conv(64, 3),
               MAX_2, conv(80), conv(192, 3, 1, VALID),
               conv(256, 3, 2, VALID)),)),
)
# The released Inception-ResNet-v2: Inception v3's stem and a 35x35 module
# (TF-slim's Mixed_5b) -> 35x35x320, where the paper draws Fig. 3.
STEM_RESNET_V2 = (
    ("stem", V3_STEM),
    ("mixed_5b", ((conv(96),), (conv(48), conv(64, 5)),
                  (conv(64), conv(96, 3), conv(96, 3)), (AVG, conv(64)))),
)

# --- blocks ------------------------------------------------------------------

# Figs. 4-6: Inception-v4's A (35x35), B (17x17), C (8x8), with the released
# graph's orientations (block_inception_b/c in TF-slim).
V4_BLOCKS = (
    ((conv(96),), (conv(64), conv(96, 3)),
     (conv(64), conv(96, 3), conv(96, 3)), (AVG, conv(96))),
    ((conv(384),), (conv(192), conv(224, (1, 7)), conv(256, (7, 1))),
     (conv(192), conv(192, (7, 1)), conv(224, (1, 7)), conv(224, (7, 1)),
      conv(256, (1, 7))), (AVG, conv(128))),
    ((conv(256),), (conv(384), fork(conv(256, (1, 3)), conv(256, (3, 1)))),
     (conv(384), conv(448, (3, 1)), conv(512, (1, 3)),
      fork(conv(256, (1, 3)), conv(256, (3, 1)))), (AVG, conv(256))),
)
# The asymmetric convolutions whose orientation the figures and the
# released graph swap: (module, branch) -> every layer of that branch.
# Mixed_4a's 1x7/7x1 pair (2), Inception-B's second factorised branch
# (4 x 7 blocks) and Inception-C's (4 x 3): 42 convolutions in all.
FIGURE_TRANSPOSED = {"mixed_4a": 1, "b": 2, "c": 2}


def transposed(layer: tuple) -> tuple:
  """A layer with every asymmetric kernel (kh, kw) turned into (kw, kh)."""
  if layer[0] == "fork":
    return ("fork", tuple(transposed(part) for part in layer[1]))
  if layer[0] == "conv":
    kind, features, (kh, kw), stride, padding = layer
    return (kind, features, (kw, kh), stride, padding)
  return layer


def figure_orientation(branches: tuple, branch: int) -> tuple:
  """`branches` with branch `branch`'s asymmetric kernels transposed."""
  return tuple(tuple(transposed(layer) for layer in b) if i == branch else b
               for i, b in enumerate(branches))
# Figs. 10, 11, 13: Inception-ResNet-v1's residual branches (before the
# linear 1x1).
RESNET_V1_BLOCKS = (
    ((conv(32),), (conv(32), conv(32, 3)),
     (conv(32), conv(32, 3), conv(32, 3))),
    ((conv(128),), (conv(128), conv(128, (1, 7)), conv(128, (7, 1)))),
    ((conv(192),), (conv(192), conv(192, (1, 3)), conv(192, (3, 1)))),
)
# Figs. 16, 17, 19: Inception-ResNet-v2's.
RESNET_V2_BLOCKS = (
    ((conv(32),), (conv(32), conv(32, 3)),
     (conv(32), conv(48, 3), conv(64, 3))),
    ((conv(192),), (conv(128), conv(160, (1, 7)), conv(192, (7, 1)))),
    ((conv(192),), (conv(192), conv(224, (1, 3)), conv(256, (3, 1)))),
)


def reduction_a(k: int, l: int, m: int, n: int) -> tuple:
  """Fig. 7, 35x35 -> 17x17, with Table 1's filter counts."""
  return ((conv(n, 3, 2, VALID),),
          (conv(k), conv(l, 3), conv(m, 3, 2, VALID)), (MAX_2,))


def resnet_reduction_b(a: int, b: int, c: tuple[int, int]) -> tuple:
  """Figs. 12 and 18, 17x17 -> 8x8: three 1x1 (256) -> 3x3/2 towers, the
  third with one more 3x3, beside a 3x3/2 max-pool."""
  return ((conv(256), conv(a, 3, 2, VALID)), (conv(256), conv(b, 3, 2, VALID)),
          (conv(256), conv(c[0], 3), conv(c[1], 3, 2, VALID)), (MAX_2,))


# Fig. 8 (Inception-v4).
V4_REDUCTION_B = ((conv(192), conv(192, 3, 2, VALID)),
                  (conv(256), conv(256, (1, 7)), conv(320, (7, 1)),
                   conv(320, 3, 2, VALID)), (MAX_2,))
RESNET_V1_REDUCTION_B = resnet_reduction_b(384, 256, (256, 256))
RESNET_V2_REDUCTION_B = resnet_reduction_b(384, 288, (288, 320))


class Layout(NamedTuple):
  stem: tuple
  blocks: tuple  # A, B, C
  reduction_a: tuple  # Table 1's k, l, m, n
  reduction_b: tuple
  repeats: tuple[int, int, int]
  residual: bool
  head_width: int = 0  # a 1x1 conv before the pool (released IRN-v2)
  linear_last: bool = False  # the last C block unscaled, no ReLU after


LAYOUTS = {
    "v4": Layout(STEM_V4, V4_BLOCKS, (192, 224, 256, 384), V4_REDUCTION_B,
                 (4, 7, 3), residual=False),
    "resnet_v1": Layout(STEM_RESNET_V1, RESNET_V1_BLOCKS,
                        (192, 192, 256, 384), RESNET_V1_REDUCTION_B,
                        (5, 10, 5), residual=True),
    "resnet_v2": Layout(STEM_RESNET_V2, RESNET_V2_BLOCKS,
                        (256, 256, 384, 384), RESNET_V2_REDUCTION_B,
                        (10, 20, 10), residual=True, head_width=1536,
                        linear_last=True),
}
# TF-slim's scales for the A, B, C residuals (the paper: "between 0.1 and
# 0.3").
RESIDUAL_SCALE = (0.17, 0.1, 0.2)
STAGES = "abc"


class ResidualInception(nn.Module):
  """An Inception-ResNet block: the branches (a `Mixed` table), a linear
  1x1 convolution with bias back to the input width, then
  act(x + scale * branch), optionally with stochastic depth."""
  branches: tuple
  scale: float = 1.0
  activate: bool = True
  per_sample: bool = True
  batch_norm: bool = True
  activation: str = "relu"
  dtype: Any = jnp.float32
  axis_name: str | None = None
  bn_epsilon: float = SLIM_EPSILON
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, survival=None) -> jax.Array:
    y = Mixed(self.branches, self.batch_norm, self.activation, self.dtype,
              self.axis_name, self.bn_epsilon, kernels=self.kernels,
              name="mixed")(x, train)
    y = Conv(x.shape[-1], (1, 1), kernels=self.kernels, dtype=self.dtype,
             name="up")(y)
    after = activation(self.activation) if self.activate else None
    return residual_merge(self, y, x, train, scale=self.scale,
                          survival=survival, per_sample=self.per_sample,
                          after=after)


class InceptionV4(nn.Module):
  """Inception-v4 (Fig. 9), Inception-ResNet-v1 and -v2 (Fig. 15).

  version   "v4": Figs. 3-8, 4/7/3 blocks, 35x35x384 -> 17x17x1024 ->
            8x8x1536. "resnet_v1": Figs. 14, 10, 7, 11, 12, 13, 5/10/5
            blocks, 35x35x256 -> 17x17x896 -> 8x8x1792. "resnet_v2": the
            released model, 10/20/10 blocks, 35x35x320 -> 17x17x1088 ->
            8x8x2080, then a 1x1 conv to 1536; its last block is linear and
            unscaled. (The paper's Figs. 16-19 for v2 do not add up: the
            B block's 1x1 gives 1154 channels to add to 1152.)
  blocks    A, B, C repeats; () takes the version's.
  residual_scale  Inception-ResNet only: one factor, or one per A, B, C;
            None is TF-slim's (0.17, 0.1, 0.2) (Section 3.3: 0.1-0.3).
  survival_prob_last  stochastic depth on the residual branches (linear
            decay to this, per example); 1 is off.
  dropout_rate  before the classifier (Fig. 9: keep 0.8).
  bn_epsilon  1e-3, the released code's (inception_arg_scope and
            inception_resnet_v2_arg_scope); the paper does not give it.
  asymmetric  v4 only. "released": the 1x7/7x1 and 1x3/3x1 convolutions
            as the authors' released TF-slim graph orients them (and timm,
            whose weights are converted from its checkpoint): Mixed_4a
            1x7 then 7x1; Inception-B's second branch 7x1, 1x7, 7x1, 1x7;
            Inception-C's 3x1, 1x3, then 1x3 beside 3x1. "figures": each of
            those 42 convolutions transposed, as the paper's figures label
            them (Fig. 3: 7x1 then 1x7; Fig. 5: 1x7, 7x1, 1x7, 7x1; Fig. 6:
            1x3, 3x1, then the pair), reading NxM as rows x columns like
            TF-slim's [N, M]. Same parameter count; the figures' orientation
            has no released weights.

  Inputs of 75x75 and up work (299x299 in the paper).
  """
  num_classes: int = 1000
  version: str = "v4"
  blocks: Sequence[int] = ()
  residual_scale: Any = None
  survival_prob_last: float = 1.0
  batch_norm: bool = True
  activation: str = "relu"
  dropout_rate: float = 0.2
  bn_epsilon: float = SLIM_EPSILON
  asymmetric: str = "released"
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  def __post_init__(self):
    check_choice("version", self.version, tuple(LAYOUTS))
    check_choice("asymmetric", self.asymmetric, ("released", "figures"))
    if self.asymmetric != "released" and self.version != "v4":
      raise ValueError(f"asymmetric={self.asymmetric!r} needs version='v4' "
                       "(Inception-ResNet's figures and code agree)")
    check_rate("dropout_rate", self.dropout_rate)
    check_epsilon(self.bn_epsilon)
    activation(self.activation)
    self._check_blocks()
    self._check_residual_fields()
    super().__post_init__()

  def _check_blocks(self) -> None:
    blocks = tuple(self.blocks)
    if blocks and (len(blocks) != 3 or any(
        isinstance(b, bool) or not isinstance(b, int) or b < 0
        for b in blocks)):
      raise ValueError(f"blocks={blocks!r} is not valid; choose three whole "
                       "numbers >= 0 (the A, B and C repeats)")

  def _check_residual_fields(self) -> None:
    residual = LAYOUTS[self.version].residual
    if not residual:
      if self.residual_scale is not None:
        raise ValueError(f"residual_scale={self.residual_scale!r} needs an "
                         "Inception-ResNet version (resnet_v1, resnet_v2)")
      if self.survival_prob_last != 1.0:
        raise ValueError(f"survival_prob_last={self.survival_prob_last!r} "
                         "needs an Inception-ResNet version (resnet_v1, "
                         "resnet_v2)")
      return
    scales = self.scales
    if len(scales) != 3 or any(isinstance(s, bool) or not 0 < s <= 1
                               for s in scales):
      raise ValueError(f"residual_scale={self.residual_scale!r} is not "
                       "valid; choose a factor in (0, 1] or three of them")
    if not 0.0 < self.survival_prob_last <= 1.0:
      raise ValueError(f"survival_prob_last={self.survival_prob_last!r} is "
                       "not valid; choose a probability in (0, 1]")

  @property
  def layout(self) -> Layout:
    return LAYOUTS[self.version]

  @property
  def repeats(self) -> tuple[int, int, int]:
    return tuple(self.blocks) or self.layout.repeats

  @property
  def scales(self) -> tuple[float, ...]:
    s = self.residual_scale
    if s is None:
      return RESIDUAL_SCALE
    return (s,) * 3 if isinstance(s, (int, float)) else tuple(s)

  def survival_probs(self) -> list[float]:
    """p_l = 1 - (l/L)(1 - p_L) over the L residual blocks, l = 1..L."""
    n = sum(self.repeats)
    return [1.0 - l / n * (1.0 - self.survival_prob_last)
            for l in range(1, n + 1)]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    check_input_size(x, 75, f"Inception {self.version}")
    x = x.astype(self.dtype)
    common = dict(batch_norm=self.batch_norm, activation=self.activation,
                  dtype=self.dtype, axis_name=self.axis_name,
                  kernels=self.kernels,
                  bn_epsilon=self.bn_epsilon)
    layout = self.layout
    for name, branches in layout.stem:
      x = Mixed(self._oriented(branches, name), name=name, **common)(x, train)
    reductions = (reduction_a(*layout.reduction_a), layout.reduction_b)
    survival = iter(self.survival_probs())
    for stage, branches in enumerate(layout.blocks):
      branches = self._oriented(branches, STAGES[stage])
      n = self.repeats[stage]
      for i in range(n):
        name = f"inception_{STAGES[stage]}{i + 1}"
        if not layout.residual:
          x = Mixed(branches, name=name, **common)(x, train)
          continue
        last = layout.linear_last and stage == 2 and i == n - 1
        p = next(survival)
        x = ResidualInception(
            branches, 1.0 if last else self.scales[stage], not last,
            name=name, **common)(
                x, train, p if self.survival_prob_last < 1 else None)
      if stage < 2:
        x = Mixed(reductions[stage], name=f"reduction_{STAGES[stage]}",
                  **common)(x, train)
    if layout.head_width:
      x = ConvBNAct(layout.head_width, (1, 1), batch_norm=self.batch_norm,
                    act=self.activation, dtype=self.dtype,
                    axis_name=self.axis_name,
                    kernels=self.kernels, epsilon=self.bn_epsilon,
                    name="head_conv")(x, train)
    return classifier(x, self.num_classes, self.dropout_rate, train,
                      self.dtype)

  def _oriented(self, branches: tuple, where: str) -> tuple:
    """`branches` of module or stage `where` in the chosen orientation."""
    if self.asymmetric == "figures" and where in FIGURE_TRANSPOSED:
      return figure_orientation(branches, FIGURE_TRANSPOSED[where])
    return branches


_PAPER = ("Szegedy et al. 2017, Inception-v4, Inception-ResNet and the Impact "
          "of Residual Connections on Learning")
_IMAGENET = dict(input_shape=(299, 299, 3), num_classes=1000,
                 dataset="imagenet2012")
# Parameters: timm / pretrained-models (1000 classes, BN with scale and
# shift, no auxiliary head). Mult-adds, which the paper does not state:
# ours 12.25G (v4), 6.21G (IRN-v1), 13.16G (IRN-v2). Error: Table 2, single
# crop top-1.
register_model("inception_v4", InceptionV4, fields=dict(version="v4"),
               paper=_PAPER, params=42_679_816, error=20.0, **_IMAGENET)
# No public Inception-ResNet-v1 to compare with: our exact count.
register_model("inception_resnet_v1", InceptionV4,
               fields=dict(version="resnet_v1"), paper=_PAPER,
               params=22_756_328, error=21.3, **_IMAGENET)
register_model("inception_resnet_v2", InceptionV4,
               fields=dict(version="resnet_v2"), paper=_PAPER,
               params=55_843_464, error=19.9, **_IMAGENET)
