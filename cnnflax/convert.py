"""Weight import: a torchvision or timm state dict -> a cnnflax workdir.

  python -m cnnflax.convert --source=torchvision:resnet50 \\
      --weights=resnet50.pth --workdir=runs/resnet50_torchvision

`--weights` is the model's state dict: a `.pth`/`.pt`/`.bin` file (read
through torch, which cnnflax does not otherwise need) or a `.safetensors`
file (read without torch). The workdir gets `config.json` (configs/default.py
with the ImageNet settings, the model and the fields the import needed) and
the checkpoint of step 0 that `run.Run` would restore: parameters, BatchNorm
statistics, a fresh optimizer state. Evaluation, fine-tuning (`main.py` on
the same workdir resumes from it) and experiments/table6_lesion.py read it as
any run of theirs.

Layers are paired by structure: each cnnflax layer, in the order the network
calls it, is named in the source's terms by a small per-family rule (e.g.
`stage2_block1/conv0` -> `layer2.0.conv1`), never by a list of hundreds of
names; then shapes are checked and kernels transposed (OIHW -> HWIO,
out x in -> in x out). A file that does not fit stops at the first layer that
does not, in one line (errors.CheckpointError; exit 2 on the command line).

Where the two implementations differ in something that is a field here, the
import sets that field and says so (`fields` in the result); see SOURCES.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import re
import sys
import types
from typing import Any, Callable, NamedTuple

if __name__ == "__main__":  # before jax loads: nothing before it survives
  from cnnflax import backend
  backend.start()

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnnflax import checkpoint, data, models, optim, paths
from cnnflax import run as run_lib
from cnnflax import step as step_lib
from cnnflax.errors import CheckpointError, ConfigError
from cnnflax.models import layers, mobilenet, norm, vgg

Path = tuple[str, ...]


class Ref(NamedTuple):
  """Where a cnnflax layer's weights are in the source's state dict."""
  name: str  # the torch module's name, e.g. "layer1.0.conv1"
  optional: bool = False  # a training-only head the file may leave out
  chw: int = 0  # a linear layer after a flatten: channels of the C, H, W map
  pool: int = 0  # torch average-pools that map adaptively to pool x pool


# --- structural name rules, one per family ------------------------------------


def _plus_one(name: str) -> str:
  """conv0 -> conv1: cnnflax counts from 0, torchvision from 1."""
  return re.sub(r"\d+$", lambda m: str(int(m[0]) + 1), name)


def torchvision_resnet(model, order: list[Path]) -> dict[Path, Ref]:
  """ResNet and ResNeXt: stageS_blockB/convI -> layerS.(B-1).conv(I+1),
  proj -> downsample.0 (its BN downsample.1), stem -> conv1/bn1, head -> fc."""
  top = {"stem_conv": "conv1", "stem_bn": "bn1", "head": "fc"}
  inner = {"proj": "downsample.0", "proj_bn": "downsample.1"}
  out = {}
  for p in order:
    if len(p) == 1:
      out[p] = Ref(top[p[0]])
      continue
    stage, block = re.fullmatch(r"stage(\d+)_block(\d+)", p[0]).groups()
    leaf = inner.get(p[1]) or _plus_one(p[1])
    out[p] = Ref(f"layer{stage}.{int(block) - 1}.{leaf}")
  return out


def torchvision_vgg(model, order: list[Path]) -> dict[Path, Ref]:
  """features.N counts every conv, BN, ReLU and pool of Table 1's column;
  classifier.0/3/6 are FC-4096, FC-4096, FC-classes (on the C, H, W flatten
  of the 7x7x512 maps)."""
  index, i, stage, conv = {}, 0, 1, 1
  for layer in vgg.CONFIGS[model.config]:
    if layer == "maxpool":
      i, stage, conv = i + 1, stage + 1, 1
    else:
      index[f"conv{stage}_{conv}"] = i
      i, conv = i + (3 if model.batch_norm else 2), conv + 1
  fc = {"fc6": Ref("classifier.0", chw=512, pool=7),
        "fc7": Ref("classifier.3"),
        "fc8": Ref("classifier.6")}
  return {p: fc[p[0]] if p[0] in fc else
          Ref(f"features.{index[p[1]] + (p[2] == 'BatchNorm_0')}")
          for p in order}


def torchvision_densenet(model, order: list[Path]) -> dict[Path, Ref]:
  """blockB/layerL/convK/{bn,conv} -> features.denseblockB.denselayerL.
  {normK,convK}; transitionB/{bn,conv} -> features.transitionB.{norm,conv}."""
  top = {"stem_conv": "features.conv0", "stem_bn": "features.norm0",
         "final_bn": "features.norm5", "head": "classifier"}
  out = {}
  for p in order:
    if p[0] in top:
      out[p] = Ref(top[p[0]])
    elif p[0].startswith("transition"):
      out[p] = Ref(f"features.{p[0]}.{'norm' if p[1] == 'bn' else 'conv'}")
    else:
      block, layer, conv, kind = p
      k = conv[-1]
      out[p] = Ref(f"features.dense{block}.dense{layer}."
                   f"{'norm' if kind == 'bn' else 'conv'}{k}")
  return out


def torchvision_mobilenet_v2(model, order: list[Path]) -> dict[Path, Ref]:
  """features.0 is the stem, features.B block B (its `conv` Sequential:
  [expand conv-BN-ReLU6,] depthwise conv-BN-ReLU6, pointwise conv, BN),
  features.18 the last 1x1, classifier.1 the linear layer."""
  top = {"conv1": "features.0.0", "conv1_bn": "features.0.1",
         "conv_last": "features.18.0", "conv_last_bn": "features.18.1",
         "head": "classifier.1"}
  out = {}
  for p in order:
    if p[0] in top:
      out[p] = Ref(top[p[0]])
      continue
    b = int(p[0][len("block"):])
    e = 0 if b == 1 or model.expansion == 1 else 1  # block 1 has t = 1
    leaf = {"expand": "0.0", "expand_bn": "0.1", "depthwise": f"{e}.0",
            "depthwise_bn": f"{e}.1", "pointwise": f"{e + 1}",
            "pointwise_bn": f"{e + 2}"}[p[-1]]
    out[p] = Ref(f"features.{b}.conv.{leaf}")
  return out


def timm_mobilenet_v1(model, order: list[Path]) -> dict[Path, Ref]:
  """separableK -> blocks.S.I, a new stage S at each stride-2 layer of
  Table 1; conv_dw/bn1 and conv_pw/bn2 inside; conv_stem/bn1, classifier."""
  top = {"conv1": "conv_stem", "conv1_bn": "bn1", "head": "classifier"}
  inner = {"depthwise": "conv_dw", "depthwise_bn": "bn1",
           "pointwise": "conv_pw", "pointwise_bn": "bn2"}
  blocks, stage, i = {}, 0, -1
  for k, (_, stride) in enumerate(mobilenet.V1_LAYERS, start=1):
    stage, i = (stage + 1, 0) if stride == 2 else (stage, i + 1)
    blocks[f"separable{k}"] = f"blocks.{stage}.{i}"
  return {p: Ref(top[p[0]]) if p[0] in top else
          Ref(f"{blocks[p[0]]}.{inner[p[1]]}") for p in order}


def _conv_bn(order: list[Path], module: Path, torch_names: list[str],
             optional: bool = False) -> dict[Path, Ref]:
  """The conv-BN pairs (ConvBNAct) under `module`, in call order, named
  `torch_names[i].conv` / `.bn` (torch's BasicConv2d / ConvNormAct)."""
  units = _units(order, module)
  if len(units) != len(torch_names):
    raise ValueError(f"{'/'.join(module)} has {len(units)} conv-BN layers, "
                     f"the rule names {len(torch_names)}")
  out = {}
  for unit, name in zip(units, torch_names):
    out.update(_pair(unit, name, optional))
  return out


def _pair(unit: Path, name: str, optional: bool = False) -> dict[Path, Ref]:
  """One ConvBNAct: its conv and BatchNorm -> `name`.conv, `name`.bn."""
  return {unit + ("Conv_0",): Ref(f"{name}.conv", optional),
          unit + ("BatchNorm_0",): Ref(f"{name}.bn", optional)}


def _units(order: list[Path], module: Path) -> list[Path]:
  """ConvBNAct paths directly under `module`, in call order."""
  n = len(module)
  return list(dict.fromkeys(
      p[:-1] for p in order if p[:n] == module and len(p) == n + 2
      and p[-1] in ("Conv_0", "BatchNorm_0")))


# torchvision's Inception3, module by module: its branch names in the order
# our tables (inception.py) list the convolutions.
V3_BRANCHES = {
    "a": ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1",
          "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool"],
    "b": ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
    "c": (["branch1x1"] + [f"branch7x7_{i}" for i in (1, 2, 3)]
          + [f"branch7x7dbl_{i}" for i in range(1, 6)] + ["branch_pool"]),
    "d": (["branch3x3_1", "branch3x3_2"]
          + [f"branch7x7x3_{i}" for i in range(1, 5)]),
    "e": ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b",
          "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3a",
          "branch3x3dbl_3b", "branch_pool"],
}
V3_MODULES = {"mixed_5b": "a", "mixed_5c": "a", "mixed_5d": "a",
              "mixed_6a": "b", "mixed_6b": "c", "mixed_6c": "c",
              "mixed_6d": "c", "mixed_6e": "c", "mixed_7a": "d",
              "mixed_7b": "e", "mixed_7c": "e"}
V3_STEM = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1",
           "Conv2d_4a_3x3"]


def torchvision_inception_v3(model, order: list[Path]) -> dict[Path, Ref]:
  """mixed_6b -> Mixed_6b with V3_BRANCHES' names; the auxiliary head ->
  AuxLogits (training only: a file without it keeps fresh ones)."""
  out = _conv_bn(order, ("stem",), V3_STEM)
  for module, kind in V3_MODULES.items():
    out.update(_conv_bn(order, (module,), [
        f"Mixed_{module[len('mixed_'):]}.{b}" for b in V3_BRANCHES[kind]]))
  if any(p[0] == "aux" for p in order):
    out.update(_pair(("aux", "conv0"), "AuxLogits.conv0", True))
    out.update(_pair(("aux", "conv1"), "AuxLogits.conv1", True))
    out[("aux", "logits")] = Ref("AuxLogits.fc", optional=True)
  out[("logits",)] = Ref("fc")
  return {p: out[p] for p in order}


def _timm_branches(order: list[Path], module: Path, torch_module: str
                   ) -> dict[Path, Ref]:
  """timm's names for our branch layers `branchI_J[a|b]` of one module: a
  branch with a fork is flat (`branch2_3a`, Inception-C), a branch of one
  conv is the conv itself (`branch0`), any other is a Sequential whose
  index counts the pool as ours does (`branch3.1`)."""
  units = _units(order, module)
  parsed = [re.fullmatch(r"branch(\d+)_(\d+)([ab]?)", u[-1]).groups()
            for u in units]
  names = []
  for i, j, fork in parsed:
    siblings = [q for q in parsed if q[0] == i]
    if any(q[2] for q in siblings):
      names.append(f"{torch_module}.branch{i}_{j}{fork}")
    elif len(siblings) == 1 and j == "0":
      names.append(f"{torch_module}.branch{i}")
    else:
      names.append(f"{torch_module}.branch{i}.{j}")
  return _conv_bn(order, module, names)


def timm_inception_v4(model, order: list[Path]) -> dict[Path, Ref]:
  """timm's `features` Sequential: the three stem convs, Mixed3a/4a/5a,
  4 x A, Reduction-A, 7 x B, Reduction-B, 3 x C, then last_linear."""
  modules = ["mixed_3a", "mixed_4a", "mixed_5a"]
  for stage, n in zip("abc", model.repeats):
    modules += [f"inception_{stage}{i + 1}" for i in range(n)]
    modules += [f"reduction_{stage}"] if stage != "c" else []
  out = _conv_bn(order, ("stem",), [f"features.{i}" for i in range(3)])
  for i, module in enumerate(modules, start=3):
    if module in ("mixed_3a", "mixed_5a"):  # one conv beside a max-pool
      out.update(_conv_bn(order, (module,), [f"features.{i}.conv"]))
    else:
      out.update(_timm_branches(order, (module,), f"features.{i}"))
  out[("logits",)] = Ref("last_linear")
  return {p: out[p] for p in order}


def timm_inception_resnet_v2(model, order: list[Path]) -> dict[Path, Ref]:
  """timm's (and Cadene's) names: conv2d_1a..4a, mixed_5b, repeat (A),
  mixed_6a, repeat_1 (B), mixed_7a, repeat_2 (C) and the last, linear C
  block `block8`, conv2d_7b, classif; a block's 1x1 up-projection is
  `conv2d`."""
  out = _conv_bn(order, ("stem",), ["conv2d_1a", "conv2d_2a", "conv2d_2b",
                                     "conv2d_3b", "conv2d_4a"])
  out.update(_timm_branches(order, ("mixed_5b",), "mixed_5b"))
  out.update(_timm_branches(order, ("reduction_a",), "mixed_6a"))
  out.update(_timm_branches(order, ("reduction_b",), "mixed_7a"))
  repeats = {"a": "repeat", "b": "repeat_1", "c": "repeat_2"}
  for stage, n in zip("abc", model.repeats):
    for i in range(n):
      torch_block = (f"{repeats[stage]}.{i}" if stage != "c" or i < n - 1
                     else "block8")
      block = f"inception_{stage}{i + 1}"
      out.update(_timm_branches(order, (block, "mixed"), torch_block))
      out[(block, "up")] = Ref(f"{torch_block}.conv2d")
  out.update(_pair(("head_conv",), "conv2d_7b"))
  out[("logits",)] = Ref("classif")
  return {p: out[p] for p in order}


def torchvision_googlenet(model, order: list[Path]) -> dict[Path, Ref]:
  """conv1, conv2 (the 1x1 reduce), conv3; inceptionXY.branch1..4 (the
  pool projection is branch4.1); aux1/aux2 (conv, fc1, fc2); fc."""
  stem = {"conv1": "conv1", "conv2_reduce": "conv2", "conv2": "conv3"}
  branch = {"1x1": "branch1", "3x3_reduce": "branch2.0", "3x3": "branch2.1",
            "5x5_reduce": "branch3.0", "5x5": "branch3.1",
            "pool_proj": "branch4.1"}
  out = {}
  for p in order:
    kind = "conv" if p[-1] == "Conv_0" else "bn"
    if p[0] in stem:
      out[p] = Ref(f"{stem[p[0]]}.{kind}")
    elif p[0].startswith("inception_"):
      out[p] = Ref(f"inception{p[0][len('inception_'):]}.{branch[p[1]]}"
                   f".{kind}")
    elif p[0].startswith("aux_"):
      aux = "aux1" if p[0] == "aux_4a" else "aux2"
      leaf = {"conv": f"conv.{kind}", "fc": "fc1", "logits": "fc2"}[p[1]]
      out[p] = Ref(f"{aux}.{leaf}", optional=True,
                   chw=128 if p[1] == "fc" else 0)
    else:
      out[p] = Ref("fc")
  return out


# --- the sources -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
  """A model of another library that a cnnflax model computes exactly."""
  model: str  # the cnnflax registry name
  names: Callable[[nn.Module, list[Path]], dict[Path, Ref]]
  fields: dict[str, Any] = dataclasses.field(default_factory=dict)
  why: str = ""  # why those fields
  notes: tuple[str, ...] = ()


_V15 = ("torchvision's ResNet ('v1.5') downsamples in the 3x3 of a "
        "bottleneck; the paper, and cnnflax by default, in the 1x1")
_FOLD = ("torchvision's *_bn VGGs keep a bias before each BatchNorm; it is "
         "folded into the BatchNorm's running mean (same function)")
_VGG_POOL = ("torchvision's VGG average-pools the last maps adaptively to "
             "7x7 before the classifier; for --image_size outside 224-255 "
             "that pooling is folded into fc6, so the import computes what "
             "torchvision's VGG computes at that size")
_TF_INPUT = ("its pretrained weights (ported from TensorFlow) expect inputs "
             "scaled to [-1, 1] (torchvision: transform_input=True), not "
             "ImageNet mean/std normalisation")


def _sources() -> dict[str, Source]:
  s = {}
  for d in (18, 34, 50, 101, 152):
    bottleneck = d >= 50
    s[f"torchvision:resnet{d}"] = Source(
        f"resnet{d}", torchvision_resnet,
        {"stride_in": "3x3"} if bottleneck else {}, _V15 if bottleneck else "")
  s["torchvision:resnext50_32x4d"] = Source("resnext50_32x4d",
                                            torchvision_resnet)
  for n in (11, 13, 16, 19):
    s[f"torchvision:vgg{n}"] = Source(f"vgg{n}", torchvision_vgg,
                                      notes=(_VGG_POOL,))
    s[f"torchvision:vgg{n}_bn"] = Source(f"vgg{n}_bn", torchvision_vgg,
                                         notes=(_FOLD, _VGG_POOL))
  for d in (121, 169, 201):
    s[f"torchvision:densenet{d}"] = Source(f"densenet{d}",
                                           torchvision_densenet)
  s["torchvision:mobilenet_v2"] = Source("mobilenet_v2",
                                         torchvision_mobilenet_v2)
  s["timm:mobilenetv1_100"] = Source(
      "mobilenet_v1", timm_mobilenet_v1, {"activation": "relu6"},
      "timm's MobileNet v1 uses ReLU6; the paper, and cnnflax by default, "
      "ReLU")
  s["torchvision:inception_v3"] = Source(
      "inception_v3", torchvision_inception_v3, {"avg_pool_count_pad": True},
      "torchvision's 3x3/1 average pools count the zero padding; the "
      "released TF graph's (and cnnflax's by default) do not",
      ("inception_v3: " + _TF_INPUT,))
  s["torchvision:googlenet"] = Source(
      "googlenet_bn", torchvision_googlenet,
      {"kernel_5x5": 3, "pool4_window": 2},
      "torchvision's GoogLeNet (as Google's released TF-slim inception_v1) "
      "has a 3x3 in the '5x5' branch and a 2x2/2 max-pool after 4e; "
      "Table 1 of the paper, and cnnflax by default, a 5x5 and a 3x3/2",
      ("googlenet: " + _TF_INPUT,
       "googlenet: torchvision's auxiliary heads pool adaptively to 4x4, "
       "cnnflax's with the paper's 5x5/3 (training only)"))
  s["timm:inception_v4"] = Source(
      "inception_v4", timm_inception_v4,
      notes=("inception_v4: timm's weights expect inputs scaled to [-1, 1] "
             "(mean = std = 0.5)",))
  s["timm:inception_resnet_v2"] = Source(
      "inception_resnet_v2", timm_inception_resnet_v2,
      notes=("inception_resnet_v2: timm's weights expect inputs scaled to "
             "[-1, 1] (mean = std = 0.5)",))
  return s


SOURCES = _sources()


def source_spec(source: str) -> Source:
  if source not in SOURCES:
    raise ConfigError(f"--source={source!r} is not importable; choose one "
                      f"of: {', '.join(SOURCES)}")
  return SOURCES[source]


# --- reading the weights ------------------------------------------------------


def import_torchvision() -> types.ModuleType:
  """torchvision, also beside a torch that its compiled ops do not fit (PyPI's
  CUDA torchvision next to a CPU torch): when its `_C` library does not
  load, the two operators that its Python code looks up at import (nms,
  qnms) are declared without a kernel, which is all the model builders need.
  Where the compiled ops load, nothing is declared. Only tests build
  torchvision models; the converter reads state dicts."""
  if "torchvision" in sys.modules:
    return sys.modules["torchvision"]
  import glob
  import importlib.util
  import os
  import torch
  if not _has_torchvision_op(torch, "nms"):
    spec = importlib.util.find_spec("torchvision")
    folder = os.path.dirname(spec.origin) if spec and spec.origin else ""
    try:
      for lib in glob.glob(os.path.join(folder, "_C*")):
        torch.ops.load_library(lib)
    except (OSError, RuntimeError):
      pass
  missing = [op for op in ("nms", "qnms")
             if not _has_torchvision_op(torch, op)]
  if missing:
    lib = torch.library.Library("torchvision", "DEF")
    for op in missing:
      lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) "
                 "-> Tensor")
    _KEEP.append(lib)  # the declarations live as long as this object
  import torchvision
  return torchvision


def _has_torchvision_op(torch, name: str) -> bool:
  try:
    getattr(torch.ops.torchvision, name)
    return True
  except (AttributeError, RuntimeError):
    return False


_KEEP: list = []


def read_weights(weights: str) -> dict[str, np.ndarray]:
  """name -> array of a state dict, in the file's order; a training
  checkpoint's `state_dict` / `model` entry and DataParallel's `module.`
  prefixes are unwrapped. Local files are memory-mapped."""
  path = paths.path(weights)
  if not path.exists():
    raise CheckpointError(f"--weights={weights}: no such file")
  local = not paths.is_url(weights)
  try:
    if path.name.endswith(".safetensors"):
      try:
        from safetensors import numpy as safetensors_numpy
      except ImportError:
        raise ConfigError(f"--weights={weights}: reading .safetensors "
                          "needs the safetensors package (pip install "
                          "safetensors)") from None
      tensors = (safetensors_numpy.load_file(str(path)) if local else
                 safetensors_numpy.load(path.read_bytes()))
    else:
      tensors = _torch_load(str(path) if local else io.BytesIO(
          path.read_bytes()), weights)
  except (CheckpointError, ConfigError):
    raise
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0][:200] if str(e) else ""
    raise CheckpointError(f"--weights={weights} cannot be read "
                          f"({type(e).__name__}: {first}); give a state "
                          "dict as .pth/.pt or .safetensors") from None
  return {re.sub(r"^module\.", "", k): v for k, v in tensors.items()}


def _torch_load(source, weights: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise ConfigError(f"--weights={weights}: reading a torch file needs "
                      "torch (pip install torch), or give the weights as "
                      ".safetensors") from None
  try:
    obj = torch.load(source, map_location="cpu", weights_only=True,
                     mmap=isinstance(source, str))
  except RuntimeError:  # a legacy (not zip) file cannot be memory-mapped
    obj = torch.load(source, map_location="cpu", weights_only=True)
  for key in ("state_dict", "model", "state_dict_ema"):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
      break
  if not isinstance(obj, dict):
    raise CheckpointError(f"--weights={weights} holds a {type(obj).__name__}"
                          ", not a state dict; save model.state_dict()")
  return {k: v.detach().float().numpy() if v.is_floating_point()
          else v.numpy() for k, v in obj.items()
          if isinstance(v, torch.Tensor)}


# --- the config, the model and the run identity -------------------------------


def make_config(spec: Source, image_size: int = 0) -> ml_collections.ConfigDict:
  """configs/default.py with the ImageNet settings at the model's size, the
  model's name and the fields the import sets."""
  from configs import default  # the repository's configs, as main.py's
  info = models.model_info(spec.model)
  c = default.get_config()
  c.model.name = spec.model
  default.imagenet(c, image_size or info.input_shape[0])
  for key, value in spec.fields.items():
    c.model[key] = value
  return c


def run_identity(config: ml_collections.ConfigDict) -> dict:
  """What run.run_identity gives for this config, without loading the
  dataset (its shape and class count come from data.image_shape /
  data.num_classes, as run.Run's checks agree)."""
  axis = step_lib.AXIS if config.batch_norm_sync else None
  return run_lib.run_identity(config, run_lib.build_model(config, axis),
                            data.image_shape(config.dataset),
                            data.num_classes(config.dataset))


def optimizer(config: ml_collections.ConfigDict):
  """The run's optimizer; its state's structure does not depend on the
  steps per epoch, so one step stands in for the dataset's."""
  steps = optim.total_steps(config, 1)
  return optim.create_optimizer(config,
                                optim.create_schedule(config, 1, steps))


# --- pairing the layers -------------------------------------------------------

LEAF_MODULES = (nn.Conv, nn.Dense, nn.BatchNorm, layers.Conv, norm.BatchNorm)


class Trace(NamedTuple):
  """What one abstract pass of the training-mode network shows."""
  order: tuple[Path, ...]  # convs, linear layers, BatchNorms in call order
  variables: dict  # abstract {"params", "batch_stats"}
  calls: dict  # top-level submodule -> (unbound copy, its abstract args)


@functools.lru_cache(maxsize=4)
def trace(model: nn.Module, image_shape: tuple[int, int, int]) -> Trace:
  """The training-mode network's layers in call order, its abstract
  variables and how it calls each top-level submodule (to initialise one
  alone). Kept for `load` after `convert` in one process: tracing a deep
  net takes seconds."""
  order: dict[Path, None] = {}
  calls: dict[str, tuple] = {}

  def record(next_fun, args, kwargs, context):
    # Only calls of bound modules: a clone below runs its checks unbound.
    if context.method_name == "__call__" and context.module.scope:
      path = tuple(context.module.path)
      if isinstance(context.module, LEAF_MODULES):
        order.setdefault(path, None)
      if len(path) == 1 and path[0] not in calls:
        calls[path[0]] = (context.module.clone(parent=None, name=None),
                          jax.tree.map(_abstract, (args, kwargs)))
    return next_fun(*args, **kwargs)

  key = jax.random.key(0)
  x = jnp.zeros((1, *image_shape), jnp.float32)
  with nn.intercept_methods(record):
    variables = jax.eval_shape(lambda: model.clone(axis_name=None).init(
        {"params": key, "dropout": key}, x, train=True))
  return Trace(tuple(order), variables, calls)


def _abstract(a):
  return jax.ShapeDtypeStruct(a.shape, a.dtype) if hasattr(a, "shape") else a


def init_alone(module: nn.Module, abstract_args: tuple, seed: int = 0
               ) -> dict:
  """Fresh variables of one submodule, compiled alone (the whole network's
  initialiser takes XLA minutes to compile on a CPU)."""
  args, kwargs = jax.tree.map(
      lambda a: jnp.zeros(a.shape, a.dtype)
      if isinstance(a, jax.ShapeDtypeStruct) else a, abstract_args)
  key = jax.random.key(seed)
  return jax.device_get(jax.jit(lambda key: module.init(
      {"params": key, "dropout": key}, *args, **kwargs))(key))


def _get(tree: dict, path: Path) -> dict:
  for name in path:
    tree = tree[name]
  return tree


class Filler:
  """Fills cnnflax's variables from the state dict, layer by layer, and
  stops at the first layer that does not fit."""

  def __init__(self, tensors: dict[str, np.ndarray], label: str):
    self.tensors = tensors
    self.used: set[str] = set()
    self.label = label  # "cnnflax's resnet50 (torchvision:resnet50)"
    self.pending_bias: tuple[str, np.ndarray] | None = None

  def take(self, name: str, where: Path, want: tuple) -> np.ndarray:
    """The tensor `name`, checked to have the torch-layout shape `want`."""
    if name not in self.tensors:
      raise CheckpointError(
          f"the weights have no {name} (shape {list(want)}), which "
          f"{self.label} needs for {'/'.join(where)}; is --source right?")
    value = self.tensors[name]
    if tuple(value.shape) != tuple(want):
      raise CheckpointError(
          f"the weights' {name} has shape {list(value.shape)} where "
          f"{self.label} needs {list(want)} for {'/'.join(where)}; is "
          "--source right?")
    self.used.add(name)
    return np.asarray(value, np.float32)

  def has(self, ref: Ref) -> bool:
    return any(k.startswith(ref.name + ".") for k in self.tensors)

  def fill(self, where: Path, ref: Ref, params: dict
           ) -> tuple[dict, dict | None]:
    """New values for one cnnflax layer: its params and, for a BatchNorm,
    its batch_stats. `params` are the layer's abstract ones."""
    if "scale" in params:
      return self._batch_norm(where, ref, params["scale"].shape)
    if self.pending_bias is not None:
      raise CheckpointError(
          f"the weights' {self.pending_bias[0]} is a bias that "
          f"{self.label} has no place for (no BatchNorm follows)")
    kernel = params["kernel"]
    out = {}
    if len(kernel.shape) == 4:  # HWIO <- OIHW
      h, w, i, o = kernel.shape
      out["kernel"] = self.take(f"{ref.name}.weight", where,
                                (o, i, h, w)).transpose(2, 3, 1, 0)
    elif ref.chw:  # after a flatten: torch's is C, H, W, cnnflax's H, W, C
      out["kernel"] = self._flattened(where, ref, *kernel.shape)
    else:  # (in, out) <- (out, in)
      n_in, n_out = kernel.shape
      out["kernel"] = self.take(f"{ref.name}.weight", where, (n_out, n_in)).T
    bias_name = f"{ref.name}.bias"
    if "bias" in params:
      out["bias"] = self.take(bias_name, where, params["bias"].shape)
    elif bias_name in self.tensors:  # conv-bias-BN: folded into the BN
      self.pending_bias = (bias_name, self.take(bias_name, where,
                                                (kernel.shape[-1],)))
    return out, None

  def _flattened(self, where, ref, n_in: int, n_out: int) -> np.ndarray:
    """The kernel of a linear layer on a flattened side x side map. Where
    torch first average-pools the map adaptively to pool x pool (VGG's
    classifier), that linear pooling is folded into the kernel: the import
    then computes what torch computes at this input size (at 224, where
    the map is 7x7, the pool is the identity)."""
    side = math.isqrt(n_in // ref.chw)
    torch_side = ref.pool or side
    weight = self.take(f"{ref.name}.weight", where,
                       (n_out, ref.chw * torch_side ** 2))
    weight = weight.reshape(n_out, ref.chw, torch_side, torch_side)
    if torch_side != side:
      p = adaptive_pool_matrix(side, torch_side)
      weight = np.einsum("ocij,iy,jx->ocyx", weight, p, p, optimize=True)
    return weight.transpose(2, 3, 1, 0).reshape(n_in, n_out)

  def _batch_norm(self, where: Path, ref: Ref, n: tuple) -> tuple[dict, dict]:
    mean = self.take(f"{ref.name}.running_mean", where, n)
    if self.pending_bias is not None:  # BN(conv + b) = BN'(conv), mean - b
      mean = mean - self.pending_bias[1]
      self.pending_bias = None
    return ({"scale": self.take(f"{ref.name}.weight", where, n),
             "bias": self.take(f"{ref.name}.bias", where, n)},
            {"mean": mean,
             "var": self.take(f"{ref.name}.running_var", where, n)})

  def check_all_used(self) -> None:
    for name, value in self.tensors.items():
      if name not in self.used and not name.endswith("num_batches_tracked"):
        raise CheckpointError(
            f"the weights' {name} (shape {list(value.shape)}) has no place "
            f"in {self.label}; is --source right?")


def adaptive_pool_matrix(n: int, out: int) -> np.ndarray:
  """torch's AdaptiveAvgPool1d from n to `out` as an (out, n) matrix: row i
  averages positions floor(i n / out) .. ceil((i + 1) n / out) - 1."""
  m = np.zeros((out, n), np.float32)
  for i in range(out):
    start, stop = i * n // out, -(-(i + 1) * n // out)
    m[i, start:stop] = 1.0 / (stop - start)
  return m


def _set(tree: dict, path: Path, values: dict) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree.setdefault(path[-1], {}).update(values)


def convert_variables(spec: Source, model: nn.Module,
                      image_shape: tuple[int, int, int],
                      tensors: dict[str, np.ndarray], label: str
                      ) -> tuple[dict, list[str]]:
  """cnnflax variables {"params", "batch_stats"} from the state dict, and
  the training-only heads that the file left out (freshly initialised)."""
  seen = trace(model.clone(axis_name=None), tuple(image_shape))
  order, abstract = seen.order, seen.variables
  refs = spec.names(model, list(order))
  filler = Filler(tensors, label)
  params, stats, fresh = {}, {}, []
  for where in order:
    ref = refs[where]
    if ref.optional and not filler.has(ref):
      fresh.append("/".join(where))
      continue
    p, s = filler.fill(where, ref, _get(abstract["params"], where))
    _set(params, where, p)
    if s is not None:
      _set(stats, where, s)
  filler.check_all_used()
  variables = {"params": params}
  if "batch_stats" in abstract:
    variables["batch_stats"] = stats
  heads = list(dict.fromkeys(p.split("/")[0] for p in fresh))
  for head in heads:  # training-only heads the file does not have
    for collection, tree in init_alone(*seen.calls[head]).items():
      variables.setdefault(collection, {})[head] = tree
  return variables, heads


# --- the workdir --------------------------------------------------------------


def convert(source: str, weights_path: str, workdir: str,
            image_size: int = 0) -> dict[str, Any]:
  """Imports `weights_path` (a `source` state dict) into `workdir` as the
  checkpoint of step 0 and its config.json; returns what it did: model,
  fields set (with why), notes, freshly initialised heads, counts."""
  spec = source_spec(source)
  config = make_config(spec, image_size)
  identity = run_identity(config)  # validates the model's fields
  model = run_lib.build_model(config, None)
  image_shape = data.image_shape(config.dataset)
  ckpt_dir = paths.path(workdir) / "checkpoints"
  if ckpt_dir.exists() and any(ckpt_dir.iterdir()):
    raise ConfigError(f"--workdir={workdir} already holds checkpoints; "
                      "import into a new --workdir")
  paths.check_writable(workdir)
  tensors = read_weights(weights_path)
  label = f"cnnflax's {spec.model} ({source})"
  variables, fresh = convert_variables(spec, model, image_shape, tensors,
                                       label)
  params = variables["params"]
  state = step_lib.TrainState(
      step=np.zeros((), np.int32), params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=jax.device_get(jax.jit(optimizer(config).init)(params)),
      rng=np.asarray(jax.random.key_data(
          jax.random.split(jax.random.key(config.seed))[1])))
  paths.write_atomic(paths.path(workdir) / "config.json",
                     json.dumps(config.to_dict(), indent=2, sort_keys=True))
  ckpts = checkpoint.Checkpoints(ckpt_dir, config.checkpoints_to_keep,
                                 identity, background=False)
  try:
    ckpts.save(0, state, {"imported_from": source})
  finally:
    ckpts.close()
  count = lambda tree: int(sum(np.size(a) for a in jax.tree.leaves(tree)))
  return {"source": source, "model": spec.model, "workdir": workdir,
          "fields": dict(spec.fields), "why": spec.why,
          "notes": list(spec.notes), "fresh_heads": fresh,
          "params": count(params),
          "batch_stats": count(variables.get("batch_stats", {})),
          "tensors": len([k for k in tensors
                          if not k.endswith("num_batches_tracked")]),
          "image_size": image_shape[0], "step": 0}


def load(workdir: str) -> tuple[nn.Module, dict, ml_collections.ConfigDict]:
  """(model, {"params", "batch_stats"}, config) of a workdir's newest
  checkpoint, without its dataset: the evaluation model of an import (or of
  any ImageNet run)."""
  config = run_lib.saved_config(workdir)
  model = run_lib.build_model(config, None)
  image_shape = tuple(data.image_shape(config.dataset))
  variables = trace(model, image_shape).variables
  abstract = jax.eval_shape(lambda: step_lib.init_state(
      _Known(variables), optimizer(config), image_shape, config.seed))
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  ckpts = checkpoint.Checkpoints(paths.path(workdir) / "checkpoints",
                                 config.checkpoints_to_keep,
                                 run_identity(config), background=False,
                                 read_only=True)  # a run may be saving
  try:
    state, _ = ckpts.restore(template)
  finally:
    ckpts.close()
  return model, {"params": state.params,
                 "batch_stats": state.batch_stats}, config


class _Known:
  """Stands in for a model whose abstract variables are known, so that
  step.init_state builds the train state's structure without tracing the
  network again."""

  def __init__(self, variables: dict):
    self.variables = variables

  def clone(self, **_) -> "_Known":
    return self

  def init(self, *_, **__) -> dict:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.variables)


def report(result: dict) -> str:
  """The lines the command prints before its JSON line."""
  lines = [f"{result['source']} -> cnnflax {result['model']}: "
           f"{result['params']:,} parameters and {result['batch_stats']:,} "
           f"BatchNorm statistics from {result['tensors']} tensors"]
  fields = ", ".join(f"{k}={v!r}" for k, v in result["fields"].items())
  lines.append(f"fields set: {fields} ({result['why']})" if fields else
               "fields set: none (the registered model computes the same "
               "function)")
  lines += [f"note: {n}" for n in result["notes"]]
  if result["fresh_heads"]:
    lines.append("not in the weights, freshly initialised (training-only): "
                 + ", ".join(result["fresh_heads"]))
  lines.append(f"wrote {result['workdir']}/config.json and "
               f"{result['workdir']}/checkpoints/0")
  return "\n".join(lines)


def main(argv) -> None:
  del argv  # cli.run refuses stray arguments
  from absl import flags
  f = flags.FLAGS
  from cnnflax import train
  train.quiet_library_logs()  # orbax's INFO lines
  result = convert(f.source, f.weights, f.workdir, f.image_size)
  print(report(result))
  print(json.dumps(result))


def define_flags() -> None:
  from absl import flags
  flags.DEFINE_string("source", None, "LIBRARY:MODEL, one of: "
                      + ", ".join(SOURCES))
  flags.DEFINE_string("weights", None, "The state dict: .pth/.pt (needs "
                      "torch) or .safetensors.")
  flags.DEFINE_string("workdir", None, "The cnnflax workdir to create.")
  flags.DEFINE_integer("image_size", 0, "config.dataset.image_size; 0: the "
                       "model's paper size (224, Inception 299).")
  flags.mark_flags_as_required(["source", "weights", "workdir"])


if __name__ == "__main__":
  from cnnflax import cli
  define_flags()
  cli.run(main)
