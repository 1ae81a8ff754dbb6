"""norm.BatchNorm: nn.BatchNorm's numbers, with its own VJP and fused ReLU."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from cnnflax.models import norm

X = jax.random.normal(jax.random.key(0), (8, 5, 5, 6)) * 3 + 1
DY = jax.random.normal(jax.random.key(1), X.shape)


def apply(module, variables, x, train=True):
  if not train:
    return module.apply(variables, x)
  return module.apply(variables, x, mutable=["batch_stats"])


def flax_and_ours(relu, **kwargs):
  theirs = nn.BatchNorm(use_running_average=False, momentum=0.9,
                        epsilon=1e-5, **kwargs)
  ours = norm.BatchNorm(momentum=0.9, epsilon=1e-5, relu=relu, **kwargs)
  variables = theirs.init(jax.random.key(2), X)
  variables = {"params": {"scale": jnp.linspace(0.5, 2, 6),
                          "bias": jnp.linspace(-1, 1, 6)},
               "batch_stats": variables["batch_stats"]}
  act = nn.relu if relu else (lambda y: y)

  def reference(params, x):
    y, stats = apply(theirs, {**variables, "params": params}, x)
    return act(y), stats

  def candidate(params, x):
    return apply(ours, {**variables, "params": params}, x)

  return variables, reference, candidate


@pytest.mark.parametrize("relu", [False, True])
def test_forward_gradients_and_statistics_match_flax(relu):
  variables, reference, candidate = flax_and_ours(relu)
  results = []
  for fn in (reference, candidate):
    (y, stats), vjp = jax.vjp(fn, variables["params"], X, has_aux=False)
    grads = vjp((DY, jax.tree.map(jnp.zeros_like, stats)))
    results.append((y, stats, grads))
  (y0, s0, g0), (y1, s1, g1) = results
  np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves((s0, g0)), jax.tree.leaves((s1, g1))):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def test_init_matches_flax_and_eval_uses_running_statistics():
  theirs = nn.BatchNorm(use_running_average=True, epsilon=1e-5)
  ours = norm.BatchNorm(use_running_average=True, epsilon=1e-5, relu=True)
  v0 = theirs.init(jax.random.key(0), X)
  v1 = ours.init(jax.random.key(0), X)
  assert jax.tree.map(jnp.shape, v0) == jax.tree.map(jnp.shape, v1)
  stats = {"mean": jnp.arange(6.), "var": jnp.arange(1., 7.)}
  variables = {"params": v0["params"], "batch_stats": stats}
  np.testing.assert_allclose(apply(ours, variables, X, train=False),
                             nn.relu(apply(theirs, variables, X, train=False)),
                             rtol=1e-5, atol=1e-5)


def test_bfloat16_output_with_float32_statistics():
  module = norm.BatchNorm(dtype=jnp.bfloat16, relu=True)
  variables = module.init(jax.random.key(0), X)
  (y, stats), vjp = jax.vjp(lambda x: apply(module, variables,
                                            x.astype(jnp.bfloat16)), X)
  assert y.dtype == jnp.bfloat16
  assert stats["batch_stats"]["mean"].dtype == jnp.float32
  x_hat = (X - X.mean((0, 1, 2))) / jnp.sqrt(X.var((0, 1, 2)) + 1e-5)
  np.testing.assert_allclose(y.astype(jnp.float32), nn.relu(x_hat),
                             atol=0.05)
  (dx,) = vjp((DY.astype(jnp.bfloat16),
               jax.tree.map(jnp.zeros_like, stats)))
  assert dx.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(dx)))


def test_synchronised_statistics_give_the_global_batch_gradient():
  """Over 8 devices with axis_name, dx and d scale (a value shared by the
  devices, so summed over them as autodiff would) are those of one BatchNorm
  over the whole batch."""
  devices = jax.devices()[:8]
  mesh = Mesh(np.array(devices), ("batch",))
  scale, bias = jnp.linspace(0.5, 2, 6), jnp.linspace(-1, 1, 6)

  def loss(x, scale, bias, dy, axis_name):
    y, _, _ = norm.normalize(x, scale, bias, True, 1e-5, axis_name,
                             jnp.float32)
    return jnp.sum(y * dy)

  whole = jax.grad(loss, (0, 1))(X, scale, bias, DY, None)

  def per_device(x, scale, bias, dy):
    return jax.grad(loss, (0, 1))(x, scale, bias, dy, "batch")

  sharded = jax.jit(jax.shard_map(
      per_device, mesh=mesh, in_specs=(P("batch"), P(), P(), P("batch")),
      out_specs=(P("batch"), P())))(X, scale, bias, DY)
  np.testing.assert_allclose(sharded[0], whole[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(sharded[1], whole[1], rtol=1e-4, atol=1e-4)


def test_backward_keeps_only_input_and_output():
  """What makes it fast: BN+ReLU's VJP keeps x and y, not x - mean,
  x_hat and the pre-ReLU value as autodiff of nn.BatchNorm + relu does."""
  module = norm.BatchNorm(relu=True)
  variables = module.init(jax.random.key(0), X)

  def kept(fn):
    leaves = jax.tree.leaves(jax.vjp(fn, X)[1])
    return sum(leaf.size for leaf in leaves if leaf.size >= X.size)

  ours = kept(lambda x: apply(module, variables, x)[0])
  flax_bn = nn.BatchNorm(use_running_average=False)
  theirs = kept(lambda x: nn.relu(apply(flax_bn, variables, x)[0]))
  assert ours == 2 * X.size
  assert theirs > ours


def test_autodiff_switch_gives_the_same_gradients():
  """impl="autodiff" (config.backend.batch_norm, the benchmark's
  comparison) differentiates the same forward by autodiff."""
  module = norm.BatchNorm(relu=True)
  variables = module.init(jax.random.key(0), X)

  def grads():
    return jax.grad(lambda v, x: jnp.sum(apply(module, v, x)[0] * DY),
                    (0, 1))(variables, X)

  def kept():
    leaves = jax.tree.leaves(jax.vjp(lambda x: apply(module, variables, x)[0],
                                     X)[1])
    return sum(leaf.size for leaf in leaves if leaf.size >= X.size)

  ours, ours_kept = grads(), kept()
  module = module.clone(impl="autodiff")
  theirs, theirs_kept = grads(), kept()
  assert theirs_kept > ours_kept  # the switch did take the autodiff path
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# --- a list of arrays: DenseNet's concatenated feature maps ------------------

PIECES = [X[..., :3], X[..., 3:4] * 2 - 1, X[..., 4:]]
SCALE, BIAS = jnp.linspace(0.5, 2, 6), jnp.linspace(-1, 1, 6)


def variables_for(width):
  return {"params": {"scale": SCALE[:width], "bias": BIAS[:width]},
          "batch_stats": {"mean": jnp.zeros(width), "var": jnp.ones(width)}}


@pytest.mark.parametrize("relu", [False, True])
def test_list_input_is_one_batchnorm_over_the_concatenation(relu):
  """Two BatchNorms read overlapping lists of maps and share the maps'
  moments, as two dense layers do: outputs, running statistics and all
  gradients are those of flax BatchNorms over the concatenations."""
  act = nn.relu if relu else (lambda y: y)
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9,
                         epsilon=1e-5)
  ours = norm.BatchNorm(momentum=0.9, epsilon=1e-5, relu=relu)
  dy = [DY[..., :4], DY]

  def reference(pieces, params):
    total, stats = 0., []
    for width, g in zip((4, 6), dy):
      x = jnp.concatenate(pieces, axis=-1)[..., :width]
      v = {**variables_for(width), "params": params[width]}
      y, s = apply(flax_bn, v, x)
      total, stats = total + jnp.sum(act(y) * g), stats + [s]
    return total, stats

  def candidate(pieces, params):
    shared = [norm.moments(p, None) for p in pieces]
    total, stats = 0., []
    for count, width, g in ((2, 4, dy[0]), (3, 6, dy[1])):
      v = {**variables_for(width), "params": params[width]}
      y, s = ours.apply(v, pieces[:count], shared[:count],
                        mutable=["batch_stats"])
      total, stats = total + jnp.sum(y * g), stats + [s]
    return total, stats

  params = {w: variables_for(w)["params"] for w in (4, 6)}
  results = [jax.value_and_grad(fn, (0, 1), has_aux=True)(PIECES, params)
             for fn in (reference, candidate)]
  ((t0, s0), g0), ((t1, s1), g1) = results
  np.testing.assert_allclose(t1, t0, rtol=1e-5)
  for a, b in zip(jax.tree.leaves((s0, g0)), jax.tree.leaves((s1, g1))):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def test_list_input_keeps_only_its_pieces():
  """The VJP of a list's BN-ReLU keeps the listed arrays themselves: no
  concatenation, no output, no mask (what makes DenseNet fast)."""
  module = norm.BatchNorm(relu=True)
  v = variables_for(6)
  leaves = jax.tree.leaves(jax.vjp(
      lambda pieces: module.apply(v, pieces, mutable=["batch_stats"])[0],
      PIECES)[1])
  kept = sorted(leaf.shape for leaf in leaves if leaf.ndim == 4)
  # Each piece once for scale_shift and once for its moments' autodiff
  # (in a jitted step one buffer): nothing of the concatenated width.
  assert kept == sorted(2 * [p.shape for p in PIECES])


def test_list_input_in_evaluation_uses_running_statistics():
  module = norm.BatchNorm(use_running_average=True, relu=True)
  v = {**variables_for(6), "batch_stats": {"mean": jnp.arange(6.),
                                           "var": jnp.arange(1., 7.)}}
  np.testing.assert_allclose(module.apply(v, PIECES),
                             module.apply(v, jnp.concatenate(PIECES, -1)),
                             rtol=1e-6)


def test_list_input_synchronised_gives_the_global_batch_gradient():
  devices = jax.devices()[:8]
  mesh = Mesh(np.array(devices), ("batch",))

  def loss(pieces, params, dy, axis_name):
    module = norm.BatchNorm(relu=True, axis_name=axis_name)
    y, _ = module.apply({**variables_for(6), "params": params}, pieces,
                        mutable=["batch_stats"])
    return jnp.sum(y * dy)

  params = variables_for(6)["params"]
  whole = jax.grad(loss, (0, 1))(PIECES, params, DY, None)

  def per_device(pieces, params, dy):
    return jax.grad(loss, (0, 1))(pieces, params, dy, "batch")

  sharded = jax.jit(jax.shard_map(
      per_device, mesh=mesh, in_specs=(P("batch"), P(), P("batch")),
      out_specs=(P("batch"), P())))(PIECES, params, DY)
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(sharded)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def test_a_one_array_list_is_that_array():
  module = norm.BatchNorm(relu=True)
  v = variables_for(6)
  (y0, s0), (y1, s1) = (module.apply(v, x, mutable=["batch_stats"])
                        for x in (X, [X]))
  np.testing.assert_array_equal(y1, y0)
  for a, b in zip(jax.tree.leaves(s0), jax.tree.leaves(s1)):
    np.testing.assert_array_equal(b, a)
