"""Model zoo 1: AlexNet, VGG, NiN, GoogLeNet, Highway networks.

Parameter counts are checked for every registered model in test_models.py;
here: the papers' intermediate shapes, the shared layers, the switches, and
one training step per family on synthetic data.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnflax import models, summary
from cnnflax.errors import ConfigError
from cnnflax.models.highway import HighwayLayer
from cnnflax.models.layers import LRN, SplitConv, caffe_pool
from tests.conftest import tiny_config
from tests.test_step import one_step


def shapes(name, image_shape, **fields):
  rows = summary.layer_table(models.get_model(name, **fields), image_shape)
  return {r.path: r.output_shape for r in rows}


# --- the papers' layer tables ------------------------------------------------


def test_alexnet_shapes_follow_section_3():
  for groups in (1, 2):
    got = shapes("alexnet", (227, 227, 3), groups=groups)
    assert got["features/conv1"] == (55, 55, 96)
    assert got["features/conv2"] == (27, 27, 256)
    assert got["features/conv3"] == (13, 13, 384)
    assert got["features/conv4"] == (13, 13, 384)
    assert got["features/conv5"] == (13, 13, 256)
    assert got["features"] == (6, 6, 256)  # 9,216 inputs to fc6
    assert got["fc6"] == (4096,) and got["fc8"] == (1000,)
  # Two columns: conv2, conv4, conv5 each see half of the maps.
  got = shapes("alexnet", (227, 227, 3))
  assert got["features/conv2/group0"] == (27, 27, 128)
  assert "features/conv3/group0" not in got


def test_alexnet_refuses_tiny_inputs():
  model = models.get_model("alexnet", num_classes=10)
  with pytest.raises(ValueError, match="at least 67x67"):
    summary.count(model, (32, 32, 3))


def test_split_conv_is_a_grouped_convolution():
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 6))
  layer = SplitConv(4, (3, 3), groups=2)
  variables = layer.init(jax.random.key(1), x)
  p = variables["params"]
  # feature_group_count wants the groups' kernels side by side on the output
  # axis, each over its own slice of the inputs.
  kernel = jnp.concatenate([p["group0"]["kernel"], p["group1"]["kernel"]], -1)
  bias = jnp.concatenate([p["group0"]["bias"], p["group1"]["bias"]])
  want = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "SAME", feature_group_count=2,
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
  np.testing.assert_allclose(layer.apply(variables, x), want, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("config", ["A", "A-LRN", "B", "C", "D", "E"])
def test_vgg_ends_at_7x7x512(config):
  got = shapes("vgg16", (224, 224, 3), config=config)
  assert got["features"] == (7, 7, 512)
  assert got["fc6"] == (4096,) and got["fc7"] == (4096,)
  assert ("features/lrn" in got) == (config == "A-LRN")


def test_vgg_c_has_1x1_convolutions_in_its_last_three_stages():
  model = models.get_model("vgg16_c")
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 224, 224, 3)))
  feats = variables["params"]["features"]
  kernels = {k: v["Conv_0"]["kernel"].shape[:2] for k, v in feats.items()}
  ones = sorted(k for k, v in kernels.items() if v == (1, 1))
  assert ones == ["conv3_3", "conv4_3", "conv5_3"]
  assert len(kernels) == 13  # 13 conv layers + 3 FC = 16 weight layers


def test_vgg_cifar_head():
  got = shapes("vgg16_cifar", (32, 32, 3), num_classes=10)
  assert got["features"] == (1, 1, 512)
  assert got["fc1"] == (512,) and got["fc2"] == (512,) and got["fc3"] == (10,)


def test_nin_cifar_shapes():
  got = shapes("nin_cifar", (32, 32, 3), num_classes=10)
  assert got["mlpconv1/conv"] == (32, 32, 192)
  assert got["mlpconv1"] == (32, 32, 96)
  assert got["mlpconv2"] == (16, 16, 192)  # 3x3/2 max-pool
  assert got["mlpconv3"] == (8, 8, 10)  # 3x3/2 average pool; class maps
  assert got["NiN"] == (10,)


def test_nin_imagenet_shapes_round_pools_up():
  got = shapes("nin_imagenet", (224, 224, 3), num_classes=1000)
  assert got["mlpconv1"] == (54, 54, 96)
  assert got["mlpconv2"] == (27, 27, 256)
  assert got["mlpconv3"] == (13, 13, 384)
  assert got["mlpconv4"] == (6, 6, 1000)


def test_googlenet_shapes_follow_table_1():
  got = shapes("googlenet", (224, 224, 3))
  want = {"conv1": (112, 112, 64), "conv2": (56, 56, 192),
          "inception_3a": (28, 28, 256), "inception_3b": (28, 28, 480),
          "inception_4a": (14, 14, 512), "inception_4b": (14, 14, 512),
          "inception_4c": (14, 14, 512), "inception_4d": (14, 14, 528),
          "inception_4e": (14, 14, 832), "inception_5a": (7, 7, 832),
          "inception_5b": (7, 7, 1024), "logits": (1000,)}
  assert {k: got[k] for k in want} == want
  assert got["inception_3a/5x5"] == (28, 28, 32)  # a real 5x5 branch
  assert not any(k.startswith("aux") for k in got)


def test_googlenet_aux_heads_only_in_training():
  model = models.get_model("googlenet", num_classes=10)
  x = jnp.zeros((2, 224, 224, 3))
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  train_vars = jax.eval_shape(lambda: model.init(rngs, x, train=True))
  eval_vars = jax.eval_shape(lambda: model.init(rngs, x, train=False))
  assert {"aux_4a", "aux_4d"} <= set(train_vars["params"])
  assert not {"aux_4a", "aux_4d"} & set(eval_vars["params"])
  out = jax.eval_shape(lambda v: model.apply(v, x, train=True, rngs=rngs),
                       train_vars)
  logits, aux = out
  assert logits.shape == (2, 10) and [a.shape for a in aux] == [(2, 10)] * 2
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), train_vars)
  assert out.shape == (2, 10)
  no_aux = models.get_model("googlenet", num_classes=10, aux_logits=False)
  out = jax.eval_shape(
      lambda: no_aux.init_with_output(rngs, x, train=True)[0])
  assert out.shape == (2, 10)


def test_googlenet_switches_lrn_for_batch_norm():
  lrn = shapes("googlenet", (224, 224, 3))
  bn = shapes("googlenet_bn", (224, 224, 3))
  assert "lrn1" in lrn and "lrn2" in lrn
  assert "lrn1" not in bn and "conv1/BatchNorm_0" in bn


ZOO1 = ("alexnet", "vgg11_lrn", "vgg16_cifar", "nin_cifar", "nin_imagenet",
        "googlenet", "googlenet_bn", "highway_mnist", "highway_cifar")


@pytest.mark.parametrize("name", ZOO1)
def test_half_precision_computes_in_bfloat16(name):
  info = models.model_info(name)
  model = models.get_model(name, num_classes=10, dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((2, *info.input_shape), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  assert out.dtype == jnp.bfloat16 and out.shape == (2, 10)


# --- shared layers ---------------------------------------------------------


def test_lrn_matches_the_formula():
  x = jax.random.normal(jax.random.key(0), (1, 2, 2, 7)) * 10
  got = LRN(size=5, k=2.0, alpha=1e-4, beta=0.75).apply({}, x)
  a = np.asarray(x, np.float64)
  want = np.empty_like(a)
  for i in range(7):
    lo, hi = max(0, i - 2), min(7, i + 3)
    want[..., i] = a[..., i] / (2.0 + 1e-4 * np.sum(
        a[..., lo:hi] ** 2, -1)) ** 0.75
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_caffe_pool_rounds_up_and_averages_inside_only():
  for n, out in ((112, 56), (54, 27), (27, 13), (13, 6), (32, 16), (16, 8)):
    assert caffe_pool(jnp.zeros((1, n, n, 1)), "max", 3, 2).shape[1] == out
  x = jnp.ones((1, 4, 4, 1))  # the last window covers one real column
  np.testing.assert_allclose(caffe_pool(x, "avg", 3, 2), 1.0)


# --- highway layers --------------------------------------------------------


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_closed_gate_carries_the_input(kind):
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 8) if kind == "conv"
                        else (2, 8))
  layer = HighwayLayer(kind, gate_bias_init=-30.0)
  variables = layer.init(jax.random.key(1), x)
  np.testing.assert_allclose(layer.apply(variables, x), x, atol=1e-6)
  # An open gate gives the transform H(x) = relu(W_H x + b_H).
  params = variables["params"]
  gate = {**params["gate"], "bias": jnp.full_like(params["gate"]["bias"], 30)}
  opened = layer.apply({"params": {**params, "gate": gate}}, x)
  h = HighwayLayer(kind, plain=True).apply(
      {"params": {"transform": params["transform"]}}, x)
  np.testing.assert_allclose(opened, h, atol=1e-5)


def test_plain_layer_has_no_gate():
  x = jax.random.normal(jax.random.key(0), (2, 8))
  layer = HighwayLayer("dense", plain=True, gate_bias_init=-30.0)
  variables = layer.init(jax.random.key(1), x)
  assert set(variables["params"]) == {"transform"}
  p = variables["params"]["transform"]
  want = jax.nn.relu(x @ p["kernel"] + p["bias"])
  np.testing.assert_allclose(layer.apply(variables, x), want, rtol=1e-6)


@pytest.mark.parametrize("depth", [10, 20, 50, 100])
def test_highway_and_plain_mnist_nets_of_equal_depth(depth):
  # One plain input layer, depth - 1 highway/plain layers, softmax layer.
  highway = summary.count(models.get_model("highway_mnist", depth=depth),
                          (28, 28, 1))["params"]
  plain = summary.count(models.get_model("plain_mnist", depth=depth),
                        (28, 28, 1))["params"]
  assert highway == 784 * 50 + 50 + (depth - 1) * 2 * 2550 + 510
  assert plain == 784 * 71 + 71 + (depth - 1) * 5112 + 720


def test_scanned_stack_is_the_unrolled_one():
  # The conv stacks go through the same ScannedLayers path.
  x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
  fields = dict(kind="dense", depth=5, width=8, gate_bias_init=-1.0)
  unrolled = models.get_model("highway_mnist", **fields)
  scanned = models.get_model("highway_mnist", scan_blocks=True, **fields)
  assert not unrolled.scanned  # by default only stacks of 10 or more
  unrolled_params = unrolled.init(jax.random.key(1), x)["params"]
  params = dict(unrolled_params)
  rest = [params.pop(f"layer{i}") for i in range(2, 6)]
  params["layer_rest"] = {"layer": jax.tree.map(lambda *a: jnp.stack(a),
                                                *rest)}
  np.testing.assert_allclose(scanned.apply({"params": params}, x),
                             unrolled.apply({"params": unrolled_params}, x),
                             rtol=1e-5, atol=1e-5)
  assert models.get_model("highway_mnist", depth=11).scanned


def test_highway_cifar_shapes():
  got = shapes("highway_cifar", (32, 32, 3))
  assert got["stage1_layer6"] == (32, 32, 32)
  assert got["stage2_layer1"] == (16, 16, 80)
  assert got["stage3_layer6"] == (8, 8, 128)
  assert "stage3_layer7" not in got


@pytest.mark.parametrize("name,fields,message", [
    ("alexnet", dict(groups=3), "groups=3 is not valid"),
    ("alexnet", dict(weight_init="xavier"), "weight_init='xavier'"),
    ("vgg16", dict(config="F"), "config='F' is not valid"),
    ("vgg16", dict(head="svhn"), "head='svhn' is not valid"),
    ("vgg16", dict(dropout_rate=1.0), r"dropout_rate=1.0 is not valid"),
    ("nin_cifar", dict(variant="mnist"), "variant='mnist' is not valid"),
    ("googlenet", dict(aux_dropout_rate=-0.1), "aux_dropout_rate=-0.1"),
    ("googlenet", dict(activation="swoosh"), "activation='swoosh'"),
    ("highway_mnist", dict(kind="rnn"), "kind='rnn' is not valid"),
    ("highway_mnist", dict(depth=0), "depth=0 is not valid"),
    ("highway_cifar", dict(depth=10), "choose a multiple of 3"),
])
def test_bad_fields_are_refused(name, fields, message):
  with pytest.raises(ConfigError, match=message):
    models.get_model(name, **fields)


# --- one training step per family -------------------------------------------


def step_config(name, size, channels=3, batch=8, **overrides):
  return tiny_config(**{
      "model.name": name, "dataset.image_size": size,
      "dataset.synthetic_channels": channels,
      "dataset.synthetic_train_size": batch,
      "dataset.synthetic_test_size": batch, "batch_size": batch,
      "eval_batch_size": batch, "optimizer.weight_decay": 0.0,
      **overrides})


def check_step(config, devices):
  init, state, metrics, run = one_step(config, devices)
  assert np.isfinite(metrics["loss"]) and metrics["count"] == config.batch_size
  new = run.devices.fetch(state)
  moved = [not np.array_equal(a, b) for a, b in
           zip(jax.tree.leaves(init.params), jax.tree.leaves(new.params))]
  assert all(moved)  # no weight decay: every parameter got a gradient
  return init, new


# ImageNet-size nets: one step at their own input size. The 61M-133M
# parameter nets run on one device: eight replicas of VGG's parameters,
# gradients and momentum would take ~15 GB of host memory.
@pytest.mark.parametrize("name,size,all_devices", [
    ("alexnet", 227, False),
    ("vgg11", 224, False),
    ("nin_imagenet", 224, True),
])
def test_imagenet_size_step(name, size, all_devices):
  devices = jax.devices() if all_devices else jax.devices()[:1]
  check_step(step_config(name, size), devices)


def test_googlenet_step_trains_the_aux_heads():
  config = step_config("googlenet", 224, **{"aux_loss_weights": (0.3, 0.3)})
  _, new = check_step(config, jax.devices())  # aux parameters moved too
  assert {"aux_4a", "aux_4d"} <= set(new.params)


# The CIFAR/MNIST nets of the families; VGG's CIFAR head is covered by the
# shape test (its step would add 25 s and nothing new).
@pytest.mark.parametrize("name,size,channels,fields", [
    ("nin_cifar", 32, 3, {"model.batch_norm": True}),
    ("highway_cifar", 32, 3, {}),
    ("highway_mnist", 28, 1, {"model.depth": 20}),  # scanned
])
def test_small_step(name, size, channels, fields):
  check_step(step_config(name, size, channels, batch=16, **fields),
             jax.devices())
