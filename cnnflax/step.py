"""TrainState, the train and eval steps, and their mapping over devices.

This is the only module that knows devices exist. Each step is written once as
a per-device program over the named axis `AXIS` (gradients and metrics reduced
with `lax.pmean` / `lax.psum`, BatchNorm given the axis when its statistics are
synchronised) and then mapped: `jax.jit` over `jax.shard_map` on a 1-D mesh
(the default; global arrays, so it runs multi-host), or `jax.pmap`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cnnflax.data import augment
from cnnflax.errors import ConfigError

AXIS = "batch"
PARALLELISM = ("shard_map", "pmap")  # config.parallelism (config_check)
Batch = dict[str, Any]


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key data, so that checkpoints can hold it


def init_state(model: nn.Module, tx: optax.GradientTransformation,
               image_shape: tuple[int, int, int], seed: int) -> TrainState:
  """Initialises parameters under jit (eager init of deep nets is slow)."""

  @jax.jit
  def init(key):
    # Parameters from an "rbg" key: XLA's RngBitGenerator compiles once for
    # all shapes, where threefry's bits are compiled per parameter shape
    # (ResNet-50's init compiles in half the time).
    init_key = jax.random.key(seed, impl="rbg")
    state_key = jax.random.split(key)[1]
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    # train=True so that training-only heads (auxiliary classifiers) get
    # parameters; no axis name, since this runs outside the device mapping.
    variables = model.clone(axis_name=None).init(
        {"params": init_key, "dropout": init_key}, dummy, train=True)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params),
                      rng=jax.random.key_data(state_key))

  return init(jax.random.key(seed))


# --- the per-device programs -----------------------------------------------


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  smoothing: float) -> jax.Array:
  """Per-example softmax cross-entropy with optional label smoothing."""
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if smoothing:
    one_hot = optax.smooth_labels(one_hot, smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), one_hot)


def metric_sums(logits: jax.Array, labels: jax.Array, loss: jax.Array,
                mask: jax.Array) -> dict[str, jax.Array]:
  """Sums over the local examples; psum'd into global sums by the caller."""
  k = min(5, logits.shape[-1])
  top = lax.top_k(logits, k)[1]
  hits = top == labels[:, None]
  return {"loss": jnp.sum(loss * mask),
          "top1": jnp.sum(hits[:, 0] * mask),
          "top5": jnp.sum(jnp.any(hits, axis=-1) * mask),
          "count": jnp.sum(mask)}


def split_outputs(out) -> tuple[jax.Array, tuple]:
  """Models with auxiliary classifiers return (logits, aux_logits)."""
  if isinstance(out, (tuple, list)):
    aux = out[1] if isinstance(out[1], (tuple, list)) else (out[1],)
    return out[0], tuple(aux)
  return out, ()


def example_words(step_key: jax.Array, local_batch: int) -> jax.Array:
  """Each example's augmentation words (uint32 [local_batch, WORDS]), taken
  from one draw for the global batch by the example's position in it, so
  that augmentation is the same on any number of devices. One draw, not a
  key per example: XLA:CPU runs each threefry call as a rolled loop, and a
  fold_in, split and two draws per example showed as ~25 ms of a profiled
  ResNet-20 step.
  """
  global_batch = local_batch * lax.axis_size(AXIS)
  words = jax.random.bits(step_key, (global_batch, augment.WORDS), jnp.uint32)
  return lax.dynamic_slice_in_dim(words, lax.axis_index(AXIS) * local_batch,
                                  local_batch)


def no_augmentation(local_batch: int) -> jax.Array:
  return jnp.zeros((local_batch, augment.WORDS), jnp.uint32)


def make_train_program(model: nn.Module, tx: optax.GradientTransformation,
                       preprocess: Callable, schedule: Callable, config,
                       vary: Callable = lambda t: t) -> Callable:
  """The per-device train step: (state, arrays, batch) -> (state, metrics).

  `vary` marks the replicated state as per-device before differentiation
  (shard_map's typing), so that gradients are local until the explicit pmean.
  """
  smoothing = config.label_smoothing
  aux_weights = tuple(config.aux_loss_weights)

  def program(state: TrainState, arrays, batch: Batch):
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng),
                                  state.step)
    data_key, dropout_key = jax.random.split(step_key)
    local_batch = next(iter(batch.values())).shape[0]
    images, labels = preprocess(arrays, batch,
                                example_words(data_key, local_batch))
    dropout_key = jax.random.fold_in(dropout_key, lax.axis_index(AXIS))

    def loss_fn(params, batch_stats):
      out, new_vars = model.apply(
          {"params": params, "batch_stats": batch_stats}, images, train=True,
          rngs={"dropout": dropout_key}, mutable=["batch_stats"])
      logits, aux = split_outputs(out)
      per_example = cross_entropy(logits, labels, smoothing)
      loss = jnp.mean(per_example)
      for weight, aux_logits in zip(aux_weights, aux):
        loss += weight * jnp.mean(cross_entropy(aux_logits, labels, smoothing))
      return loss, (logits, per_example, new_vars.get("batch_stats", {}))

    grad_fn = jax.grad(loss_fn, has_aux=True)
    grads, (logits, per_example, batch_stats) = grad_fn(
        vary(state.params), vary(state.batch_stats))
    grads = lax.pmean(grads, AXIS)
    # Per-device BN keeps per-device normalisation in the forward pass; the
    # running averages are averaged so that every replica evaluates alike.
    batch_stats = lax.pmean(batch_stats, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = metric_sums(logits, labels, per_example,
                          jnp.ones_like(per_example))
    metrics = lax.psum(metrics, AXIS)
    metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
    # Checked on the host at the next log or save (no sync here).
    metrics["finite"] = finite_flags(metrics["loss"], grads)
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics

  return program


def finite_flags(loss: jax.Array, grads) -> jax.Array:
  """[loss finite, each gradient leaf finite] in `gradient_names` order."""
  flags = [jnp.isfinite(loss)]
  flags += [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]
  return jnp.stack(flags)


def gradient_names(params) -> list[str]:
  """Names of the quantities that `finite_flags` checks, in its order."""
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  return ["loss"] + ["gradient of params/" + "/".join(
      str(getattr(k, "key", k)) for k in path) for path, _ in paths]


def make_eval_program(model: nn.Module, preprocess: Callable) -> Callable:
  """The per-device eval step: (state, arrays, batch) -> metric sums."""

  def program(state: TrainState, arrays, batch: Batch):
    local_batch = batch["mask"].shape[0]
    images, labels = preprocess(arrays, batch, no_augmentation(local_batch))
    out = model.apply({"params": state.params,
                       "batch_stats": state.batch_stats}, images, train=False)
    logits, _ = split_outputs(out)
    loss = cross_entropy(logits, labels, 0.)
    return lax.psum(metric_sums(logits, labels, loss, batch["mask"]), AXIS)

  return program


# --- mapping over devices ----------------------------------------------------


class Devices:
  """Places data on the devices and maps per-device programs over them.

  shard_map: the state is a global array replicated over a 1-D mesh, batches
  are global arrays split along it. pmap: the state carries a leading device
  axis. Either way the train loop sees the same calls.
  """

  def __init__(self, parallelism: str = "shard_map", devices=None):
    self.parallelism = parallelism
    self.devices = list(devices if devices is not None else jax.devices())
    self.local_devices = [d for d in self.devices
                          if d.process_index == jax.process_index()]
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    self._replicated = NamedSharding(self.mesh, P())
    self._split = NamedSharding(self.mesh, P(AXIS))
    # pmap arrays carry a leading axis of this host's devices.
    self._stacked = NamedSharding(Mesh(np.array(self.local_devices), (AXIS,)),
                                  P(AXIS))

  @property
  def count(self) -> int:
    return len(self.devices)

  def check_batch(self, field: str, batch_size: int) -> None:
    if batch_size % self.count:
      raise ConfigError(
          f"config.{field}={batch_size} is not divisible by the {self.count} "
          f"devices; use a multiple of {self.count}, e.g. "
          f"{max(self.count, batch_size - batch_size % self.count)}")

  def process_slice(self, global_batch: int) -> slice:
    """The rows of a global batch that this host feeds."""
    per_host = global_batch // jax.process_count()
    start = jax.process_index() * per_host
    return slice(start, start + per_host)

  def replicate(self, tree):
    """Host tree -> the same values on every device."""
    if self.parallelism == "pmap":
      n = len(self.local_devices)
      return jax.device_put(
          jax.tree.map(lambda x: np.broadcast_to(x, (n, *np.shape(x))), tree),
          self._stacked)
    return jax.device_put(tree, self._replicated)

  def fetch(self, tree):
    """Replicated device tree -> one host (numpy) copy."""
    if self.parallelism == "pmap":
      tree = jax.tree.map(lambda x: x[0], tree)
    return jax.device_get(tree)

  def shard(self, batch: Batch) -> Batch:
    """This host's rows of a global batch -> arrays split over devices."""
    if self.parallelism == "pmap":
      n = len(self.local_devices)
      return jax.device_put(
          jax.tree.map(lambda x: x.reshape(n, -1, *x.shape[1:]), batch),
          self._stacked)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self._split, x), batch)

  def map_train(self, program: Callable) -> Callable:
    """(state, arrays, batch) -> (state, metrics); the state is donated."""
    if self.parallelism == "pmap":
      return jax.pmap(program, axis_name=AXIS, donate_argnums=(0,))
    mapped = jax.shard_map(program, mesh=self.mesh,
                           in_specs=(P(), P(), P(AXIS)), out_specs=(P(), P()))
    return jax.jit(mapped, donate_argnums=(0,))

  def map_eval(self, program: Callable) -> Callable:
    if self.parallelism == "pmap":
      return jax.pmap(program, axis_name=AXIS)
    mapped = jax.shard_map(program, mesh=self.mesh,
                           in_specs=(P(), P(), P(AXIS)), out_specs=P())
    return jax.jit(mapped)

  def vary(self) -> Callable:
    """How a program marks replicated values as per-device (see above)."""
    if self.parallelism == "pmap":
      return lambda tree: tree
    return functools.partial(lax.pcast, axis_name=AXIS, to="varying")

  def first(self, tree):
    """Metrics from a mapped call -> one value each (still on device)."""
    if self.parallelism == "pmap":
      return jax.tree.map(lambda x: x[0], tree)
    return tree


def initialize_distributed() -> None:
  """Joins a multi-host run where the environment describes one.

  Explicit: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.
  Auto-detected by jax: SLURM jobs with several tasks, TPU pod slices.
  """
  import os
  if jax.distributed.is_initialized():
    return
  env = os.environ
  if "JAX_COORDINATOR_ADDRESS" in env:
    jax.distributed.initialize(
        coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(env["JAX_NUM_PROCESSES"]),
        process_id=int(env["JAX_PROCESS_ID"]))
  elif (int(env.get("SLURM_NTASKS", "1")) > 1
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")):
    jax.distributed.initialize()
