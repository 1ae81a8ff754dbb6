"""The residual family in one module and its ablation switches.

* ResNet v1 (He et al. 2016, "Deep Residual Learning"): ImageNet 18-152 and
  the CIFAR 6n+2 family, shortcut options A/B/C, plain twins.
* ResNet v2 (He et al. 2016, "Identity Mappings"): the five activation
  placements of Fig. 4 (`unit`) and the shortcut variants of Fig. 2 /
  Table 1 (`shortcut_variant`).
* ResNeXt (Xie et al. 2017): `cardinality` and `base_width`; the
  registered ResNeXts downsample in the grouped 3x3 (`stride_in="3x3"`), as
  the authors' released code does (facebookresearch/ResNeXt,
  models/resnext.lua, resnext_bottleneck_C: the 1x1 has stride 1, the 3x3
  `stride`), and torchvision's resnext50_32x4d too.
* Stochastic depth (Huang et al. 2016): `survival_prob_last`.
* Lesion studies (Veit et al. 2016): `drop_blocks`, `block_order`.

Blocks are numbered 0..L-1 over the whole network, in forward order.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnflax.backend.kernels import Kernels
from cnnflax.models import register_model
from cnnflax.models.layers import (Conv, activation, batch_norm, bn_act,
                                   check_choice, residual_merge)

UNITS = ("original", "bn_after_add", "relu_before_add", "relu_only_preact",
         "full_preact")
PREACT_UNITS = ("relu_only_preact", "full_preact")
SHORTCUTS = ("A", "B", "C")
SHORTCUT_VARIANTS = ("identity", "scaling", "exclusive_gating",
                     "shortcut_gating", "conv1x1", "dropout")
IMAGENET_STAGES = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
                   50: ("bottleneck", (3, 4, 6, 3)),
                   101: ("bottleneck", (3, 4, 23, 3)),
                   152: ("bottleneck", (3, 8, 36, 3))}
# Deep stacks compile once per stage above this many blocks (see README).
SCAN_THRESHOLD = 100

he_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def cifar_stage_sizes(depth: int, block: str) -> tuple[int, int, int]:
  """6n+2 layers with basic blocks, 9n+2 with bottlenecks (3 stages)."""
  per_block = 2 if block == "basic" else 3
  n, rest = divmod(depth - 2, 3 * per_block)
  if rest or n < 1:
    form = "6n+2" if block == "basic" else "9n+2"
    examples = [3 * per_block * k + 2 for k in (1, 2, 3, 9, 18)]
    raise ValueError(f"depth={depth} is not {form} for {block} blocks on "
                     f"CIFAR; use e.g. {', '.join(map(str, examples))}")
  return (n, n, n)


class ResidualUnit(nn.Module):
  """One residual block; every switch of the family is a field here."""
  features: int  # output channels
  strides: int = 1
  bottleneck: bool = False
  unit: str = "original"
  shortcut: str = "B"
  shortcut_variant: str = "identity"
  shortcut_scale: float = 0.5
  scale_residual: bool = False
  gate_bias_init: float = -6.0
  shortcut_dropout: float = 0.5
  plain: bool = False
  stride_in: str = "1x1"  # bottleneck: which conv downsamples
  cardinality: int = 1
  inner_width: int = 0  # bottleneck width; 0: features // 4
  use_bn: bool = True
  act: str = "relu"
  zero_init_last: bool = False
  stochastic: bool = False  # stochastic depth on
  stochastic_mode: str = "batch"
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  @nn.compact
  def __call__(self, x, train: bool, survival=1.0, keep=1.0):
    """`survival`: stochastic-depth probability; `keep`: 0 removes the
    residual branch (a Python 0.0 skips computing it)."""
    act = activation(self.act)
    changes_shape = self.strides != 1 or x.shape[-1] != self.features
    projects = self._projects(changes_shape)
    shared_pre = self.unit in PREACT_UNITS and (changes_shape or projects)
    if shared_pre:  # the authors' code pre-activates both paths here
      x = self._pre(x, train, act)
    short = self._shortcut(x, train, changes_shape, projects)
    if isinstance(keep, float) and keep == 0.0:
      return self._after_add(short, train, act)
    residual = self._branch(x, train, act, skip_first_pre=shared_pre)
    if not (changes_shape or projects):
      residual, short = self._mix(x, residual, short, train)
    out = residual_merge(
        self, residual, None if self.plain else short, train,
        scale=1.0 if self.plain else keep,
        survival=survival if self.stochastic else None,
        per_sample=self.stochastic_mode == "sample",
        after=lambda y: self._after_add(y, train, act))
    if self.plain and short is not None and not isinstance(keep, (int, float)):
      # No shortcut to fall back on: a removed plain unit passes x through
      # (one that changes the shape cannot be removed and ignores keep).
      return jnp.where(keep > 0, out, self._after_add(short, train, act))
    return out

  def _after_add(self, y, train, act):
    if self.unit == "original":
      return act(y)
    if self.unit == "bn_after_add":
      return self._bn(train, "bn_add", act=True)(y)
    return y

  # --- the residual branch --------------------------------------------------

  def _specs(self):
    """(features, kernel, stride, groups) of each convolution."""
    if not self.bottleneck:
      return [(self.features, 3, self.strides, 1), (self.features, 3, 1, 1)]
    width = self.inner_width or self.features // 4
    s1, s2 = (self.strides, 1) if self.stride_in == "1x1" else (1, self.strides)
    return [(width, 1, s1, 1), (width, 3, s2, self.cardinality),
            (self.features, 1, 1, 1)]

  def _branch(self, x, train, act, skip_first_pre):
    specs = self._specs()
    for i, (features, k, s, groups) in enumerate(specs):
      last = i == len(specs) - 1
      if self.unit == "full_preact" and not (i == 0 and skip_first_pre):
        x = self._bn(train, f"bn{i}", act=True)(x)
      elif self.unit == "relu_only_preact" and not (i == 0 and skip_first_pre):
        x = act(x)
      x = Conv(features, (k, k), (s, s), k // 2, not self.use_bn, groups,
               self.kernels, he_init, dtype=self.dtype, name=f"conv{i}")(x)
      if self.unit == "relu_only_preact":
        x = self._bn(train, f"bn{i}", zero=last and self.zero_init_last)(x)
      elif self.unit != "full_preact":
        if not (last and self.unit == "bn_after_add"):
          x = self._bn(train, f"bn{i}", zero=last and self.zero_init_last,
                       act=not last or self.unit == "relu_before_add")(x)
    return x

  def _pre(self, x, train, act):
    if self.unit == "full_preact":
      return self._bn(train, "bn0", act=True)(x)
    return act(x)

  def _bn(self, train, name, zero=False, act=False):
    """BatchNorm, followed by the unit's activation where `act`."""
    if not self.use_bn:
      return activation(self.act) if act else lambda x: x
    init = nn.initializers.zeros if zero else nn.initializers.ones
    if act:
      return bn_act(train, self.dtype, self.axis_name, self.kernels, self.act,
                    scale_init=init, name=name)
    return batch_norm(train, self.dtype, self.axis_name, self.kernels,
                      scale_init=init, name=name)

  # --- the shortcut ----------------------------------------------------------

  def _projects(self, changes_shape: bool) -> bool:
    if self.plain:
      return False
    return (self.shortcut == "C" or self.shortcut_variant == "conv1x1"
            or (changes_shape and self.shortcut == "B"))

  def _shortcut(self, x, train, changes_shape, projects):
    if self.plain:
      return x if not changes_shape else None
    if projects:
      y = Conv(self.features, (1, 1), (self.strides, self.strides), 0,
               not self.use_bn, kernels=self.kernels, kernel_init=he_init,
               dtype=self.dtype, name="proj")(x)
      return self._bn(train, "proj_bn")(y)
    if changes_shape:  # option A: subsample, pad channels with zeros
      y = x[:, ::self.strides, ::self.strides]
      extra = self.features - x.shape[-1]
      return jnp.pad(y, ((0, 0), (0, 0), (0, 0),
                         (extra // 2, extra - extra // 2)))
    return x

  def _mix(self, x, residual, short, train):
    """The Identity Mappings shortcut variants, on identity shortcuts."""
    variant = self.shortcut_variant
    if self.plain or variant in ("identity", "conv1x1"):
      return residual, short
    if variant == "scaling":
      lam = self.shortcut_scale
      return (residual * (1 - lam) if self.scale_residual else residual,
              short * lam)
    if variant == "dropout":  # keeps half the shortcut; 0.5x at test
      keep = 1.0 - self.shortcut_dropout
      if not train:
        return residual, short * keep
      mask = jax.random.bernoulli(self.make_rng("dropout"), keep, short.shape)
      return residual, short * mask.astype(short.dtype)
    gate = nn.sigmoid(Conv(
        x.shape[-1], (1, 1), kernels=self.kernels, kernel_init=he_init,
        bias_init=nn.initializers.constant(self.gate_bias_init),
        dtype=self.dtype, name="gate")(x))
    if variant == "exclusive_gating":
      return residual * gate, short * (1 - gate)
    return residual, short * (1 - gate)  # shortcut_gating


# How ResNet hands its fields to each ResidualUnit (ResNet._unit_fields).
UNIT_FIELDS_RENAMED = {"use_bn": "batch_norm", "act": "activation",
                       "zero_init_last": "zero_init_residual"}
UNIT_FIELDS_DERIVED = ("features", "strides", "bottleneck", "inner_width",
                       "stochastic", "kernels")


class ScannedUnits(nn.Module):
  """Identical blocks of a stage under nn.scan: (carry, per-block inputs)."""
  fields: tuple  # ResidualUnit's fields as sorted (name, value) pairs

  @nn.compact
  def __call__(self, x, train: bool, survival, keep):
    return ResidualUnit(**dict(self.fields), name="unit")(
        x, train, survival, keep), None


class ResNet(nn.Module):
  """ResNet v1/v2, ResNeXt, plain twins; CIFAR or ImageNet stem."""
  num_classes: int = 1000
  depth: int = 50
  stem: str = "imagenet"  # imagenet | cifar
  block: str = ""  # basic | bottleneck; "" = the depth's standard block
  widths: Sequence[int] = ()  # per stage; () = 64,128,256,512 / 16,32,64
  stem_width: int = 0  # 0: the first stage's width (bottleneck CIFAR: 16)
  unit: str = "original"
  shortcut: str = "B"
  shortcut_variant: str = "identity"
  shortcut_scale: float = 0.5
  scale_residual: bool = False
  gate_bias_init: float = -6.0
  shortcut_dropout: float = 0.5
  plain: bool = False
  # Bottlenecks: which conv downsamples. "1x1" is the ResNet paper's (and
  # the ResNet default); "3x3" is torchvision's "ResNet v1.5" and the
  # ResNeXt authors' code (the registered ResNeXts set it).
  stride_in: str = "1x1"
  zero_init_residual: bool = False
  cardinality: int = 1
  base_width: int = 64
  batch_norm: bool = True
  activation: str = "relu"
  survival_prob_last: float = 1.0
  stochastic_mode: str = "batch"  # batch | sample
  drop_blocks: Sequence[int] = ()
  block_order: Sequence[int] = ()
  scan_blocks: bool | None = None  # None: scan above SCAN_THRESHOLD blocks
  dtype: Any = jnp.float32
  axis_name: str | None = None
  kernels: Kernels = Kernels()  # how layers compute (the backend's)

  def __post_init__(self):
    check_choice("stem", self.stem, ("imagenet", "cifar"))
    check_choice("unit", self.unit, UNITS)
    check_choice("shortcut", self.shortcut, SHORTCUTS)
    check_choice("shortcut_variant", self.shortcut_variant, SHORTCUT_VARIANTS)
    check_choice("stride_in", self.stride_in, ("1x1", "3x3"))
    check_choice("stochastic_mode", self.stochastic_mode, ("batch", "sample"))
    check_choice("block", self.block, ("", "basic", "bottleneck"))
    activation(self.activation)
    if not 0.0 < self.survival_prob_last <= 1.0:
      raise ValueError(f"survival_prob_last={self.survival_prob_last} must be "
                       "in (0, 1]")
    self._check_layout()
    super().__post_init__()

  # --- layout ----------------------------------------------------------------

  @property
  def block_kind(self) -> str:
    if self.block:
      return self.block
    if self.stem == "imagenet" and self.depth in IMAGENET_STAGES:
      return IMAGENET_STAGES[self.depth][0]
    return "basic"

  @property
  def stage_sizes(self) -> tuple[int, ...]:
    if self.stem == "cifar":
      return cifar_stage_sizes(self.depth, self.block_kind)
    if self.depth not in IMAGENET_STAGES:
      raise ValueError(f"depth={self.depth} is not an ImageNet ResNet; use "
                       f"one of {', '.join(map(str, IMAGENET_STAGES))}")
    return IMAGENET_STAGES[self.depth][1]

  @property
  def stage_widths(self) -> tuple[int, ...]:
    default = (64, 128, 256, 512) if self.stem == "imagenet" else (16, 32, 64)
    widths = tuple(self.widths) or default
    if len(widths) != len(self.stage_sizes):
      raise ValueError(f"widths={widths} needs one width per stage "
                       f"({len(self.stage_sizes)} stages)")
    return widths

  @property
  def num_blocks(self) -> int:
    return sum(self.stage_sizes)

  @property
  def scanned(self) -> bool:
    if self.scan_blocks is None:
      return self.num_blocks >= SCAN_THRESHOLD and not self.block_order
    return self.scan_blocks

  @property
  def layer_kernels(self) -> Kernels:
    """A scanned net computes every layer as its scanned stages do."""
    return self.kernels.in_scan() if self.scanned else self.kernels

  def survival_probs(self) -> list[float]:
    """Linear decay p_l = 1 - (l/L)(1 - p_L), l = 1..L (Huang et al.)."""
    big_l = self.num_blocks
    return [1.0 - (l / big_l) * (1.0 - self.survival_prob_last)
            for l in range(1, big_l + 1)]

  def _check_layout(self) -> None:
    widths = self.stage_widths  # raises for a bad depth or widths
    n = self.num_blocks
    bad = [b for b in self.drop_blocks if not 0 <= b < n]
    if bad:
      raise ValueError(f"drop_blocks={tuple(self.drop_blocks)} names blocks "
                       f"outside 0..{n - 1}")
    if self.block_order:
      if sorted(self.block_order) != list(range(n)):
        raise ValueError(f"block_order must be a permutation of 0..{n - 1}")
      if self.scan_blocks:
        raise ValueError("block_order needs scan_blocks=False (reordering "
                         "works on unrolled blocks)")
      shapes = self.block_shapes()
      for pos, b in enumerate(self.block_order):
        if shapes[b] != shapes[pos]:
          raise ValueError(f"block_order puts block {b} at position {pos}, "
                           "where the input or output shape differs")
    if self.shortcut == "A":
      expansion = 4 if self.block_kind == "bottleneck" else 1
      prev = self._stem_features()
      for w in widths:
        if w * expansion < prev:
          raise ValueError(
              f"shortcut='A' cannot zero-pad {prev} channels down to "
              f"{w * expansion}; use shortcut='B'")
        prev = w * expansion
    if self.plain:
      shapes = self.block_shapes()
      reshaping = [b for b in self.drop_blocks
                   if shapes[b][0] != 1 or shapes[b][1] != shapes[b][2]]
      if reshaping:
        raise ValueError(f"drop_blocks={tuple(self.drop_blocks)}: a plain "
                         f"net cannot skip blocks {reshaping}, which change "
                         "the shape")
    if self.zero_init_residual and self.unit == "full_preact":
      raise ValueError("zero_init_residual=True needs a unit whose branch "
                       "ends in BatchNorm; full_preact ends in a conv")
    if self.plain and (self.shortcut_variant != "identity"
                       or self.shortcut == "C"):
      field = ("shortcut='C'" if self.shortcut == "C" else
               f"shortcut_variant={self.shortcut_variant!r}")
      raise ValueError(f"{field} needs shortcuts; plain=True has none")
    if self.cardinality > 1 and self.block_kind != "bottleneck":
      raise ValueError(f"cardinality={self.cardinality} needs bottleneck "
                       "blocks (ResNeXt); set block='bottleneck'")

  def _stem_features(self) -> int:
    return self.stem_width or self.stage_widths[0]

  def block_shapes(self) -> list[tuple[int, int, int]]:
    """(stride, in channels, out channels) of every block."""
    expansion = 4 if self.block_kind == "bottleneck" else 1
    shapes, prev = [], self._stem_features()
    for stage, (n, w) in enumerate(zip(self.stage_sizes, self.stage_widths)):
      for i in range(n):
        stride = 2 if i == 0 and stage > 0 else 1
        shapes.append((stride, prev, w * expansion))
        prev = w * expansion
    return shapes

  # --- the network -------------------------------------------------------------

  def _unit_fields(self, stage: int, first: bool) -> dict[str, Any]:
    """ResidualUnit's fields for a block of `stage`: those of the same name
    copied (a new one is passed down by being added to both classes), the
    renamed and the derived ones here (test_resnet checks the three cover
    every field of ResidualUnit)."""
    bottleneck = self.block_kind == "bottleneck"
    width = self.stage_widths[stage]
    inner = (width * self.base_width // 64 * self.cardinality
             if bottleneck else 0)
    shared = {f: getattr(self, f) for f in UNIT_FIELDS_SHARED}
    renamed = {unit: getattr(self, net) for unit, net in
               UNIT_FIELDS_RENAMED.items()}
    derived = dict(
        features=width * (4 if bottleneck else 1),
        strides=2 if first and stage > 0 else 1, bottleneck=bottleneck,
        inner_width=inner, stochastic=self.survival_prob_last < 1.0,
        kernels=self.layer_kernels)
    return {**shared, **renamed, **derived}

  @nn.compact
  def __call__(self, x, train: bool = False, keep=None):
    """`keep`: None, or a run-time array of one 0/1 per block that replaces
    `drop_blocks` (0 removes the block), so that one compiled network
    evaluates every lesion. A plain net cannot remove a block that changes
    the shape and ignores its entry (`drop_blocks` refuses it)."""
    x = self._stem(x.astype(self.dtype), train)
    survival = self.survival_probs()
    if keep is None:
      keep = [0.0 if b in self.drop_blocks else 1.0
              for b in range(self.num_blocks)]
    else:
      keep = jnp.asarray(keep, jnp.float32)
      if keep.shape != (self.num_blocks,):
        raise ValueError(f"keep has shape {keep.shape}; give one value per "
                         f"block, ({self.num_blocks},)")
    if self.scanned:
      x = self._scanned_stages(x, train, survival, keep)
    else:
      x = self._unrolled_stages(x, train, survival, keep)
    if self.unit == "full_preact" and self.batch_norm:
      x = bn_act(train, self.dtype, self.axis_name, self.layer_kernels,
                 self.activation, name="final_bn")(x)
    elif self.unit in PREACT_UNITS:
      x = activation(self.activation)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)

  def _stem(self, x, train):
    act = activation(self.activation)
    width = self._stem_features()
    preact = self.unit in PREACT_UNITS
    if self.stem == "cifar":
      x = Conv(width, (3, 3), (1, 1), 1, not self.batch_norm,
               kernels=self.layer_kernels, kernel_init=he_init,
               dtype=self.dtype, name="stem_conv")(x)
      if preact:  # the first unit's pre-activation does BN-ReLU
        return x
    else:
      x = Conv(width, (7, 7), (2, 2), 3, not self.batch_norm,
               kernels=self.layer_kernels, kernel_init=he_init,
               dtype=self.dtype, name="stem_conv")(x)
    if self.batch_norm:
      x = bn_act(train, self.dtype, self.axis_name, self.layer_kernels,
                 self.activation, name="stem_bn")(x)
    else:
      x = act(x)
    if self.stem == "imagenet":
      x = self.layer_kernels.pool_max(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    return x

  def _units(self):
    """(global index, stage, first-in-stage, name) in forward order."""
    b = 0
    for stage, n in enumerate(self.stage_sizes):
      for i in range(n):
        yield b, stage, i == 0, f"stage{stage + 1}_block{i + 1}"
        b += 1

  def _unrolled_stages(self, x, train, survival, keep):
    units = {b: ResidualUnit(**self._unit_fields(stage, first), name=name)
             for b, stage, first, name in self._units()}
    for b in list(self.block_order) or range(self.num_blocks):
      x = units[b](x, train, survival[b], keep[b])
    return x

  def _scanned_stages(self, x, train, survival, keep):
    """The first block of each stage unrolled (it may change shape), the
    identical rest compiled once with nn.scan."""
    b = 0
    for stage, n in enumerate(self.stage_sizes):
      x = ResidualUnit(**self._unit_fields(stage, True),
                       name=f"stage{stage + 1}_block1")(
                           x, train, survival[b], keep[b])
      if n > 1:
        rest = slice(b + 1, b + n)
        scan = nn.scan(ScannedUnits,
                       variable_axes={"params": 0, "batch_stats": 0},
                       split_rngs={"params": True, "dropout": True},
                       in_axes=(nn.broadcast, 0, 0), length=n - 1)
        fields = tuple(sorted(self._unit_fields(stage, False).items()))
        x, _ = scan(fields, name=f"stage{stage + 1}_rest")(
            x, train, jnp.asarray(survival[rest], jnp.float32),
            jnp.asarray(keep[rest], jnp.float32))
      b += n
    return x


UNIT_FIELDS_SHARED = tuple(
    f.name for f in dataclasses.fields(ResidualUnit)
    if f.name in {g.name for g in dataclasses.fields(ResNet)}
    and f.name not in (*UNIT_FIELDS_RENAMED, *UNIT_FIELDS_DERIVED,
                       "parent", "name"))


def _register():
  paper_v1 = "He et al. 2016, Deep Residual Learning for Image Recognition"
  paper_v2 = "He et al. 2016, Identity Mappings in Deep Residual Networks"
  imagenet = dict(input_shape=(224, 224, 3), num_classes=1000,
                  dataset="imagenet2012")
  cifar = dict(input_shape=(32, 32, 3), num_classes=10, dataset="cifar10")
  for depth, params, flops, err in ((18, 11_689_512, 1.8e9, 27.88),
                                    (34, 21_797_672, 3.6e9, 25.03),
                                    (50, 25_557_032, 3.8e9, 22.85),
                                    (101, 44_549_160, 7.6e9, 21.75),
                                    (152, 60_192_808, 11.3e9, 21.43)):
    register_model(f"resnet{depth}", ResNet, fields=dict(depth=depth),
                   paper=paper_v1, params=params, params_paper=params,
                   flops=int(flops), error=err, **imagenet)
  # CIFAR: the paper's Table 6 (rounded) and the exact option-A counts.
  for depth, params, exact, err in (
      (20, 0.27e6, 269_722, 8.75), (32, 0.46e6, 464_154, 7.51),
      (44, 0.66e6, 658_586, 7.17), (56, 0.85e6, 853_018, 6.97),
      (110, 1.7e6, 1_727_962, 6.43), (1202, 19.4e6, None, 7.93)):
    register_model(f"resnet{depth}_cifar", ResNet,
                   fields=dict(depth=depth, stem="cifar", shortcut="A"),
                   paper=paper_v1, params=exact, params_paper=params,
                   error=err, **cifar)
    register_model(f"plain{depth}_cifar", ResNet,
                   fields=dict(depth=depth, stem="cifar", plain=True),
                   paper=paper_v1 + " (plain twin)", params=exact, **cifar)
  for depth, params, exact, err in ((110, 1.7e6, 1_730_714, 6.37),
                                    (164, 1.7e6, 1_704_154, 5.46),
                                    (1001, 10.2e6, None, 4.92)):
    block = "basic" if depth == 110 else "bottleneck"
    register_model(f"preact_resnet{depth}_cifar", ResNet,
                   fields=dict(depth=depth, stem="cifar", block=block,
                               unit="full_preact", shortcut="B"),
                   paper=paper_v2, params=exact, params_paper=params,
                   error=err, **cifar)
  # Any depth, for the configs: a run records the network it trains, not the
  # nearest registered depth.
  register_model("resnet_cifar", ResNet, fields=dict(
      depth=20, stem="cifar", shortcut="A"), paper=paper_v1 + " (any 6n+2)",
                 **cifar)
  register_model("preact_resnet_cifar", ResNet, fields=dict(
      depth=29, stem="cifar", block="bottleneck", unit="full_preact",
      shortcut="B"), paper=paper_v2 + " (any depth)", **cifar)
  paper_x = "Xie et al. 2017, Aggregated Residual Transformations"
  for name, card, params, exact, err in (
      ("resnext29_8x64d", 8, 34.4e6, 34_426_698, 3.65),
      ("resnext29_16x64d", 16, 68.1e6, 68_155_210, 3.58)):
    register_model(name, ResNet, fields=dict(
        depth=29, stem="cifar", block="bottleneck", widths=(64, 128, 256),
        cardinality=card, base_width=64, stride_in="3x3"), paper=paper_x,
                   params=exact, params_paper=params, error=err, **cifar)
  register_model("resnext50_32x4d", ResNet, fields=dict(
      depth=50, cardinality=32, base_width=4, stride_in="3x3"), paper=paper_x,
                 params=25_028_904, params_paper=25.0e6, error=22.2,
                 **imagenet)
  register_model("stochastic_depth_resnet110_cifar", ResNet, fields=dict(
      depth=110, stem="cifar", shortcut="A", survival_prob_last=0.5),
                 paper="Huang et al. 2016, Deep Networks with Stochastic "
                 "Depth", params_paper=1.7e6, error=5.25, **cifar)


_register()
