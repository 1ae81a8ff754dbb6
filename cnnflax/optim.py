"""The optimizer and learning-rate schedule that a config asks for.

config_check validates the fields (their option lists are the names here);
`schedule_steps` checks what needs the run's length, once, for
`create_schedule`."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cnnflax.errors import ConfigError


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))


SCHEDULES = ("constant", "piecewise", "cosine", "exponential")
BOUNDARY_UNITS = ("steps", "epochs", "fraction")
OPTIMIZERS = ("sgd", "rmsprop", "adam")


def schedule_steps(config: ml_collections.ConfigDict, steps_per_epoch: int,
                   num_steps: int) -> tuple[list[int], int]:
  """The piecewise boundaries (none for other schedules) and the warm-up, in
  steps; ConfigError where they do not fit in the run's `num_steps`."""
  sched = config.schedule
  warmup = int(sched.warmup_steps
               + round(sched.warmup_epochs * steps_per_epoch))
  if warmup >= num_steps:
    raise ConfigError(
        f"config.schedule.warmup_steps/warmup_epochs give {warmup} warm-up "
        f"steps, not fewer than the {num_steps} training steps; shorten the "
        "warm-up or train longer")
  if sched.name != "piecewise":
    return [], warmup
  unit = {"steps": 1, "epochs": steps_per_epoch,
          "fraction": num_steps}[sched.boundaries_unit]
  bounds = [int(round(b * unit)) for b in sched.boundaries]
  for b in bounds:
    if not 0 < b < num_steps:
      raise ConfigError(
          f"config.schedule.boundaries={tuple(sched.boundaries)} puts a "
          f"boundary at step {b}, outside the {num_steps} training steps; "
          f"boundaries are in {sched.boundaries_unit}")
  return bounds, warmup


def create_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                    num_steps: int) -> optax.Schedule:
  """Main schedule on the absolute step, with an optional warm-up in front.

  Piecewise boundaries count from step 0, as in the papers (ResNet-110: 0.01
  for 400 iterations, then 0.1, /10 at 32k and 48k); cosine decays over the
  steps after the warm-up.
  """
  sched = config.schedule
  base = config.optimizer.learning_rate
  bounds, warm = schedule_steps(config, steps_per_epoch, num_steps)
  if sched.name == "constant":
    main = optax.constant_schedule(base)
  elif sched.name == "piecewise":
    main = optax.piecewise_constant_schedule(
        base, {b: sched.decay_factor for b in bounds})
  elif sched.name == "cosine":
    cosine = optax.cosine_decay_schedule(
        base, max(1, num_steps - warm),
        alpha=sched.final_learning_rate / base if base else 0.)
    main = lambda step: cosine(jnp.maximum(step - warm, 0))
  else:  # exponential (config_check allows SCHEDULES only)
    every = max(1, int(round(sched.decay_every_epochs * steps_per_epoch)))
    main = optax.exponential_decay(base, every, sched.decay_factor,
                                   staircase=True)
  if warm <= 0:
    return main
  start = sched.warmup_learning_rate

  def schedule(step):
    if sched.warmup_type == "constant":
      warm_lr = jnp.asarray(start, jnp.float32)
    else:
      warm_lr = start + (base - start) * step / warm
    return jnp.where(step < warm, warm_lr, main(step))

  return schedule


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """Gradient clipping, then L2 weight decay added to the gradient (as Caffe,
  Torch and the papers apply it), then the update rule."""
  opt = config.optimizer
  parts = []
  if opt.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.weight_decay > 0:
    mask = None if opt.decay_bias_and_bn else _matrices_only
    parts.append(optax.add_decayed_weights(opt.weight_decay, mask))
  parts.append(_update_rule(opt, schedule))
  return optax.chain(*parts)


def _update_rule(opt, schedule):
  if opt.name == "sgd":
    return optax.sgd(schedule, momentum=opt.momentum or None,
                     nesterov=opt.nesterov)
  if opt.name == "rmsprop":
    # TF's RMSProp (Inception v3): epsilon inside the square root.
    return optax.rmsprop(schedule, decay=opt.rmsprop_decay, eps=opt.epsilon,
                         momentum=opt.momentum or None, eps_in_sqrt=True)
  return optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.epsilon)


def _matrices_only(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)
