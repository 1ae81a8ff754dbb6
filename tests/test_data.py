"""Visiting order, padded evaluation, fitting and augmentation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnflax import data
from cnnflax.data import augment
from cnnflax.data.sources import Arrays
from cnnflax.errors import DataError
from tests.conftest import tiny_config


def test_train_order_is_a_fresh_permutation_each_epoch():
  order = data.TrainOrder(num_examples=50, batch_size=8, seed=0)
  assert order.steps_per_epoch == 6  # the last partial batch is dropped
  epoch0 = np.concatenate([order.indices(s) for s in range(6)])
  epoch1 = np.concatenate([order.indices(s) for s in range(6, 12)])
  assert len(set(epoch0)) == 48 and len(set(epoch1)) == 48
  assert not np.array_equal(epoch0, epoch1)
  # A pure function of (seed, step): a new object, visited out of order.
  again = data.TrainOrder(50, 8, seed=0)
  np.testing.assert_array_equal(again.indices(7), order.indices(7))
  assert not np.array_equal(data.TrainOrder(50, 8, 1).indices(0),
                            order.indices(0))


def test_eval_batches_cover_every_example_once():
  seen, weight = [], 0.0
  for idx, mask in data.eval_batches(num_examples=23, batch_size=8):
    assert len(idx) == len(mask) == 8
    seen.extend(idx[mask > 0])
    weight += mask.sum()
  assert sorted(seen) == list(range(23)) and weight == 23


def test_small_images_are_padded_to_the_image_size():
  arrays = Arrays(np.full((2, 28, 28, 1), 9, np.uint8), np.zeros(2, np.int32))
  fitted = data._fit(arrays, 32, "mnist")
  assert fitted.images.shape == (2, 32, 32, 1)
  assert fitted.images[:, 2:30, 2:30].min() == 9
  assert fitted.images[:, :2].max() == 0 and fitted.images[:, :, 30:].max() == 0
  with pytest.raises(DataError, match="image_size=16"):
    data._fit(arrays, 16, "mnist")


def test_pad_crop_flip_moves_and_mirrors_but_keeps_pixels():
  image = jnp.arange(4 * 4 * 3, dtype=jnp.uint8).reshape(4, 4, 3) + 1
  crops = jax.vmap(augment.pad_crop_flip, (0, None, None, None))(
      jax.random.bits(jax.random.key(0), (200, augment.WORDS), jnp.uint32),
      image, 1, True)
  assert all(c.shape == image.shape for c in crops)
  assert any(jnp.array_equal(c, image) for c in crops)
  assert any(jnp.array_equal(c, image[:, ::-1]) for c in crops)
  shifted = [c for c in crops if int((c == 0).sum()) > 0]
  assert shifted  # zero padding came in
  for c in crops:  # every non-zero pixel is one of the image's
    assert set(np.asarray(c[c > 0]).tolist()) <= set(np.asarray(image).ravel().tolist())


def test_unknown_dataset_is_refused():
  for name in ("imagenet22k", "tfds:"):
    with pytest.raises(DataError, match="not a known dataset.*tfds:NAME"):
      data.get_spec(name)
  assert data.get_spec("tfds:food101").tfds_name == "food101"


def test_normalised_device_batch_has_zero_mean_unit_std():
  cfg = tiny_config(**{"dataset.synthetic_train_size": 256}).dataset
  dataset = data.load(cfg)
  fn = data.device_preprocess(dataset, cfg, train=False)
  arrays = data.device_arrays(dataset, cfg, train=True)
  words = jax.random.bits(jax.random.key(0), (256, augment.WORDS), jnp.uint32)
  images, labels = fn(arrays, {"index": np.arange(256)}, words)
  assert images.shape == (256, 32, 32, 1)
  np.testing.assert_allclose(float(images.mean()), 0.0, atol=1e-3)
  np.testing.assert_allclose(float(images.std()), 1.0, atol=1e-3)
  np.testing.assert_array_equal(labels, dataset.train.labels)


def test_host_batches_when_data_stays_on_the_host():
  cfg = tiny_config(**{"dataset.on_device": False}).dataset
  dataset = data.load(cfg)
  batch = data.host_batch(dataset, cfg, True, np.array([3, 1], np.int32))
  np.testing.assert_array_equal(batch["image"], dataset.train.images[[3, 1]])
  assert data.device_arrays(dataset, cfg, True) is None
