"""oneDNN convolutions (cnnflax.native) against lax.conv_general_dilated."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnflax import backend
from cnnflax.backend import native
from cnnflax.backend.kernels import Kernels
from cnnflax.models import layers, resnet

DN = ("NHWC", "HWIO", "NHWC")

# (input H, W, C), (kernel h, w, out), strides, padding
GEOMETRIES = [
    ((8, 8, 3), (3, 3, 5), (1, 1), ((1, 1), (1, 1))),
    ((9, 9, 4), (3, 3, 6), (2, 2), ((1, 1), (1, 1))),
    ((8, 8, 4), (1, 1, 6), (2, 2), ((0, 0), (0, 0))),
    ((7, 6, 3), (3, 2, 4), (2, 1), ((0, 1), (1, 0))),
    ((15, 15, 3), (7, 7, 8), (2, 2), ((3, 3), (3, 3))),
]


def test_builds_here():
  """CI installs the oneDNN wheels (setup.cfg), so the fast path must build;
  elsewhere it would fall back to XLA with a warning."""
  assert native.available()


@pytest.mark.parametrize("in_shape,k_shape,strides,padding", GEOMETRIES)
def test_forward_and_gradients_match_lax(in_shape, k_shape, strides, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, *in_shape))
  kernel = jax.random.normal(jax.random.PRNGKey(1),
                             (*k_shape[:2], in_shape[2], k_shape[2]))

  def reference(x, k):
    return jax.lax.conv_general_dilated(x, k, strides, padding,
                                        dimension_numbers=DN)

  def ours(x, k):
    return native.conv2d(x, k, strides, padding)

  want, got = jax.jit(reference)(x, kernel), jax.jit(ours)(x, kernel)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  # A weighted loss, so that every output position has its own cotangent.
  weights = jax.random.normal(jax.random.PRNGKey(2), want.shape)

  def grads(f):
    return jax.jit(jax.grad(lambda x, k: (f(x, k) * weights).sum(),
                            (0, 1)))(x, kernel)

  for g_want, g_got in zip(grads(reference), grads(ours)):
    np.testing.assert_allclose(g_got, g_want, rtol=1e-5, atol=1e-4)


def test_bfloat16_matches_lax():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 16), jnp.bfloat16)
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 16, 16), jnp.bfloat16)
  pad = ((1, 1), (1, 1))
  got = native.conv2d(x, k, (1, 1), pad)
  want = jax.lax.conv_general_dilated(x, k, (1, 1), pad, dimension_numbers=DN,
                                      preferred_element_type=jnp.float32)
  assert got.dtype == jnp.bfloat16
  # bf16 keeps 8 bits of mantissa: compare at its precision.
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.02,
                             atol=0.1)


def test_inside_shard_map_over_devices():
  """The train step runs under shard_map: results there carry the batch
  axis's varying type and every device computes its own shard."""
  devices = jax.devices()
  mesh = jax.make_mesh((len(devices),), ("batch",))
  spec = jax.sharding.PartitionSpec("batch")
  x = jax.random.normal(jax.random.PRNGKey(0), (2 * len(devices), 6, 6, 3))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
  pad = ((1, 1), (1, 1))

  def per_device(x, k):
    k = jax.lax.pcast(k, "batch", to="varying")
    y, vjp = jax.vjp(lambda k: native.conv2d(x, k, (1, 1), pad), k)
    return y, jax.lax.psum(vjp(jnp.ones_like(y))[0], "batch")

  f = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(spec, jax.sharding.PartitionSpec()),
                            out_specs=(spec, jax.sharding.PartitionSpec())))
  y, dk = f(jax.device_put(x, jax.NamedSharding(mesh, spec)), k)
  want_y, want_vjp = jax.vjp(
      lambda k: jax.lax.conv_general_dilated(x, k, (1, 1), pad,
                                             dimension_numbers=DN), k)
  np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dk, want_vjp(jnp.ones_like(want_y))[0],
                             rtol=1e-4, atol=1e-3)


def _conv_ops(module, x) -> str:
  variables = module.init(jax.random.PRNGKey(0), x)
  return jax.jit(module.apply).lower(variables, x).as_text()


ONEDNN = Kernels(conv="onednn", scanned_conv="onednn")


def test_conv_module_chooses_native_and_falls_back(monkeypatch):
  x = jnp.ones((2, 8, 8, 4))
  assert "cnnflax_conv_forward" in _conv_ops(
      layers.Conv(8, padding=1, kernels=ONEDNN), x)
  assert "cnnflax_conv_forward" not in _conv_ops(layers.Conv(8, padding=1), x)
  # Grouped convolutions and a missing oneDNN take XLA's convolution.
  grouped = layers.Conv(8, padding=1, groups=2, kernels=ONEDNN)
  assert "convolution" in _conv_ops(grouped, x)
  monkeypatch.setattr(native, "available", lambda: False)
  text = _conv_ops(layers.Conv(8, padding=1, kernels=ONEDNN), x)
  assert "cnnflax_conv_forward" not in text and "convolution" in text


def test_resnet_auto_uses_native_on_cpu(monkeypatch):
  section = dict(platform="cpu", conv="auto", scanned_conv="auto",
                 depthwise="auto", batch_norm="auto")
  kernels = backend.resolve_kernels(section, ("cpu",))
  assert (kernels.conv, kernels.scanned_conv) == ("onednn", "onednn")
  model = resnet.ResNet(depth=20, stem="cifar", num_classes=10,
                        kernels=kernels)
  assert model.layer_kernels.conv == "onednn"
  monkeypatch.setattr(native, "available", lambda: False)
  kernels = backend.resolve_kernels(section, ("cpu",))
  scanned = resnet.ResNet(depth=20, stem="cifar", num_classes=10,
                          scan_blocks=True, kernels=kernels)
  assert scanned.layer_kernels.conv == "matmul"
  model = model.clone(kernels=kernels)
  assert model.layer_kernels.conv == "xla"


def test_resnet_native_equals_xla():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  results = []
  for kernels in (Kernels(), ONEDNN):
    model = resnet.ResNet(depth=8, stem="cifar", num_classes=10,
                          kernels=kernels)
    variables = model.init(jax.random.PRNGKey(1), x, train=False)

    def loss(params):
      y, _ = model.apply({**variables, "params": params}, x, train=True,
                         mutable=["batch_stats"])
      return (y ** 2).sum()

    results.append(jax.jit(jax.value_and_grad(loss))(variables["params"]))
  (loss_x, grads_x), (loss_n, grads_n) = results
  np.testing.assert_allclose(loss_n, loss_x, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_n), jax.tree.leaves(grads_x)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_unsupported_dtype_is_a_clear_error_not_a_crash():
  x = jnp.ones((1, 4, 4, 2), jnp.float16)
  k = jnp.ones((3, 3, 2, 2), jnp.float16)
  with pytest.raises(Exception, match="f32 or bf16 only"):
    jax.block_until_ready(native._call("forward", (1, 4, 4, 2), jnp.float16,
                                       x, k, (1, 1), ((1, 1), (1, 1))))
  assert not native.supports(x, k)  # so layers.Conv uses XLA's
