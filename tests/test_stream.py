"""Streamed datasets: prepared TFDS directories (written by tfds itself and
by cnnflax, in array_record and tfrecord), the grain pipeline and its
workers, the crops, and a training run on them."""
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from cnnflax import train
from cnnflax.data import TrainOrder, augment, sources, stream, tfds_files
from cnnflax.errors import DataError

COUNT, CLASSES = 24, 6


def colour(i: int) -> np.ndarray:
  """Example i is one solid colour, so any crop of it shows which it is."""
  return np.array([(37 * i) % 256, (91 * i + 50) % 256, (11 * i + 200) % 256],
                  np.uint8)


def jpeg(i: int) -> bytes:
  size = (40 + (i * 7) % 30, 50 + (i * 5) % 40)  # varying shapes
  image = np.broadcast_to(colour(i), (*size, 3)).copy()
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


def label(i: int) -> int:
  return (i * 5) % CLASSES


@pytest.fixture(scope="module")
def tfds_built(tmp_path_factory):
  """A dataset prepared by tfds's own builder (array_record: writing
  tfrecord needs TensorFlow) and its tfrecord twin: the same serialized
  records in the framing `tfds build` writes by default."""
  tfds = pytest.importorskip("tensorflow_datasets")
  root = tmp_path_factory.mktemp("tfds")

  class Tiny(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, supervised_keys=("image", "label"),
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(None, None, 3),
                                           encoding_format="jpeg"),
              "label": tfds.features.ClassLabel(num_classes=CLASSES)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(range(COUNT)),
              "validation": self._generate_examples(range(COUNT, COUNT + 11))}

    def _generate_examples(self, numbers):
      for i in numbers:  # encoded bytes: no TensorFlow needed to write
        yield i, {"image": io.BytesIO(jpeg(i)), "label": label(i)}

  Tiny(data_dir=str(root / "array_record"),
       file_format="array_record").download_and_prepare()
  source = root / "array_record" / "tiny" / "1.0.0"
  target = root / "tfrecord" / "tiny" / "1.0.0"
  target.mkdir(parents=True)
  info = json.loads((source / "dataset_info.json").read_text())
  info["fileFormat"] = "tfrecord"
  (target / "dataset_info.json").write_text(json.dumps(info))
  shutil.copy(source / "features.json", target)
  for shard in source.glob("tiny-*.array_record-*"):
    records = tfds_files.ArrayRecords([str(shard)])
    tfds_files._write_shard(
        target / shard.name.replace("array_record", "tfrecord"),
        [records[i] for i in range(len(records))], "tfrecord")
  return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # indexes


def order_of_tfds(split) -> list[int]:
  """Which generated example each record is (tfds shuffles on writing)."""
  colours = {tuple(colour(i)): i for i in range(COUNT + 11)}
  out = []
  for k in range(len(split)):
    crop = augment.decode_crop(split[k][0], 8, 3, None)
    out.append(nearest(colours, crop.reshape(-1, 3).mean(0)))
  return out


def nearest(colours: dict, pixel: np.ndarray) -> int:
  keys = np.array(list(colours))
  return list(colours.values())[int(np.argmin(
      np.abs(keys - pixel).sum(1)))]


@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_tfds_prepared_dataset_reads_right_images_and_labels(tfds_built,
                                                             file_format):
  found = tfds_files.find("tiny", str(tfds_built / file_format))
  assert (found.num_classes, found.channels, found.file_format) == (
      CLASSES, 3, file_format)
  split = found.split("train")
  assert len(split) == COUNT
  which = order_of_tfds(split)
  assert sorted(which) == list(range(COUNT))
  for k, i in enumerate(which):
    assert split[k] == (jpeg(i), label(i))


def test_both_formats_hold_the_same_records(tfds_built):
  a = tfds_files.find("tiny", str(tfds_built / "array_record"))
  b = tfds_files.find("tiny", str(tfds_built / "tfrecord"))
  for name in ("train", "validation"):
    x, y = a.split(name), b.split(name)
    assert [x[k] for k in range(len(x))] == [y[k] for k in range(len(y))]


def test_what_cnnflax_writes_tfds_reads(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  tfds_files.write(str(tmp_path), "ours", "2.0.0",
                   {"train": [(jpeg(i), label(i)) for i in range(7)]},
                   CLASSES, "array_record", shards=2)
  source = tfds.data_source("ours", data_dir=str(tmp_path), split="train")
  assert len(source) == 7
  for i in range(7):
    np.testing.assert_array_equal(
        source[i]["image"], np.asarray(Image.open(io.BytesIO(jpeg(i)))))
    assert source[i]["label"] == label(i)


def test_example_codec_round_trips_what_tfds_parses():
  pb = pytest.importorskip(
      "tensorflow_datasets.proto.tf_example_generated_pb2")
  record = tfds_files.serialize_example(
      {"image": b"\x00\xffjpeg", "label": 300, "neg": -2,
       "names": [b"a", b"bc"]})
  example = pb.Example.FromString(record)
  assert example.features.feature["label"].int64_list.value == [300]
  assert example.features.feature["neg"].int64_list.value == [-2]
  assert example.features.feature["names"].bytes_list.value == [b"a", b"bc"]
  assert tfds_files.parse_example(record) == {
      "image": [b"\x00\xffjpeg"], "label": [300], "neg": [-2],
      "names": [b"a", b"bc"]}


# ----------------------------------------------------- the grain pipeline ----

@pytest.fixture(scope="module")
def ours(tmp_path_factory):
  """Examples in written order (label i % CLASSES), in both formats."""
  root = tmp_path_factory.mktemp("ours")
  for file_format in ("array_record", "tfrecord"):
    tfds_files.write(str(root / file_format), "tiny", "1.0.0",
                     {"train": [(jpeg(i), label(i)) for i in range(COUNT)],
                      "validation": [(jpeg(i), label(i))
                                     for i in range(COUNT, COUNT + 11)]},
                     CLASSES, file_format, shards=3)
  return root


def split_of(root, file_format="array_record", name="train"):
  return tfds_files.find("tiny", str(root / file_format)).split(name)


def train_maker(split, rows=slice(None), size=16, batch=8, seed=3):
  return stream.TrainBatch(split, TrainOrder(len(split), batch, seed), rows,
                           size, 3, seed)


def test_train_batches_hold_the_ordered_examples(ours):
  make = train_maker(split_of(ours))
  for step in (0, 2, 4):  # 3 steps an epoch: two epochs
    batch = make(step)
    indices = make.order.indices(step)
    assert batch["image"].shape == (8, 16, 16, 3)
    assert batch["image"].dtype == np.uint8
    np.testing.assert_array_equal(batch["label"],
                                  [label(i) for i in indices])
    # A crop of a solid colour is that colour (JPEG moves it a little).
    want = np.stack([colour(i) for i in indices]).astype(float)
    got = batch["image"].reshape(8, -1, 3).mean(1)
    assert np.abs(got - want).max() < 4


def test_batches_are_equal_for_any_number_of_workers(ours):
  make = train_maker(split_of(ours, "tfrecord"), size=24)
  runs = {w: list(stream.batches(make, 0, 5, w)) for w in (0, 1, 2)}
  assert len(runs[0]) == 5
  for w in (1, 2):
    for a, b in zip(runs[0], runs[w]):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])


def test_resuming_mid_epoch_gives_the_same_batches(ours):
  make = train_maker(split_of(ours), size=24)
  whole = list(stream.batches(make, 0, 6, 0))
  resumed = list(stream.batches(make, 4, 6, 0))  # epoch 1, its 2nd step
  for a, b in zip(whole[4:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_hosts_decode_their_rows_of_the_same_global_batch(ours):
  split = split_of(ours)
  whole = train_maker(split)(1)
  halves = [train_maker(split, rows=slice(0, 4))(1),
            train_maker(split, rows=slice(4, 8))(1)]
  for key in ("image", "label"):
    np.testing.assert_array_equal(
        whole[key], np.concatenate([h[key] for h in halves]))


def test_crops_differ_by_step_and_seed_not_by_anything_else(ours):
  split = split_of(ours)
  a, b = train_maker(split, seed=3)(0), train_maker(split, seed=3)(0)
  np.testing.assert_array_equal(a["image"], b["image"])
  # A checkerboard shows where a crop was taken; solid colours do not.
  board = np.indices((60, 80)).sum(0) % 2 * 255
  image = np.stack([board] * 3, -1).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  crops = [augment.decode_crop(buffer.getvalue(), 16, 3,
                               np.random.default_rng([s, 0, 0]))
           for s in range(4)]
  assert len({c.tobytes() for c in crops}) == 4


def test_evaluation_sees_every_example_once(ours):
  split = split_of(ours, "tfrecord", "validation")  # 11 examples
  seen = []
  for rows in (slice(0, 2), slice(2, 4)):  # two hosts
    make = stream.EvalBatch(split, 4, rows, 16, 3)
    assert len(make) == 3
    for batch in stream.batches(make, 0, len(make), 1):
      colours = batch["image"].reshape(len(batch["mask"]), -1, 3).mean(1)
      seen += [nearest({tuple(colour(i)): i for i in range(COUNT, COUNT + 11)},
                       c) for c, m in zip(colours, batch["mask"]) if m]
  assert sorted(seen) == list(range(COUNT, COUNT + 11))


# ----------------------------------------------------------------- crops ----

def test_draft_decoding_matches_a_full_decode(tmp_path):
  """DCT-domain downscaling (Image.draft) gives nearly what decoding the
  whole image and resizing gives."""
  y, x = np.mgrid[0:375, 0:500]
  image = np.stack([x * 0.5, y * 0.6, (x + y) * 0.29], -1).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=92)
  data = buffer.getvalue()
  got = augment.decode_crop(data, 64, 3, None)  # draft: 1/4 of the pixels
  full = Image.open(io.BytesIO(data)).convert("RGB")
  box = augment.center_box(500, 375, 64)
  want = np.asarray(full.resize((64, 64), Image.BILINEAR, box=(
      box[0], box[1], box[0] + box[2], box[1] + box[3])))
  assert got.shape == (64, 64, 3)
  assert np.abs(got.astype(int) - want).mean() < 2


def test_random_resized_crop_box_follows_area_and_aspect():
  rng = np.random.default_rng(0)
  for _ in range(200):
    x, y, w, h = augment.crop_box(rng, 500, 375)
    assert 0 <= x and x + w <= 500 and 0 <= y and y + h <= 375
    assert 0.08 * 500 * 375 * 0.9 <= w * h <= 500 * 375
    assert 3 / 4 * 0.9 < w / h < 4 / 3 * 1.1
  # A strip too thin for any aspect in range: the clamped central box.
  assert augment.crop_box(rng, 400, 20, area=(0.99, 1.0)) == (186, 0, 27, 20)


def test_scale_and_square_boxes_follow_vgg_and_alexnet():
  rng = np.random.default_rng(1)
  sides = []
  for _ in range(300):
    x, y, w, h = augment.scale_box(rng, 500, 375, 224, (256, 512))
    assert w == h and 0 <= x <= 500 - w and 0 <= y <= 375 - h
    sides.append(w)
    # AlexNet: inside the central 375 x 375 square, 224/256 of its side.
    x, y, w, h = augment.square_box(rng, 500, 375, 224, (256, 256))
    assert w == pytest.approx(375 * 224 / 256)
    assert 62.5 <= x <= 62.5 + 375 - w and 0 <= y <= 375 - h
  # Short side S in [256, 512] -> the crop covers 224/S of it.
  assert min(sides) >= 224 * 375 / 512 - 1e-9
  assert max(sides) <= 224 * 375 / 256 + 1e-9
  assert max(sides) - min(sides) > 100


def test_pca_colour_noise_has_alexnets_covariance():
  rng = np.random.default_rng(2)
  shifts = np.stack([augment.pca_offset(rng, 0.1) for _ in range(20000)])
  vec, val = augment.PCA_EIGVEC, augment.PCA_EIGVAL
  want = vec @ np.diag((0.1 * val * 255) ** 2) @ vec.T
  np.testing.assert_allclose(np.cov(shifts.T), want, rtol=0.05, atol=0.01)
  assert np.abs(shifts.mean(0)).max() < 0.1


def test_colour_noise_leaves_the_crops_and_shifts_on_the_device(ours):
  import jax.numpy as jnp
  split = split_of(ours)
  plain = train_maker(split)(0)
  noisy = stream.TrainBatch(split, TrainOrder(len(split), 8, 3), slice(None),
                            16, 3, 3, pca_noise=0.1)(0)
  np.testing.assert_array_equal(plain["image"], noisy["image"])
  assert noisy["colour_offset"].shape == (8, 3)
  mean, std = np.full(3, 100., np.float32), np.full(3, 50., np.float32)
  got = augment.normalize(jnp.asarray(noisy["image"]), mean, std,
                          offset=jnp.asarray(noisy["colour_offset"]))
  want = (noisy["image"] + noisy["colour_offset"][:, None, None] - mean) / std
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_grey_png_datasets_read_whole(tmp_path):
  """Small TFDS datasets (MNIST's layout: grey PNG) load as arrays."""
  def png(i):
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 5), i * 9, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()

  tfds_files.write(str(tmp_path), "grey", "3.0.1",
                   {"test": [(png(i), i % 3) for i in range(5)]}, 3,
                   "tfrecord", encoding="png", channels=1)
  arrays = sources.read_tfds("grey", str(tmp_path), "test")
  assert arrays.images.shape == (5, 6, 5, 1)
  np.testing.assert_array_equal(arrays.images[:, 0, 0, 0], np.arange(5) * 9)
  np.testing.assert_array_equal(arrays.labels, np.arange(5) % 3)


# ---------------------------------------------------------------- errors ----

def write_tiny(root, **kw):
  kw.setdefault("file_format", "tfrecord")
  return tfds_files.write(str(root), "tiny", kw.pop("version", "1.0.0"),
                          {"train": [(jpeg(i), 0) for i in range(4)]}, 2,
                          shards=2, **kw)


def break_format(folder):
  info = json.loads((folder / "dataset_info.json").read_text())
  info["fileFormat"] = "parquet"
  (folder / "dataset_info.json").write_text(json.dumps(info))


def truncate_shard(folder):
  shard = sorted(folder.glob("tiny-train.tfrecord-*"))[0]
  shard.write_bytes(shard.read_bytes()[:-30])


def drop_shard(folder):
  sorted(folder.glob("tiny-train.tfrecord-*"))[1].unlink()


ERRORS = [
    # (what to do to a good copy, how to read it, words the line must hold)
    (None, ("absent", "", "train"), ["no prepared TFDS dataset", "tfds build"]),
    (None, ("tiny", "9.9.9", "train"),
     ["version 9.9.9 is not prepared", "1.0.0", "config.dataset.version"]),
    (None, ("tiny", "", "validation"), ["no split 'validation'", "train"]),
    (break_format, ("tiny", "", "train"),
     ["stored as parquet", "--file_format=array_record"]),
    (truncate_shard, ("tiny", "", "train"), ["truncated or not a tfrecord"]),
    (drop_shard, ("tiny", "", "train"), ["1 of the 2 train shards"]),
]


@pytest.mark.parametrize("damage,read,words", ERRORS)
def test_bad_prepared_datasets_say_why_in_one_line(tmp_path, damage, read,
                                                   words):
  folder = tmp_path / "tiny" / "1.0.0"
  write_tiny(tmp_path)
  if damage:
    damage(folder)
  name, version, split = read
  with pytest.raises(DataError) as info:
    tfds_files.find(name, str(tmp_path), version).split(split)
  message = str(info.value)
  assert "\n" not in message
  for word in words:
    assert word in message


def test_an_unfinished_preparation_is_not_read(tmp_path):
  write_tiny(tmp_path)
  (tmp_path / "tiny" / "1.0.0" / "dataset_info.json").unlink()
  with pytest.raises(DataError, match="no complete prepared version"):
    tfds_files.find("tiny", str(tmp_path))


def test_newest_version_is_read_unless_one_is_named(tmp_path):
  write_tiny(tmp_path, version="1.0.0")
  write_tiny(tmp_path, version="1.10.0", file_format="array_record")
  assert tfds_files.find("tiny", str(tmp_path)).version == "1.10.0"
  assert tfds_files.find("tiny", str(tmp_path), "1.0.0").version == "1.0.0"


# ----------------------------------------------------------- a whole run ----

def test_training_streams_through_worker_processes(ours, tmp_path):
  config = tiny_config(**{
      "model.name": "lenet5", "dataset.name": "tfds:tiny",
      "dataset.data_dir": str(ours / "tfrecord"), "dataset.augment":
      "imagenet", "dataset.image_size": 32, "dataset.workers": 1,
      # VGG's crops and AlexNet's colour noise (random_resized crops run
      # in the SIGTERM test below)
      "dataset.train_crop": "scale", "dataset.scale_range": (32, 48),
      "dataset.pca_noise": 0.1,
      "batch_size": 8, "eval_batch_size": 8, "num_train_steps": 6})
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["steps"] == 6 and np.isfinite(results["test_loss"])
  assert results["data"][1].endswith("tiny/1.0.0 (validation, tfrecord)")
  metrics = [json.loads(line) for line in
             (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == [2, 4, 6]
  assert all(m["input_wait_s"] >= 0 for m in metrics)
  evals = (tmp_path / "run" / "eval.jsonl").read_text().splitlines()
  assert len(evals) == 2  # steps 3 and 6


def test_sigterm_to_every_process_then_resume_is_exact(ours, tmp_path,
                                                       monkeypatch):
  """A scheduler signals the training process and its grain workers alike;
  the workers leave the stop to it, and the resumed run, mid-epoch, ends as
  the uninterrupted one."""
  import multiprocessing
  import os
  import signal
  import sys
  from cnnflax.errors import Stopped
  from conftest import ROOT
  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  from sweep import run_outputs

  config = tiny_config(**{
      "model.name": "lenet5", "dataset.name": "tfds:tiny",
      "dataset.data_dir": str(ours / "array_record"), "dataset.augment":
      "imagenet", "dataset.image_size": 32, "dataset.workers": 1,
      "batch_size": 8, "eval_batch_size": 8, "num_train_steps": 15,
      "eval_every_steps": 15})  # the stop comes with batches still to make
  whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
  train.train_and_evaluate(config, whole)
  log = train.Loop.log

  def log_then_preempt(self, step):
    log(self, step)
    if step == 2:
      workers = multiprocessing.active_children()
      assert workers  # the grain worker is running
      for process in workers:
        os.kill(process.pid, signal.SIGTERM)
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(train.Loop, "log", log_then_preempt)
  with pytest.raises(Stopped) as info:
    train.train_and_evaluate(config, cut)
  assert info.value.step == 2
  monkeypatch.setattr(train.Loop, "log", log)
  train.train_and_evaluate(config, cut)
  assert run_outputs(whole) == run_outputs(cut)


def test_tfrecord_offsets_are_indexed_once_per_shard_version(tmp_path,
                                                             monkeypatch):
  folder = tmp_path / "data" / "tiny" / "1.0.0"
  write_tiny(tmp_path / "data")
  first = tfds_files.find("tiny", str(tmp_path / "data")).split("train")
  assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2  # two shards
  scans = []
  scan = tfds_files._scan_tfrecord
  monkeypatch.setattr(tfds_files, "_scan_tfrecord",
                      lambda *a: scans.append(a) or scan(*a))
  again = tfds_files.find("tiny", str(tmp_path / "data")).split("train")
  assert scans == [] and again[3] == first[3]
  # A rewritten shard (new size and mtime) is scanned again.
  write_tiny(tmp_path / "data")
  shard = sorted(folder.glob("tiny-train.tfrecord-*"))[0]
  with shard.open("ab") as f:
    f.write(b"")
  import os
  os.utime(shard, (1, 1))
  tfds_files.find("tiny", str(tmp_path / "data")).split("train")
  assert len(scans) == 1
