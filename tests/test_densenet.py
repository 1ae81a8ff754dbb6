"""DenseNet: the papers' layouts, the switches, memory-efficient recompute.

Parameter counts and mult-adds of the registered nets are checked in
test_models.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnflax import models
from cnnflax.errors import ConfigError
from configs import densenet121, densenet_bc, densenet_cifar
from tests.test_zoo1 import check_step, shapes, step_config


@pytest.fixture(autouse=True)
def classic_threefry():
  """XLA:CPU compiles the partitionable threefry of each differently shaped
  kernel separately, 1-2 s each, and no two DenseNet kernels share a shape:
  the classic bit layout compiles 5-8x faster. The values do not matter
  here."""
  with jax.threefry_partitionable(False):
    yield


def test_densenet_bc_cifar_shapes():
  # 2k = 24 maps in, 16 layers of k = 12 per block, theta = 0.5.
  got = shapes("densenet_bc100_k12_cifar", (32, 32, 3))
  assert got["stem_conv"] == (32, 32, 24)
  assert got["block1/layer1/conv1"] == (32, 32, 48)  # bottleneck: 4k
  assert got["block1/layer1/conv2"] == (32, 32, 12)
  assert got["block1"] == (32, 32, 24 + 16 * 12)
  assert got["transition1"] == (32, 32, 108)  # floor(216 / 2), then pool
  assert got["block2"] == (16, 16, 108 + 192)
  assert got["transition2"] == (16, 16, 150)
  assert got["block3"] == (8, 8, 342)
  assert got["head"] == (10,)
  assert "block3/layer17" not in got and "transition3" not in got


def test_plain_densenet_cifar_shapes():
  # 16 maps in, 12 layers of k = 12 per block, transitions keep the width.
  got = shapes("densenet40_k12_cifar", (32, 32, 3))
  assert got["stem_conv"] == (32, 32, 16)
  assert got["block1"] == (32, 32, 160) and got["transition1"] == (32, 32, 160)
  assert got["block2"] == (16, 16, 304) and got["block3"] == (8, 8, 448)
  assert "block1/layer1/conv2" not in got  # one BN-ReLU-3x3 conv per layer


def test_densenet121_shapes_follow_table_1():
  got = shapes("densenet121", (224, 224, 3))
  assert got["stem_conv"] == (112, 112, 64)
  assert got["block1"] == (56, 56, 256) and got["transition1"] == (56, 56, 128)
  assert got["block2"] == (28, 28, 512) and got["transition2"] == (28, 28, 256)
  assert got["block3"] == (14, 14, 1024) and got["transition3"] == (14, 14, 512)
  assert got["block4"] == (7, 7, 1024) and got["head"] == (1000,)
  assert "block4/layer16" in got and "block4/layer17" not in got


def test_depth_gives_the_layout():
  assert models.get_model("densenet_bc250_k24_cifar").blocks == (41, 41, 41)
  assert models.get_model("densenet100_k12_cifar").blocks == (32, 32, 32)
  assert models.get_model("densenet264").blocks == (6, 12, 64, 48)
  # Explicit block sizes: depth 0 or the one they make.
  custom = models.get_model("densenet121", depth=0, block_sizes=(2, 2))
  assert custom.blocks == (2, 2) and custom.transition_widths() == [64]
  assert models.get_model("densenet121", depth=16,
                          block_sizes=(2, 2, 2)).blocks == (2, 2, 2)


@pytest.mark.parametrize("fields,message", [
    (dict(depth=41), r"depth=41 is not 6n\+4 for a CIFAR DenseNet with "
     r"bottleneck=True; use e.g. 16, 100, 190, 250"),
    (dict(depth=100, bottleneck=False, compression=1.0, block_sizes=()),
     None),  # 3n+4: fine
    (dict(depth=42, bottleneck=False), r"depth=42 is not 3n\+4"),
    (dict(stem="imagenet"), "depth=100 is not an ImageNet DenseNet; use one "
     "of 121, 169, 201, 264"),
    (dict(block_sizes=(6, 6)), r"depth=100 does not match block_sizes=\(6, "
     r"6\), which make a 27-layer net; set depth=27 or depth=0"),
    (dict(block_sizes=(6, 0), depth=0), r"block_sizes=\(6, 0\) is not valid; "
     "choose whole numbers >= 1"),
    (dict(compression=0.0), r"compression=0.0 is not valid; choose theta in "
     r"\(0, 1\]"),
    (dict(compression=1.5), "compression=1.5 is not valid"),
    (dict(growth_rate=0), "growth_rate=0 is not valid"),
    (dict(dropout_rate=1.0), "dropout_rate=1.0 is not valid"),
    (dict(stem="tiny"), "stem='tiny' is not valid"),
    (dict(memory_efficent=True), "has no field 'memory_efficent'"),
])
def test_bad_fields_are_refused(fields, message):
  if message is None:
    models.get_model("densenet_bc100_k12_cifar", **fields)
    return
  with pytest.raises(ConfigError, match=message):
    models.get_model("densenet_bc100_k12_cifar", **fields)


def test_compression_and_stem_width_are_switches():
  def width(**fields):
    model = models.get_model("densenet_bc100_k12_cifar", depth=16, **fields)
    return model.stem_features, model.transition_widths()
  assert width() == (24, [24, 24])  # floor((24 + 2 * 12) / 2), ...
  assert width(compression=1.0) == (16, [40, 64])  # DenseNet-B: 16 maps
  assert width(stem_width=32) == (32, [28, 26])


# --- memory-efficient recompute ----------------------------------------------


def test_memory_efficient_gives_the_same_loss_and_gradients():
  # Dropout on: the recomputed layers must draw the same masks. (The
  # training step below recomputes the layers of a net without bottlenecks.)
  plain = models.get_model("densenet_bc100_k12_cifar", growth_rate=4,
                           depth=10, dropout_rate=0.2)
  efficient = plain.clone(memory_efficient=True)
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 3))
  labels = jnp.arange(8) % 10
  rngs = {"params": jax.random.key(1), "dropout": jax.random.key(2)}
  variables = jax.jit(lambda: plain.init(rngs, x, train=True))()
  # The same variable tree: checkpoints load into either.
  assert jax.tree.structure(jax.eval_shape(
      lambda: efficient.init(rngs, x, train=True))) == jax.tree.structure(
          variables)

  def loss_and_grads(model):
    def loss(params):
      logits, _ = model.apply(
          {"params": params, "batch_stats": variables["batch_stats"]}, x,
          train=True, rngs={"dropout": jax.random.key(3)},
          mutable=["batch_stats"])
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels])
    return jax.jit(jax.value_and_grad(loss))(variables["params"])

  loss, grads = loss_and_grads(plain)
  loss2, grads2 = loss_and_grads(efficient)
  np.testing.assert_allclose(loss, loss2, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def residual_bytes(model, x):
  """What the backward pass keeps from the forward pass (jax.vjp's
  residuals), from shapes alone."""
  def residuals(params, stats):
    def loss(params):
      out, _ = model.apply({"params": params, "batch_stats": stats}, x,
                           train=True, mutable=["batch_stats"])
      return jnp.mean(out)
    return jax.tree.leaves(jax.vjp(loss, params)[1])
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), x, train=True))
  leaves = jax.eval_shape(residuals, variables["params"],
                          variables["batch_stats"])
  return sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)


def test_memory_efficient_keeps_activations_linear_in_depth():
  x = jnp.zeros((2, 32, 32, 3))
  kept = {}
  for depth in (28, 52):  # 4 and 8 layers per block
    model = models.get_model("densenet_bc100_k12_cifar", depth=depth)
    kept[depth] = (residual_bytes(model, x), residual_bytes(
        model.clone(memory_efficient=True), x))
  (plain28, eff28), (plain52, eff52) = kept[28], kept[52]
  assert eff52 / eff28 < 2.0  # twice the layers: at most twice the memory
  # Stored, every layer's BN-ReLU output (its convolution's input) spans all
  # earlier maps: quadratic in depth. The concatenations themselves are not
  # kept (the block's maps stay a list), so recomputation saves less than
  # it once did, but what it saves still grows faster than the depth.
  assert plain52 / plain28 > 2.2
  assert (plain52 - eff52) / (plain28 - eff28) > 3.0


# --- training and configs ----------------------------------------------------


def test_small_memory_efficient_step():
  check_step(step_config("densenet40_k12_cifar", 32, **{
      "model.depth": 13, "model.memory_efficient": True}), jax.devices())


def test_configs_follow_the_paper():
  c = densenet_bc.get_config()
  assert c.model.name == "densenet_bc100_k12_cifar" and c.batch_size == 64
  assert c.num_epochs == 300 and c.schedule.boundaries == (150, 225)
  assert c.optimizer.nesterov and c.optimizer.weight_decay == 1e-4
  assert c.dataset.augment == "cifar" and c.model.get("dropout_rate") is None
  c = densenet_cifar.get_config("100,24,noaug,c100")
  assert c.model.name == "densenet100_k24_cifar"
  assert c.dataset.name == "cifar100" and c.dataset.augment == "none"
  assert c.model.dropout_rate == 0.2
  c = densenet_cifar.get_config("bc,40,48")  # a Wide-DenseNet-BC
  assert (c.model.name, c.model.depth, c.model.growth_rate) == (
      "densenet_bc_cifar", 40, 48)  # the family, not another listed net
  with pytest.raises(ValueError, match=r"densenet_cifar.py:bc,40 is unknown"):
    densenet_cifar.get_config("bc,40")
  c = densenet121.get_config("169")
  assert c.model.name == "densenet169" and c.schedule.boundaries == (30, 60)
  with pytest.raises(ValueError, match="densenet121.py:161 is unknown"):
    densenet121.get_config("161")
