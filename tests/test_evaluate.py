"""cnnflax.evaluate: the centre crop, 10-crop, VGG's dense evaluation and
ensembles, on workdirs that training or a converter writes."""
import dataclasses
import io
import json
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, tiny_config
from cnnflax import evaluate, models, paths, train
from cnnflax import run as run_lib
from cnnflax.data import augment, tfds_files
from cnnflax.errors import CheckpointError, ConfigError
from cnnflax.evaluate import Options

CLASSES = 5


def init_workdir(config, workdir, seed=0) -> str:
  """A workdir as a weight converter writes one: config.json and checkpoint
  0 holding given weights (here He-normal draws; nothing compiles)."""
  run = run_lib.Run(config, str(workdir))
  shapes = jax.eval_shape(run.init_state)
  rng = np.random.default_rng(seed)

  def draw(s):
    if len(s.shape) < 2:  # biases
      return np.zeros(s.shape, s.dtype)
    std = np.sqrt(2 / np.prod(s.shape[:-1]))
    return (rng.standard_normal(s.shape) * std).astype(s.dtype)

  zeros = lambda tree: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                                    tree)
  state = zeros(shapes).replace(params=jax.tree.map(draw, shapes.params))
  paths.makedirs(workdir)
  (paths.path(workdir) / "config.json").write_text(
      json.dumps(config.to_dict()))
  ckpts = run.checkpoints()
  ckpts.save(0, state)
  ckpts.close()
  return str(workdir)


def jpeg(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


def flat(i: int) -> bytes:
  """Example i: one colour, and a shape of its own (some portrait)."""
  shape = (36 + (i * 7) % 30, 40 + (i * 11) % 35)
  colour = [(37 * i) % 256, (91 * i + 50) % 256, (11 * i + 200) % 256]
  return jpeg(np.broadcast_to(np.uint8(colour), (*shape, 3)).copy())


def textured(i: int) -> bytes:
  """Blocky noise, landscape or portrait."""
  rng = np.random.default_rng(i)
  shape = (48, 64) if i % 2 else (64, 48)
  small = rng.integers(0, 256, (shape[0] // 4, shape[1] // 4, 3), np.uint8)
  return jpeg(np.asarray(Image.fromarray(small).resize(shape[::-1])))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  for name, image in (("flat", flat), ("textured", textured)):
    tfds_files.write(str(root), name, "1.0.0",
                     {"train": [(image(i), i % CLASSES) for i in range(16)],
                      "validation": [(image(i), (i * 3) % CLASSES)
                                     for i in range(100, 107)]},
                     CLASSES, "array_record")
  return str(root)


def streamed(data_dir, name, **overrides):
  return tiny_config(**{
      "dataset.name": f"tfds:{name}", "dataset.data_dir": data_dir,
      "dataset.augment": "imagenet", "dataset.image_size": 32,
      "dataset.workers": 0, "batch_size": 8, "eval_batch_size": 8,
      **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A LeNet trained a few steps on synthetic data by train_and_evaluate."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  results = train.train_and_evaluate(tiny_config(), workdir)
  return workdir, results


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
  """VGG-11 with the CIFAR head, as converted (never trained)."""
  return init_workdir(
      tiny_config(**{"model.name": "vgg11", "model.head": "cifar",
                     "dataset.synthetic_channels": 3,
                     "dataset.synthetic_test_size": 8,
                     "eval_batch_size": 8}),
      tmp_path_factory.mktemp("vgg"))


def scores(workdir, options=Options()):
  member = evaluate.Member(workdir, options)
  return evaluate.member_scores(member, options, member.run.dataset.num_test)


# ------------------------------------------------------------- protocols ----

def test_center_is_what_training_evaluates(trained):
  workdir, results = trained
  got = evaluate.evaluate([workdir])
  assert got["examples"] == 40 and got["split"] == "test"
  assert got["top1_acc"] == results["test_top1_acc"]
  assert got["top5_acc"] == results["test_top5_acc"]
  assert got["loss"] == pytest.approx(results["test_loss"], rel=1e-5)
  assert got["members"][0]["step"] == 6


def test_ensemble_of_one_checkpoint_is_that_checkpoint(trained, tmp_path):
  workdir, _ = trained
  options = Options(protocol="10crop")
  alone = evaluate.evaluate([workdir], options)
  twice = evaluate.evaluate([workdir, workdir], options)
  for key in ("top1_acc", "top5_acc"):
    assert twice[key] == alone[key]
  assert twice["loss"] == pytest.approx(alone["loss"], rel=1e-5)
  assert len(twice["members"]) == 2
  # Another checkpoint: the probabilities are averaged.
  other = init_workdir(tiny_config(), tmp_path / "other")
  pair = evaluate.evaluate([workdir, other], Options())
  (a, labels, _), (b, _, _) = scores(workdir), scores(other)
  want = evaluate.metrics(np.log((np.exp(a) + np.exp(b)) / 2), labels)
  assert pair["top1_acc"] == want["top1_acc"]
  assert pair["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_ten_crops_of_a_constant_image_are_its_centre_crop(data_dir, tmp_path):
  workdir = init_workdir(streamed(data_dir, "flat"), tmp_path / "w")
  center, labels, _ = scores(workdir)
  # (through a grain worker process)
  crops, crop_labels, record = scores(workdir, Options(protocol="10crop",
                                                       workers=1))
  assert record["resize"] == pytest.approx(32 / 0.875)
  np.testing.assert_array_equal(labels, crop_labels)
  assert labels.tolist() == [(i * 3) % CLASSES for i in range(100, 107)]
  np.testing.assert_allclose(crops, center, atol=1e-5)


def test_ten_crop_geometry():
  # Short side 375 -> 256: a 224 crop covers 328.1 stored pixels.
  boxes = evaluate.ten_crop_boxes(500, 375, 224, 256)
  side = 224 * 375 / 256
  assert all(b[2] == b[3] == pytest.approx(side) for b in boxes)
  assert boxes[0] == pytest.approx(augment.center_box(500, 375, 224))
  assert {(round(x, 6), round(y, 6)) for x, y, _, _ in boxes[1:]} == {
      (0, 0), (round(500 - side, 6), 0), (0, round(375 - side, 6)),
      (round(500 - side, 6), round(375 - side, 6))}
  # AlexNet: the corners of the central 375 x 375 square.
  square = evaluate.ten_crop_boxes(500, 375, 224, 256, square=True)
  assert min(b[0] for b in square) == pytest.approx(62.5)
  assert max(b[0] + b[2] for b in square) == pytest.approx(437.5)
  # The centre one is the centre crop, pixel for pixel.
  data = textured(3)
  crops = evaluate.five_crops(data, 32, 3, 32 / 0.875, False)
  np.testing.assert_array_equal(crops[0],
                                augment.decode_crop(data, 32, 3, None))
  image = np.arange(4 * 4 * 1, dtype=np.uint8).reshape(4, 4, 1)
  padded = evaluate.padded_crops(image, 1)
  np.testing.assert_array_equal(padded[0], image)
  np.testing.assert_array_equal(padded[4][:3, :3], image[1:, 1:])
  assert padded[1][0].max() == 0 and padded[1][:, 0].max() == 0


def test_dense_at_the_training_scale_is_the_centre_crop(vgg):
  """32x32 images at Q=32: the FC-as-conv score map is 1x1."""
  center, labels, _ = scores(vgg)
  options = Options(protocol="dense", flip=False)
  dense, dense_labels, record = scores(vgg, options)
  assert record["scales"] == [32]
  np.testing.assert_array_equal(labels, dense_labels)
  np.testing.assert_allclose(dense, center, rtol=1e-4, atol=1e-5)


def test_dense_averages_mirror_images_and_scales(data_dir, tmp_path):
  """Streamed landscape and portrait images (on two devices: batches of
  whole images are small)."""
  config = streamed(data_dir, "textured", **{
      "model.name": "vgg11", "model.head": "cifar",
      "dataset.train_crop": "scale", "dataset.scale_range": (32, 48)})
  workdir = init_workdir(config, tmp_path / "w")
  options = Options(protocol="dense", scales=(32, 40), dense_round=8)
  member = evaluate.Member(workdir, options, jax.devices()[:2])
  logp, labels, record = evaluate.member_scores(member, options, 7)
  assert record["scales"] == [32, 40] and member.split == "validation"
  variables = member.run.devices.replicate(member.variables())
  single = evaluate.dense_scores(member, variables, options, 7)
  for q in (32, 40):
    assert record["per_scale"][str(q)] == evaluate.metrics(*single[q])
  want = np.log((np.exp(single[32][0]) + np.exp(single[40][0])) / 2)
  np.testing.assert_allclose(logp, want, rtol=1e-5, atol=1e-5)
  unflipped = evaluate.dense_scores(
      member, variables, dataclasses.replace(options, flip=False), 7)
  assert not np.allclose(unflipped[32][0], single[32][0], atol=1e-3)
  # Default scales: the paper's rule for S jittered in [32, 48].
  assert evaluate.dense_scales(member, Options()) == (32, 40, 48)
  # What grain's worker processes receive: pickled, it gives the same batch.
  sizes = evaluate.image_sizes(member, 7)
  assert sorted(map(tuple, sizes)) == [(48, 64)] * 4 + [(64, 48)] * 3
  plan = evaluate.dense_plan(sizes, 40, 8, 0, 10 ** 6, 2, 2)
  make = evaluate.DenseBatch(member.run.dataset.test, plan,
                             [slice(None)] * len(plan), 3)
  assert {shape for shape, _, _ in plan} == {(56, 40), (40, 56)}
  for got, want in zip(pickle.loads(pickle.dumps(make))(1).values(),
                       make(1).values()):
    np.testing.assert_array_equal(got, want)


def test_dense_plan_scores_every_example_once():
  sizes = np.array([[500, 375], [375, 500], [300, 300], [640, 480],
                    [1000, 200]] * 7)
  plan = evaluate.dense_plan(sizes, 256, 32, 0, 4 * 224 * 224, 2, 2)
  seen = np.concatenate([indices[mask > 0] for _, indices, mask in plan])
  assert sorted(seen.tolist()) == list(range(len(sizes)))
  shapes = {shape for shape, _, _ in plan}
  assert shapes == {(256, 352), (352, 256), (256, 256), (256, 1280)}
  assert all(len(mask) % 2 == 0 for _, _, mask in plan)
  assert evaluate.dense_shape(500, 375, 256, 1) == (256, 341)


def test_fc_layers_as_convolutions_slide_the_trained_window():
  """A VGG trained at 64x64 (its first FC layer sees 2x2x512 maps) on a
  96x128 image: each point of the score map is the FC head on one 2x2
  window of the maps, flattened as in training."""
  model = models.get_model("vgg11", num_classes=3, head="cifar")
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 64, 64, 3)))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda s: rng.standard_normal(s.shape).astype(s.dtype) * 0.05, shapes)
  image = jax.random.normal(jax.random.key(1), (1, 96, 128, 3))

  @jax.jit
  def run(variables, image):
    return model.apply(variables, image, dense=True,
                       capture_intermediates=lambda m, _: m.name == "features")

  got, inter = run(variables, image)
  assert got.shape == (1, 2, 3, 3)
  maps = inter["intermediates"]["features"]["__call__"][0]
  p = variables["params"]

  def head(flat):
    for name in ("fc1", "fc2"):
      flat = jax.nn.relu(flat @ p[name]["kernel"] + p[name]["bias"])
    return flat @ p["fc3"]["kernel"] + p["fc3"]["bias"]

  for i in range(2):
    for j in range(3):
      want = head(maps[:, i:i + 2, j:j + 2].reshape(1, -1))
      np.testing.assert_allclose(got[:, i, j], want, rtol=1e-4, atol=1e-4)
  # The ImageNet head reads its window from fc6 the same way.
  imagenet = models.get_model("vgg11", num_classes=3)
  shapes = jax.eval_shape(imagenet.init, jax.random.key(0),
                          jnp.zeros((1, 64, 64, 3)))
  out = jax.eval_shape(lambda v: imagenet.apply(v, image, dense=True), shapes)
  assert out.shape == (1, 2, 3, 3)


# ---------------------------------------------------------------- errors ----

def test_bad_input_is_one_clear_error(trained, vgg, tmp_path):
  workdir, _ = trained
  with pytest.raises(ConfigError, match="holds no config.json"):
    evaluate.evaluate([str(tmp_path)])
  (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
  with pytest.raises(CheckpointError, match="holds no checkpoint"):
    evaluate.evaluate([str(tmp_path)])
  assert not (tmp_path / "checkpoints").exists()
  with pytest.raises(CheckpointError, match="--step=5: .* has no such "
                     "checkpoint .it has 3, 6"):
    evaluate.evaluate([workdir], Options(step=5))
  with pytest.raises(ConfigError, match="--protocol='5crop' is not valid"):
    evaluate.evaluate([workdir], Options(protocol="5crop"))
  with pytest.raises(ConfigError, match="lenet5_modern has no fully "
                     "connected head"):
    evaluate.evaluate([workdir], Options(protocol="dense"))
  with pytest.raises(ConfigError, match="--scales: 16 is smaller than the "
                     "32-pixel"):
    evaluate.evaluate([vgg], Options(protocol="dense", scales=(16, 32)))
  with pytest.raises(ConfigError, match="held in memory"):
    evaluate.evaluate([workdir], Options(protocol="10crop", resize=40))
  other = init_workdir(tiny_config(**{"dataset.synthetic_num_classes": 7}),
                       tmp_path / "seven")
  with pytest.raises(ConfigError, match="trained on 7 classes of synthetic "
                     "but .* on 10"):
    evaluate.evaluate([workdir, other])


# ------------------------------------------------------------- the CLI ----

def cli(*args):
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "PATH": "/usr/bin:/bin"}
  import os
  env = {**os.environ, **env}
  return subprocess.run([sys.executable, "-m", "cnnflax.evaluate", *args],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)


def test_cli_writes_json_and_refuses_in_one_line(trained, tmp_path):
  workdir, results = trained
  proc = cli(f"--workdir={workdir}", f"--ensemble={workdir}",
             "--protocol=10crop")
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = json.loads(proc.stdout.strip().splitlines()[-1])
  assert line["out"] == f"{workdir}/eval_10crop_ensemble.json"
  with open(line["out"]) as f:
    written = json.load(f)
  assert written["top1_acc"] == line["top1_acc"] and written["examples"] == 40
  assert [m["step"] for m in written["members"]] == [6, 6]
  proc = cli(f"--workdir={workdir}", "--protocol=dense")
  assert proc.returncode == 2
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "no fully connected head" in errors[0]
