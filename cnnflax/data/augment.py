"""Augmentation and normalisation.

Device side (pure jax, per example, keyed by the example's global position so
that the same step sees the same images on any number of devices) and host
side (numpy/PIL, for streamed ImageNet-size images of varying shape).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# ImageNet channel statistics in 0..255 pixel units (the standard values).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array,
              dtype=jnp.float32) -> jax.Array:
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


# Random 32-bit words each example's device augmentation draws: crop row,
# crop column, flip.
WORDS = 3


def pad_crop_flip(words: jax.Array, image: jax.Array, padding: int,
                  flip: bool) -> jax.Array:
  """CIFAR augmentation (He et al. 2016): zero pad, random crop, flip.

  `words` are WORDS uniform uint32s; a modulo of one by 2*padding+1 is
  uniform to within 2**-28.
  """
  h, w, c = image.shape
  if padding:
    image = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    dy, dx = (words[:2] % (2 * padding + 1)).astype(jnp.int32)
    image = jax.lax.dynamic_slice(image, (dy, dx, 0), (h, w, c))
  if flip:
    image = flip_only(words, image)
  return image


def flip_only(words: jax.Array, image: jax.Array) -> jax.Array:
  return jnp.where(words[2] & 1 == 1, image[:, ::-1], image)


def augment_batch(words: jax.Array, images: jax.Array, kind: str,
                  padding: int, flip: bool) -> jax.Array:
  """Applies the named augmentation to a batch of uint8 NHWC images;
  `words` is uint32 [batch, WORDS]."""
  if kind == "cifar":
    return jax.vmap(pad_crop_flip, (0, 0, None, None))(words, images, padding,
                                                        flip)
  if kind == "imagenet" and flip:  # crops were taken on the host
    return jax.vmap(flip_only)(words, images)
  return images


# --- host side: ImageNet-style crops of decoded images of any size ---------


def random_resized_crop(rng: np.random.Generator, image: np.ndarray,
                        size: int, area=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """Inception-style crop (Szegedy et al. 2015): random area and aspect."""
  h, w = image.shape[:2]
  for _ in range(10):
    target = rng.uniform(*area) * h * w
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw = int(round(np.sqrt(target * aspect)))
    ch = int(round(np.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      y = rng.integers(0, h - ch + 1)
      x = rng.integers(0, w - cw + 1)
      return resize(image[y:y + ch, x:x + cw], size, size)
  return center_crop(image, size)


def center_crop(image: np.ndarray, size: int,
                crop_fraction: float = 0.875) -> np.ndarray:
  """Evaluation crop: resize the short side to size/0.875, take the centre."""
  h, w = image.shape[:2]
  scale = size / crop_fraction / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  image = resize(image, nh, nw)
  y, x = (nh - size) // 2, (nw - size) // 2
  return image[y:y + size, x:x + size]


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  from PIL import Image  # only streamed datasets need Pillow
  squeeze = image.ndim == 3 and image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((width, height), Image.BILINEAR))
  return out[..., None] if squeeze else out
