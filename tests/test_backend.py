"""cnnflax.backend: config.backend resolved once, for the run's platforms,
handed to every layer of every family, and recorded in config.json."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnflax import backend, models, train
from cnnflax import run as run_lib
from cnnflax.backend import allocator, native
from cnnflax.backend.kernels import Kernels
from cnnflax.errors import ConfigError
from cnnflax.models import layers, norm
from tests.conftest import tiny_config

AUTO = dict(platform="auto", conv="auto", scanned_conv="auto",
            depthwise="auto", batch_norm="auto", max_pool="auto",
            allocator="auto", xla_defaults=True)


def resolved(**fields) -> Kernels:
  return backend.resolve({**AUTO, **fields}, check_process=False).kernels


def test_auto_resolves_per_platform():
  onednn = native.available()
  cpu = resolved(platform="cpu")
  assert cpu == Kernels("onednn" if onednn else "xla",
                        "onednn" if onednn else "matmul", "matmul", "vjp",
                        "windows")
  assert resolved() == cpu  # this machine is a CPU one
  for accelerators in ("cuda", "tpu", "cuda,tpu", "rocm"):
    assert resolved(platform=accelerators) == Kernels("xla", "xla", "xla",
                                                      "vjp", "xla")


def test_explicit_choices_win():
  assert resolved(platform="cpu", conv="xla", batch_norm="autodiff",
                  max_pool="xla") == (
      Kernels("xla", "matmul", "matmul", "autodiff", "xla"))
  assert resolved(platform="cuda", depthwise="matmul",
                  scanned_conv="matmul").depthwise == "matmul"


@pytest.mark.parametrize("fields,message", [
    (dict(platform="gpu"), "backend.platform='gpu' is not valid; choose auto "
     "or of: cpu, cuda, rocm, tpu"),
    (dict(platform="cpu,tpu"), "mixes CPU and accelerators"),
    (dict(platform="cuda", conv="onednn"), "backend.conv='onednn' runs on "
     "XLA:CPU only, not on cuda"),
    (dict(depthwise="cudnn"), "backend.depthwise='cudnn' is not valid"),
    (dict(batch_norm="fused"), "backend.batch_norm='fused' is not valid"),
])
def test_bad_choices_name_the_field(fields, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    resolved(**fields)


@pytest.mark.parametrize("key,value,message", [
    ("backend.conv", "cudnn", "config.backend.conv='cudnn' is not valid; "
     "choose one of: auto, xla, onednn, matmul"),
    ("backend.allocator", "jemalloc", "config.backend.allocator='jemalloc' "
     "is not valid"),
    ("backend.platform", "gpu", "config.backend.platform='gpu' is not valid"),
    ("backend.xla_defaults", "yes", "config.backend.xla_defaults='yes' is "
     "not valid; it must be True or False"),
])
def test_a_run_refuses_bad_backend_fields_in_one_line(key, value, message):
  with pytest.raises(ConfigError) as error:
    run_lib.Run(tiny_config(**{key: value}), workdir="unused")
  assert str(error.value).startswith(message)
  assert "\n" not in str(error.value)


def test_an_allocator_the_process_does_not_run_with_is_refused(monkeypatch):
  monkeypatch.delenv(allocator.ACTIVE, raising=False)
  monkeypatch.setenv("LD_PRELOAD", "")
  assert allocator.kind() == "system"
  backend.resolve({**AUTO, "allocator": "system"})  # what it runs with
  with pytest.raises(ValueError, match="backend.allocator='tcmalloc' but "
                     "this process runs with system: .* pass "
                     "--config.backend.allocator=tcmalloc on the command "
                     "line"):
    backend.resolve({**AUTO, "allocator": "tcmalloc"})
  monkeypatch.setenv(allocator.ACTIVE, "tcmalloc (/lib/libtcmalloc.so)")
  assert backend.resolve({**AUTO, "allocator": "tcmalloc"}).allocator == (
      "tcmalloc")


def test_xla_defaults_are_added_or_removed_but_a_users_value_stays():
  user = "--xla_force_host_platform_device_count=2"
  on = backend.with_xla_defaults(user)
  assert on.split()[0] == user
  assert all(f"{k}={v}" in on for k, v in backend.CPU_XLA_FLAGS.items())
  assert backend.with_xla_defaults(on, False) == user
  theirs = f"{user} --xla_cpu_opt_preset=SOMETHING"
  assert backend.with_xla_defaults(theirs).count("xla_cpu_opt_preset") == 1
  assert backend.with_xla_defaults(theirs, False) == theirs


def test_the_command_line_allocator_is_read_before_jax(monkeypatch):
  monkeypatch.setattr("sys.argv", ["main.py", "--config=c.py",
                                   "--config.backend.allocator=system"])
  assert backend._argv_value("--config.backend.allocator") == "system"
  monkeypatch.setattr("sys.argv", ["main.py", "--config.backend.allocator",
                                   "thp"])
  assert backend._argv_value("--config.backend.allocator") == "thp"


# --- every layer gets the run's kernels ---------------------------------------

# Every kernel off its default, so that a layer that misses the model's
# kernels (and keeps Kernels()) shows.
ODD = Kernels(conv="matmul", scanned_conv="matmul", depthwise="matmul",
              batch_norm="autodiff", max_pool="windows")


def one_model_per_family() -> list[str]:
  """The registered model with the smallest input of each module class."""
  chosen = {}
  for name in models.list_models():
    info = models.model_info(name)
    size = info.input_shape[0] * info.input_shape[1]
    if info.module not in chosen or size < chosen[info.module][0]:
      chosen[info.module] = (size, name)
  return sorted(name for _, name in chosen.values())


@pytest.mark.parametrize("name", one_model_per_family())
def test_every_layer_computes_with_the_models_kernels(name):
  info = models.model_info(name)
  seen = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__":
      if isinstance(module, layers.Conv):
        seen.append(("Conv", module.kernels == ODD))
      elif isinstance(module, norm.BatchNorm):
        seen.append(("BatchNorm", module.impl == ODD.batch_norm))
    return next_fun(*args, **kwargs)

  # Variants with BatchNorm where the family has them (GoogLeNet's paper
  # net has none).
  fields = ({"batch_norm": True}
            if "batch_norm" in models.module_fields(info.module) else {})
  model = models.get_model(name, kernels=ODD, **fields)
  x = jnp.zeros((1, *info.input_shape))
  key = jax.random.key(0)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init({"params": key, "dropout": key}, x,
                                      train=True))
  missed = sorted({kind for kind, ok in seen if not ok})
  assert not missed, f"{name}: some {missed} layers kept the default kernels"


def test_no_model_asks_for_the_platform_or_the_environment():
  folder = os.path.join(os.path.dirname(models.__file__))
  for file in sorted(os.listdir(folder)):
    if file.endswith(".py"):
      with open(os.path.join(folder, file)) as f:
        text = f.read()
      for word in ("default_backend", "os.environ", "native"):
        assert word not in text, (file, word)


# --- what a run records -------------------------------------------------------


def test_a_runs_config_json_holds_the_resolved_backend(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(**{"backend.batch_norm": "autodiff"}),
                           workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    recorded = json.load(f)["backend"]
  want = resolved(platform="cpu", batch_norm="autodiff")
  assert {k: recorded[k] for k in ("conv", "scanned_conv", "depthwise",
                                   "batch_norm")} == {
      "conv": want.conv, "scanned_conv": want.scanned_conv,
      "depthwise": want.depthwise, "batch_norm": "autodiff"}
  assert recorded["platform"] == "cpu"
  assert recorded["allocator"] == allocator.kind()
  assert recorded["xla_flags"] == os.environ["XLA_FLAGS"].split()
  assert "--xla_cpu_opt_preset=FAST_COMPILE" in recorded["xla_flags"]
  assert recorded["cpu_cores"] == len(os.sched_getaffinity(0))
  # Read back for evaluation, the record gives way to this machine's choice.
  assert run_lib.saved_config(workdir).backend.conv == "auto"


def test_a_checkpoint_with_a_retired_model_field_still_restores(tmp_path):
  """Checkpoints of ResNets and MobileNets record their former `conv_impl`
  field, now a backend choice: the identity check ignores fields the model
  no longer has, and still refuses a field that differs."""
  from cnnflax import checkpoint
  from cnnflax.errors import CheckpointError
  state = {"w": np.arange(4, dtype=np.float32)}
  now = {"model": {"name": "resnet20_cifar", "depth": 20}, "dataset": "x"}
  old = {**now, "model": {**now["model"], "conv_impl": "auto"}}
  folder = tmp_path / "checkpoints"
  saved = checkpoint.Checkpoints(folder, 2, old, background=False)
  saved.save(1, state)
  saved.close()
  ckpts = checkpoint.Checkpoints(folder, 2, now, background=False)
  restored, _ = ckpts.restore({"w": np.zeros(4, np.float32)})
  ckpts.close()
  np.testing.assert_array_equal(restored["w"], state["w"])
  other = {**now, "model": {**now["model"], "depth": 32}}
  ckpts = checkpoint.Checkpoints(folder, 2, other, background=False)
  with pytest.raises(CheckpointError, match="config.model.depth=20 but "
                     "this run has config.model.depth=32"):
    ckpts.restore({"w": np.zeros(4, np.float32)})
  ckpts.close()


# --- max pooling as strided slices (backend.max_pool="windows") -------------

POOLS = [  # (input shape, window, strides, padding) as the families pool
    ((2, 9, 9, 3), (3, 3), (2, 2), "SAME"),  # Inception's stems
    ((2, 8, 8, 3), (3, 3), (1, 1), "SAME"),  # Inception's pool branches
    ((2, 8, 8, 3), (2, 2), (2, 2), "VALID"),  # VGG
    ((2, 11, 11, 3), (3, 3), (2, 2), "VALID"),  # AlexNet
    ((2, 9, 9, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet, DenseNet
    ((2, 10, 10, 3), (3, 3), (2, 2), ((0, 1), (0, 1))),  # Caffe's ceil
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape, window, strides, padding", POOLS)
def test_windows_max_pool_equals_xla_values_and_gradients(
    shape, window, strides, padding, dtype):
  """Ties included (values after a ReLU, rounded): the gradient goes to
  each window's first maximum, as select_and_scatter sends it."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from cnnflax.backend import pooling
  x = jax.random.normal(jax.random.key(0), shape)
  x = jnp.maximum(jnp.round(x * 2) / 2, 0).astype(dtype)
  weights = jnp.arange(1.0, 1.0 + shape[-1])

  def loss(pool):
    return jax.jit(jax.value_and_grad(
        lambda v: (pool(v).astype(jnp.float32) * weights).sum()))

  ref_y, ref_g = loss(lambda v: nn.max_pool(v, window, strides, padding))(x)
  y, g = loss(lambda v: pooling.max_pool(v, window, strides, padding))(x)
  assert float(y) == float(ref_y)
  assert g.dtype == ref_g.dtype and bool(jnp.array_equal(g, ref_g))
