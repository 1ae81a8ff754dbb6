"""Every registered model's train and eval steps lower for GPU and TPU.

CI has no accelerator, but jax lowers a program for a platform without its
hardware. The steps are the ones `run_lib.Run` builds (jit over shard_map on
the 8 fake CPU devices), traced with abstract state and batches (nothing is
initialised, the steps never compile) with config.backend.platform naming
them, so that they carry the kernels those platforms get: never the oneDNN
convolutions, which exist for XLA:CPU only. Lowering alone would not catch
one: jax lowers an FFI call for any platform, and only that platform's XLA
compiler would refuse it; hence the check of the lowered text.
"""
import contextlib
import gc
import re

import jax
import numpy as np
import pytest
from tests.conftest import tiny_config

from cnnflax import data, models
from cnnflax import run as run_lib
from cnnflax.backend import native
from cnnflax import step as step_lib

# One trace serves both: they get the same kernels (backend.resolve).
ACCELERATORS = ("cuda", "tpu")
BATCH = 8  # one example per fake device
# The jax.ffi targets of cnnflax/backend/native, registered for CPU only.
ONEDNN_CALL = re.compile(r"custom_call @cnnflax_conv_\w+")


def lowering_config(name: str, targets: tuple[str, ...]):
  """A synthetic-data run of `name` at its own input size and class count,
  built for `targets`."""
  info = models.model_info(name)
  height, _, channels = info.input_shape
  c = tiny_config()
  c.backend.platform = ",".join(targets)
  c.model.name = name
  c.dataset.image_size = height
  c.dataset.synthetic_channels = channels
  c.dataset.synthetic_num_classes = info.num_classes
  c.dataset.synthetic_train_size = BATCH
  c.dataset.synthetic_test_size = BATCH
  # CIFAR-size data lives on the devices; ImageNet-size batches come from
  # the host, as they do in those runs.
  small = height <= 64
  c.dataset.on_device = small
  c.dataset.augment = "cifar" if small else "imagenet"
  c.batch_size = BATCH
  c.eval_batch_size = BATCH
  return c


def abstract(tree):
  """Host arrays -> their shapes and the dtypes device_put would give."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
          np.shape(x), jax.dtypes.canonicalize_dtype(np.asarray(x).dtype)),
      tree)


def aux_heads(run: run_lib.Run, state) -> int:
  """How many auxiliary classifiers the model has in training. Only families
  with an `aux_logits` field have them; others are not traced again."""
  info = models.model_info(run.config.model.name)
  if "aux_logits" not in models.module_fields(info.module):
    return 0
  model = run.model.clone(axis_name=None)
  x = jax.ShapeDtypeStruct((1, *run.dataset.image_shape), np.float32)

  def forward(variables, x):
    rngs = {"dropout": jax.random.key(0)}
    return model.apply(variables, x, train=True, rngs=rngs,
                       mutable=["batch_stats"])[0]

  out = jax.eval_shape(forward, {"params": state.params,
                                 "batch_stats": state.batch_stats}, x)
  return len(step_lib.split_outputs(out)[1])


@contextlib.contextmanager
def collector_frozen():
  """Tracing a big step makes millions of objects; the cyclic collector's
  passes over everything older (jax's caches, earlier tests) took about a
  tenth of this file's time."""
  gc.freeze()
  try:
    yield
  finally:
    gc.unfreeze()


@contextlib.contextmanager
def not_compiled(fn):
  """Fails if XLA compiles `fn` inside: lowering must stay cheap. (Building
  a run may compile tiny helpers, e.g. to place constants; those are fine.)"""
  name = f"jit({fn.__name__})"
  compiled = []

  def listen(event: str, seconds: float, fun_name: str = "", **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiled.append(fun_name)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert name not in compiled, f"{name} was compiled, not only lowered"


def lowered_steps(name: str, targets: tuple[str, ...]) -> dict[str, str]:
  """The StableHLO text of `name`'s train and eval steps, traced once as
  `targets` would trace them and lowered for all of them together."""
  with collector_frozen():
    run = run_lib.Run(lowering_config(name, targets), workdir="unused")
    state = jax.eval_shape(run.init_state)
    # Weight every auxiliary head, so that their backward passes lower too.
    run.config.aux_loss_weights = (0.3,) * aux_heads(run, state)
    data_cfg = run.config.dataset
    train_args = (state,
                  abstract(data.device_arrays(run.dataset, data_cfg, True)),
                  abstract(run.train_batch(0)))
    eval_args = (state,
                 abstract(data.device_arrays(run.dataset, data_cfg, False)),
                 abstract(next(run.eval_batches())))
    return {"train": lower(run.train_fn(), train_args, targets),
            "eval": lower(run.eval_fn(), eval_args, targets)}


def lower(fn, args, targets: tuple[str, ...]) -> str:
  with not_compiled(fn):
    return fn.trace(*args).lower(lowering_platforms=targets).as_text()


@pytest.mark.parametrize("name", models.list_models())
def test_steps_lower_for_gpu_and_tpu(name):
  for step, text in lowered_steps(name, ACCELERATORS).items():
    assert "func.func public @main" in text, (name, step)
    calls = ONEDNN_CALL.findall(text)
    assert not calls, (f"{name}'s {step} step lowered for GPU and TPU calls "
                       f"the CPU-only oneDNN convolution: {calls[:3]}")


def test_cpu_lowering_uses_onednn():
  """The control: the same check finds oneDNN in a step built for CPU, so
  its absence above means something."""
  if not native.available():
    pytest.skip("the oneDNN convolutions are not built here")
  for step, text in lowered_steps("resnet20_cifar", ("cpu",)).items():
    assert ONEDNN_CALL.search(text), step
