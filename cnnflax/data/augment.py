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


# --- host side: ImageNet-style crops, decoded from the encoded bytes ------
# Each crop is taken as a box of the stored image and resized to size x size
# in one Pillow call. Before decoding, JPEG's DCT-domain downscaling
# (Image.draft: 1/2, 1/4 or 1/8) shrinks the image as far as the box still
# holds at least size x size pixels, so small crops decode a fraction of it.


def crop_box(rng: np.random.Generator, width: int, height: int,
             area=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, ...]:
  """Inception-style random-resized crop (Szegedy et al. 2015), as
  torchvision draws it: (left, top, width, height) of a box covering a
  uniform share of the area with log-uniform aspect; after 10 misses, the
  central box of the image clamped to the aspect range."""
  for _ in range(10):
    target = rng.uniform(*area) * width * height
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    w = int(round(np.sqrt(target * aspect)))
    h = int(round(np.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return (int(rng.integers(0, width - w + 1)),
              int(rng.integers(0, height - h + 1)), w, h)
  w, h = width, height
  if width / height < ratio[0]:
    h = int(round(width / ratio[0]))
  elif width / height > ratio[1]:
    w = int(round(height * ratio[1]))
  return (width - w) // 2, (height - h) // 2, w, h


def center_box(width: int, height: int, size: int,
               crop_fraction: float = 0.875) -> tuple[float, ...]:
  """The evaluation crop: the central square that, once the short side is
  resized to size / crop_fraction, is size x size (the 0.875 of the
  ResNet and Inception evaluations)."""
  side = min(width, height) * crop_fraction
  return (width - side) / 2, (height - side) / 2, side, side


def decode_crop(data: bytes, size: int, channels: int,
                rng: np.random.Generator | None) -> np.ndarray:
  """Decodes an encoded image into a size x size uint8 crop: a random-resized
  crop when `rng` is given (training), else the centre crop."""
  from PIL import Image  # only streamed datasets need Pillow
  import io
  image = Image.open(io.BytesIO(data))
  width, height = image.size
  box = (crop_box(rng, width, height) if rng is not None
         else center_box(width, height, size))
  scale = size / min(box[2], box[3])
  mode = "L" if channels == 1 else "RGB"
  if scale < 1:
    image.draft(mode, (int(np.ceil(width * scale)),
                       int(np.ceil(height * scale))))
  sx, sy = image.size[0] / width, image.size[1] / height
  if image.mode != mode:  # grey, CMYK, palette: before resizing, which
    image = image.convert(mode)  # would take palette images' nearest
  left, top, w, h = box
  image = image.resize((size, size), Image.BILINEAR,
                       box=(left * sx, top * sy, (left + w) * sx,
                            (top + h) * sy))
  out = np.asarray(image)
  return out[..., None] if channels == 1 else out
