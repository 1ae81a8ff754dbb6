"""Weight import (cnnflax/convert.py): every torchvision / timm model that a
cnnflax model computes, built with random weights, saved, converted into a
workdir, restored from its checkpoint and evaluated: the same logits
(to 1e-4 of their scale) and the same top-5 classes. Nothing downloads.

The references' BatchNorms get random scales and shifts, then statistics of
the input batch (torch's own running averages, momentum=None), the variance
taken as the second moment so that no BatchNorm divides a channel that is
nearly constant in a random net: such channels amplify rounding differences
by their mean over their spread, and the logits of a 70-layer net would then
agree only to ~1e-3 whatever the weights.

Inputs are small (the Inceptions' smallest, 75), batch 2. A VGG's
classifier sees a flattened map whose size follows the input, so VGGs are
imported for their test size (--image_size): 64, where torchvision's
adaptive 7x7 pooling is folded into fc6, and vgg16_bn at 224, where that
pooling is the identity.
"""
import functools
import os
import re
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnflax import convert, data
from cnnflax.errors import CheckpointError, ConfigError

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
try:
  torchvision = convert.import_torchvision()  # before timm, which imports it
except ImportError:
  pytest.skip("torchvision is not installed", allow_module_level=True)
timm = pytest.importorskip("timm")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (source, input size, weights file format)
PAIRS = [
    ("torchvision:resnet18", 32, "pth"),
    ("torchvision:resnet34", 32, "pth"),
    ("torchvision:resnet50", 32, "safetensors"),
    ("torchvision:resnet101", 32, "pth"),
    ("torchvision:resnet152", 32, "pth"),
    ("torchvision:resnext50_32x4d", 32, "pth"),
    ("torchvision:vgg11", 64, "pth"),
    ("torchvision:vgg11_bn", 64, "pth"),
    ("torchvision:vgg13", 64, "pth"),
    ("torchvision:vgg13_bn", 64, "pth"),
    ("torchvision:vgg16", 64, "pth"),
    ("torchvision:vgg16_bn", 224, "safetensors"),
    ("torchvision:vgg19", 64, "pth"),
    ("torchvision:vgg19_bn", 64, "pth"),
    ("torchvision:densenet121", 32, "pth"),
    ("torchvision:densenet169", 32, "pth"),
    ("torchvision:densenet201", 32, "pth"),
    ("torchvision:mobilenet_v2", 32, "pth"),
    ("timm:mobilenetv1_100", 32, "pth"),
    ("torchvision:inception_v3", 75, "pth"),
    ("torchvision:googlenet", 32, "pth"),
    ("timm:inception_v4", 75, "safetensors"),
    ("timm:inception_resnet_v2", 75, "pth"),
]
# What each import must set; every other pair needs nothing.
FIELDS = {
    "torchvision:resnet50": {"stride_in": "3x3"},
    "torchvision:resnet101": {"stride_in": "3x3"},
    "torchvision:resnet152": {"stride_in": "3x3"},
    "torchvision:inception_v3": {"avg_pool_count_pad": True},
    "torchvision:googlenet": {"kernel_5x5": 3, "pool4_window": 2},
    "timm:mobilenetv1_100": {"activation": "relu6"},
}
# Values that must change the logits: the paper's defaults that the import
# overrides, and the epsilon the Inception family had before it took
# TF-slim's.
NEEDED = {"torchvision:resnet50": {"stride_in": "1x1"},
          "torchvision:inception_v3": {"avg_pool_count_pad": False},
          "timm:inception_v4": {"bn_epsilon": 1e-5}}
AUX_HEADS = ("AuxLogits", "aux1", "aux2")


def reference(source: str, size: int, seed: int = 0):
  """The torch model in eval mode with random weights and BatchNorm
  statistics, and a batch of 2 input images (N, C, H, W)."""
  library, arch = source.split(":")
  torch.manual_seed(seed)
  if library == "timm":
    model = timm.create_model(arch, pretrained=False)
  else:
    extra = ({"init_weights": False}
             if arch in ("googlenet", "inception_v3") else {})
    model = getattr(torchvision.models, arch)(weights=None, **extra)
  generator = torch.Generator().manual_seed(seed + 1)
  # Statistics of 8 images (2 at 224: those maps are large), the first 2 kept.
  images = torch.randn(2 if size >= 224 else 8, 3, size, size,
                       generator=generator)
  randomise_batch_norm(model, images, generator)
  return model, images[:2]


def randomise_batch_norm(model, images, generator) -> None:
  norms = [m for m in model.modules()
           if isinstance(m, torch.nn.BatchNorm2d)]
  if not norms:
    model.eval()
    return
  with torch.no_grad():
    for bn in norms:
      bn.weight.copy_(torch.rand(bn.weight.shape, generator=generator) + 0.5)
      bn.bias.copy_(torch.randn(bn.bias.shape, generator=generator) * 0.2)
      bn.reset_running_stats()
      bn.momentum = None  # the running averages become the batch's
  heads = {name: getattr(model, name) for name in AUX_HEADS
           if getattr(model, name, None) is not None}
  for name in heads:  # training-only heads that small inputs do not fit
    setattr(model, name, None)
  model.train()
  with torch.no_grad():
    model(images)
    for bn in norms:
      bn.running_var.add_(bn.running_mean ** 2)
  for name, head in heads.items():
    setattr(model, name, head)
  model.eval()


def save_weights(model, path) -> str:
  state = model.state_dict()
  if str(path).endswith(".safetensors"):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
  else:
    torch.save(state, str(path))
  return str(path)


def logits(model, variables, images) -> np.ndarray:
  """Eval-mode logits, compiled once; XLA's backend optimisations off,
  which halves the compile time of the deep nets here."""
  x = jnp.asarray(images.numpy().transpose(0, 2, 3, 1))
  apply = jax.jit(functools.partial(model.apply, train=False)).lower(
      variables, x).compile({"xla_backend_optimization_level": 0})
  return np.asarray(apply(variables, x))


def relative_difference(got, want) -> float:
  return float(np.abs(got - want).max() / np.abs(want).max())


def top5(a):
  return np.argsort(-a, axis=-1)[:, :5]


@pytest.mark.parametrize("source,size,fmt", PAIRS, ids=[p[0] for p in PAIRS])
def test_imported_weights_give_the_reference_logits(source, size, fmt,
                                                    tmp_path):
  model, images = reference(source, size)
  with torch.no_grad():
    want = model(images).numpy()
  weights = save_weights(model, tmp_path / f"weights.{fmt}")
  del model
  run = str(tmp_path / "run")
  image_size = size if ":vgg" in source else 0  # see the module docstring
  result = convert.convert(source, weights, run, image_size)
  assert result["fields"] == FIELDS.get(source, {})
  assert result["fresh_heads"] == []
  os.remove(weights)
  ours, variables, config = convert.load(run)
  assert config.model.name == result["model"]
  got = logits(ours, variables, images)
  difference = relative_difference(got, want)
  print(f"{source}: max |logit difference| / max |logit| = {difference:.2e}")
  assert difference <= 1e-4
  np.testing.assert_array_equal(top5(got), top5(want))
  for field, value in NEEDED.get(source, {}).items():
    other = logits(ours.clone(**{field: value}), variables, images)
    assert relative_difference(other, want) > 1e-2, field
  shutil.rmtree(tmp_path)  # VGG-16's checkpoint at 224 is over a gigabyte


# --- files that do not fit ----------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
  """A random torchvision ResNet-18 as .pth and .safetensors, its reference
  logits and input."""
  folder = tmp_path_factory.mktemp("resnet18")
  model, images = reference("torchvision:resnet18", 32)
  with torch.no_grad():
    want = model(images).numpy()
  return types.SimpleNamespace(
      pth=save_weights(model, folder / "resnet18.pth"),
      safetensors=save_weights(model, folder / "resnet18.safetensors"),
      state=model.state_dict(), images=images, want=want)


def edited(state, path, drop=(), add=None) -> str:
  state = {k: v for k, v in state.items() if k not in drop}
  state.update(add or {})
  torch.save(state, str(path))
  return str(path)


@pytest.mark.parametrize("edit,message", [
    (dict(drop=("layer2.0.downsample.1.running_var",)),
     "the weights have no layer2.0.downsample.1.running_var (shape [128]), "
     "which cnnflax's resnet18 (torchvision:resnet18) needs for "
     "stage2_block1/proj_bn"),
    (dict(add={"fc2.weight": torch.zeros(10, 512)}),
     "the weights' fc2.weight (shape [10, 512]) has no place in cnnflax's "
     "resnet18 (torchvision:resnet18)"),
], ids=["missing", "extra"])
def test_a_file_that_does_not_fit_names_the_layer(resnet18_weights, edit,
                                                  message, tmp_path):
  weights = edited(resnet18_weights.state, tmp_path / "w.pth", **edit)
  with pytest.raises(CheckpointError) as error:
    convert.convert("torchvision:resnet18", weights, str(tmp_path / "run"))
  assert str(error.value).startswith(message)
  assert "\n" not in str(error.value)
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_another_architecture_stops_at_its_first_layer_of_another_shape(
    tmp_path):
  # ResNet-50's weights are no ResNeXt-50's: its first bottleneck is 64
  # wide, the 32x4d one 128.
  model = torchvision.models.resnet50(weights=None)
  weights = save_weights(model, tmp_path / "resnet50.pth")
  with pytest.raises(CheckpointError) as error:
    convert.convert("torchvision:resnext50_32x4d", weights,
                    str(tmp_path / "run"))
  assert str(error.value).startswith(
      "the weights' layer1.0.conv1.weight has shape [64, 64, 1, 1] where "
      "cnnflax's resnext50_32x4d (torchvision:resnext50_32x4d) needs "
      "[128, 64, 1, 1] for stage1_block1/conv0")


def test_unknown_source_and_unreadable_files(tmp_path, monkeypatch):
  with pytest.raises(ConfigError, match="--source='torchvision:alexnet' is "
                     "not importable; choose one of: torchvision:resnet18"):
    convert.convert("torchvision:alexnet", "x.pth", str(tmp_path))
  junk = tmp_path / "junk.pth"
  junk.write_bytes(b"not a state dict")
  with pytest.raises(CheckpointError, match="junk.pth cannot be read"):
    convert.read_weights(str(junk))
  monkeypatch.setitem(sys.modules, "torch", None)  # as without torch
  with pytest.raises(ConfigError, match="reading a torch file needs torch"):
    convert.read_weights(str(junk))


def test_a_workdir_with_checkpoints_is_refused(resnet18_weights, tmp_path):
  (tmp_path / "checkpoints" / "0").mkdir(parents=True)
  with pytest.raises(ConfigError, match="already holds checkpoints"):
    convert.convert("torchvision:resnet18", resnet18_weights.pth,
                    str(tmp_path))


# --- the command line and the experiments -------------------------------------

# The command line, with torch made unimportable: .safetensors need no torch.
WITHOUT_TORCH = ("import runpy, sys; sys.modules['torch'] = None; "
                 "sys.argv = ['cnnflax.convert'] + sys.argv[1:]; "
                 "runpy.run_module('cnnflax.convert', run_name='__main__', "
                 "alter_sys=True)")


def test_command_line(resnet18_weights, tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args],
                          capture_output=True, text=True, cwd=ROOT,
                          timeout=300)

  workdir = tmp_path / "run"
  done = run("--source=torchvision:resnet18",
             f"--weights={resnet18_weights.safetensors}",
             f"--workdir={workdir}")
  assert done.returncode == 0, done.stderr
  assert "fields set: none" in done.stdout
  assert '"model": "resnet18"' in done.stdout.splitlines()[-1]
  ours, variables, _ = convert.load(str(workdir))
  got = logits(ours, variables, resnet18_weights.images)
  assert relative_difference(got, resnet18_weights.want) <= 1e-4

  failed = run("--source=torchvision:resnet34",
               f"--weights={resnet18_weights.safetensors}",
               f"--workdir={tmp_path / 'run34'}")
  assert failed.returncode == 2
  last = failed.stderr.strip().splitlines()[-1]
  assert re.fullmatch(r"error: the weights have no layer1\.2\.conv1\.weight "
                      r"\(shape \[64, 64, 3, 3\]\), which cnnflax's resnet34 "
                      r".* needs for stage1_block3/conv0; is --source "
                      r"right\?", last)


def test_the_lesion_experiment_restores_an_import(resnet18_weights, tmp_path,
                                                  monkeypatch):
  """experiments/table6_lesion.py restores a converted workdir through
  run_lib.Run, as it does its own runs (the ImageNet data stood in for)."""
  run = str(tmp_path / "run")
  convert.convert("torchvision:resnet18", resnet18_weights.pth, run)
  _, want, config = convert.load(run)
  shape = data.image_shape(config.dataset)

  def fake_imagenet(cfg):
    n = config.batch_size  # one batch
    split = data.Arrays(np.zeros((n, *shape), np.uint8),
                        np.zeros(n, np.int32))
    return data.Dataset(cfg.name, 1000, shape, split, split,
                        np.zeros(3), np.ones(3))

  monkeypatch.setattr(data, "load", fake_imagenet)
  monkeypatch.syspath_prepend(os.path.join(ROOT, "experiments"))
  import table6_lesion
  _, got = table6_lesion.restore(config, run)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_auxiliary_heads_missing_from_the_file_start_fresh(tmp_path):
  # torchvision drops GoogLeNet's training-only heads when asked; the
  # checkpoint still has the heads a training run restores.
  model = torchvision.models.googlenet(weights=None, aux_logits=False,
                                      init_weights=False)
  weights = save_weights(model, tmp_path / "googlenet.pth")
  result = convert.convert("torchvision:googlenet", weights,
                           str(tmp_path / "run"))
  assert result["fresh_heads"] == ["aux_4a", "aux_4d"]
  _, variables, _ = convert.load(str(tmp_path / "run"))
  assert {"aux_4a", "aux_4d"} <= set(variables["params"])
  with_heads = sum(p.numel() for p in torchvision.models.googlenet(
      weights=None, aux_logits=True, init_weights=False).parameters())
  assert result["params"] == with_heads


def test_googlenet_import_fields_give_torchvisions_count():
  # The released graph's 3x3 "5x5" branch: torchvision's 6,624,904
  # parameters without the auxiliary heads.
  from cnnflax import models, summary
  model = models.get_model("googlenet_bn", kernel_5x5=3, pool4_window=2)
  assert summary.count(model, (224, 224, 3))["params"] == 6_624_904
