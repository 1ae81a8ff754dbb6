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
              dtype=jnp.float32, offset: jax.Array | None = None) -> jax.Array:
  """(images + offset - mean) / std in float32, then `dtype`; `offset` is
  a per-image RGB shift [batch, C] (AlexNet's PCA colour noise)."""
  images = images.astype(jnp.float32)
  if offset is not None:
    images = images + offset[:, None, None, :]
  return ((images - mean) / std).astype(dtype)


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


def scale_box(rng: np.random.Generator, width: int, height: int, size: int,
              scale_range=(256, 512)) -> tuple[float, ...]:
  """VGG's scale jittering (Simonyan and Zisserman 2015, Sec. 3.1): the
  image isotropically rescaled so that its short side is S, uniform in
  `scale_range`, then a random size x size crop: the box of the stored
  image that becomes that crop."""
  side = size * min(width, height) / rng.integers(scale_range[0],
                                                  scale_range[1] + 1)
  return (rng.uniform(0, width - side), rng.uniform(0, height - side), side,
          side)


def square_box(rng: np.random.Generator, width: int, height: int, size: int,
               scale_range=(256, 256)) -> tuple[float, ...]:
  """AlexNet's crops (Krizhevsky et al. 2012, Sec. 2 and 4.1): the central
  square of the image rescaled to S x S (S = 256 in the paper), then a
  random size x size crop of it."""
  square = min(width, height)
  side = size * square / rng.integers(scale_range[0], scale_range[1] + 1)
  return ((width - square) / 2 + rng.uniform(0, square - side),
          (height - square) / 2 + rng.uniform(0, square - side), side, side)


# AlexNet's "PCA colour augmentation" (Krizhevsky et al. 2012, Sec. 4.1):
# eigenvalues and eigenvectors of the RGB covariance of ImageNet's training
# pixels (0..1 units), the values fb.resnet.torch and most reproductions use.
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]], np.float32)


def pca_offset(rng: np.random.Generator, std: float) -> np.ndarray:
  """The RGB shift, in 0..255 units, added to every pixel of one image:
  sum_i alpha_i lambda_i p_i with alpha_i ~ N(0, std) (the paper: 0.1)."""
  alpha = rng.normal(0.0, std, 3).astype(np.float32)
  return (PCA_EIGVEC @ (alpha * PCA_EIGVAL) * 255).astype(np.float32)


def train_box(kind: str, rng: np.random.Generator, width: int, height: int,
              size: int, scale_range) -> tuple[float, ...]:
  """The training crop `config.dataset.train_crop` names."""
  if kind == "scale":
    return scale_box(rng, width, height, size, scale_range)
  if kind == "square":
    return square_box(rng, width, height, size, scale_range)
  return crop_box(rng, width, height)


def decode_crop(data: bytes, size: int, channels: int,
                rng: np.random.Generator | None, kind: str = "random_resized",
                scale_range=(256, 512)) -> np.ndarray:
  """Decodes an encoded image into a size x size uint8 crop: the training
  crop `kind` drawn from `rng`, or without `rng` the centre crop."""
  from PIL import Image  # only streamed datasets need Pillow
  import io
  image = Image.open(io.BytesIO(data))
  width, height = image.size
  box = (train_box(kind, rng, width, height, size, scale_range)
         if rng is not None else center_box(width, height, size))
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
