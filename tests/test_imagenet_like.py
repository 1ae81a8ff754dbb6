"""Tests for cnnflax.data.imagenet_like: generated ImageNet-like JPEGs."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cnnflax.data import imagenet_like


@pytest.fixture(scope="module")
def batch() -> list[tuple[bytes, int]]:
  return list(imagenet_like.examples(40, 10, seed=0))


def test_same_seed_same_bytes(batch):
  again = list(imagenet_like.examples(5, 10, seed=0))
  assert again == batch[:5]


def test_other_seed_other_bytes(batch):
  other = list(imagenet_like.examples(5, 10, seed=1))
  assert all(a[0] != b[0] for a, b in zip(other, batch))


def test_decodes_as_rgb_jpeg_of_a_listed_size(batch):
  for data, _ in batch:
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.mode == "RGB"
    assert img.size in imagenet_like.SIZES
    # Baseline with 4:2:0: luma sampled 2x2, chroma 1x1; not progressive.
    assert [layer[1:3] for layer in img.layer] == [(2, 2), (1, 1), (1, 1)]
    assert not img.info.get("progressive")
    assert b"\xff\xc0" in data  # SOF0, the baseline frame marker
    assert np.asarray(img.convert("RGB")).shape == (*img.size[::-1], 3)


def test_jpeg_size_matches_its_drawn_size():
  rng = np.random.default_rng(3)
  want = imagenet_like.image_size(np.random.default_rng(3))
  assert Image.open(io.BytesIO(imagenet_like.jpeg(rng))).size == want


def test_labels_in_range(batch):
  labels = [label for _, label in batch]
  assert all(isinstance(x, int) and 0 <= x < 10 for x in labels)
  assert len(set(labels)) > 3  # not stuck on one class


def test_mean_file_size_is_imagenet_like(batch):
  sizes = np.array([len(data) for data, _ in batch]) / 1000
  assert 80 < sizes.mean() < 140, sizes.mean()
  assert sizes.max() / sizes.min() > 2  # a spread, not one size


def test_image_sizes_mostly_500_on_the_long_side():
  rng = np.random.default_rng(0)
  sizes = [imagenet_like.image_size(rng) for _ in range(1000)]
  assert sum(max(s) == 500 for s in sizes) > 800
  assert sizes.count((500, 375)) > sizes.count((375, 500)) > 50


def test_bad_arguments():
  with pytest.raises(ValueError, match="num_classes"):
    next(imagenet_like.examples(1, 0, seed=0))
