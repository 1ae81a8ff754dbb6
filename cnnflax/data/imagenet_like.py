"""Generated JPEGs that cost what ImageNet's cost to decode.

Imitates the ImageNet-1k train files an input pipeline decodes: baseline JPEG,
4:2:0 chroma subsampling, quality 90, about 500x375 pixels (the Flickr
500-pixel long side: landscape, portrait, 3:2 and 5:4, plus a few others),
and, as decode cost follows the number of non-zero DCT coefficients, about
the same file size. Size depends on content (noise makes huge files, flat
colour tiny ones), so the content has natural-image statistics: a 1/f-like
spectrum (random noise summed over octaves, amplitude falling with
frequency), coloured shapes with sharp edges, smooth chroma, and fine texture
whose strength varies across the image and from image to image.

Measured over `examples(500, 1000, seed=0)` (Pillow 13, numpy 2.4, a shared
2-core machine): files 113 KB on average (median 109, 5-95% 65-172, range
28-328 KB); 500x375 39%, 500x333 18%, 375x500 17%, the rest the others in
`SIZES`, 194k pixels on average; 5.5-7 ms to generate an image, 1.3-1.9 ms to
decode one with PIL into a numpy RGB array.

The same seed gives the same bytes with the same numpy, Pillow and libjpeg.
"""
from __future__ import annotations

import io
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["QUALITY", "SIZES", "image_size", "jpeg", "examples"]

QUALITY = 90

# (width, height): share. Most ImageNet files were scaled by Flickr to a
# 500-pixel long side; a few kept other sizes.
SIZES = {
    (500, 375): 0.40, (375, 500): 0.14, (500, 333): 0.16, (333, 500): 0.04,
    (500, 400): 0.06, (500, 500): 0.05, (640, 480): 0.05, (400, 300): 0.05,
    (800, 600): 0.02, (300, 225): 0.03,
}
_DIMS = list(SIZES)
_SHARES = np.array(list(SIZES.values())) / sum(SIZES.values())


def image_size(rng: np.random.Generator) -> tuple[int, int]:
  """A (width, height) drawn from the ImageNet-like mix `SIZES`."""
  return _DIMS[rng.choice(len(_DIMS), p=_SHARES)]


def _noise(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
  """Uniform noise of unit variance: several times cheaper than normal, and size
  follows the variance, not the shape of the distribution."""
  raw = np.frombuffer(rng.bytes(w * h), np.int8).reshape(h, w)
  return raw.astype(np.float32) * np.float32(1 / 73.9)


def _upsample(field: np.ndarray, w: int, h: int) -> np.ndarray:
  """Smooth float resize: a new octave adds detail, not blocks."""
  img = Image.fromarray(field, "F").resize((w, h), Image.Resampling.BILINEAR)
  return np.asarray(img)


def _pyramid(rng: np.random.Generator, w: int, h: int, levels: int,
             amp: float, slope: float) -> np.ndarray:
  """Noise octaves summed at w x h, coarsest first, each upsampled 2x.

  Each octave's amplitude is 2**-slope times the coarser one's: slope 0 puts
  equal energy in every octave, the 1/f amplitude spectrum of natural images;
  a larger slope makes a smoother image.
  """
  sizes = [(max(2, w >> k), max(2, h >> k)) for k in range(levels - 1, -1, -1)]
  field = amp * _noise(rng, *sizes[0])
  for i, (lw, lh) in enumerate(sizes[1:], 1):
    gain = amp * 2.0**(-slope * i)
    field = _upsample(field, lw, lh) + gain * _noise(rng, lw, lh)
  return field


def _shapes(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
  """Offsets (Y, Cb, Cr) of shapes at all scales: the sharp edges of objects.

  Sizes are log-uniform, as many per octave (a dead-leaves-like model, whose
  spectrum is 1/f too). Drawn as offsets, not opaque fills, so texture shows
  through them.
  """
  n = int(rng.integers(15, 60))
  # Every random number at once: per-shape generator calls cost more than
  # the drawing.
  fills = 128 + rng.normal(0, (40, 12, 12), (n, 3)).clip(-90, 90)
  centres = rng.uniform(0, 1, (n, 2)) * (w, h)
  radii = min(w, h) * np.exp(rng.uniform(np.log(0.01), np.log(0.4), n))
  squash = rng.uniform(0.3, 1, n)
  corners = rng.integers(2, 7, n)  # 2: an ellipse
  points = rng.uniform(-1, 1, (n, 6, 2))
  layer = Image.new("RGB", (w, h), (128, 128, 128))
  draw = ImageDraw.Draw(layer)
  for i in range(n):
    (cx, cy), r = centres[i], radii[i]
    fill = tuple(fills[i].astype(int).tolist())
    if corners[i] == 2:
      draw.ellipse((cx - r, cy - r * squash[i], cx + r, cy + r), fill=fill)
    else:
      polygon = points[i, :corners[i]] * r + centres[i]
      draw.polygon([tuple(p) for p in polygon.tolist()], fill=fill)
  return np.asarray(layer, dtype=np.float32) - 128


def _texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
  """Strength of fine texture, varying smoothly: grass next to sky."""
  coarse = rng.normal(0, 0.6, (3, 4)).astype(np.float32)
  return np.exp(_upsample(coarse, w, h))


def _half(rng: np.random.Generator, w: int, h: int, detail: float,
          slope: float) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                 np.ndarray]:
  """Y, Cb, Cr and texture strength at half resolution.

  Y gets every octave but the finest. Chroma is stored at half resolution
  anyway (4:2:0), and is smoother than luma in photos, so it is made from
  coarse octaves only.
  """
  shapes = _shapes(rng, w, h)
  texture = _texture(rng, w, h)
  luma = (110 + rng.normal(0, 20) + shapes[..., 0] +
          _pyramid(rng, w, h, 6, 26, slope) +
          detail * 18 * texture * _noise(rng, w, h))
  cb, cr = (128 + rng.normal(0, 10) + shapes[..., c] +
            _upsample(_pyramid(rng, w // 4, h // 4, 4, 8, 0.5), w, h)
            for c in (1, 2))
  return luma, cb, cr, texture


def _to_image(field: np.ndarray) -> Image.Image:
  return Image.fromarray(field.clip(0, 255).astype(np.uint8), "L")


def _full_luma(rng: np.random.Generator, luma: np.ndarray,
               texture: np.ndarray, detail: float, w: int,
               h: int) -> Image.Image:
  """Y at full resolution: the half-resolution Y plus the finest octave."""
  y = _to_image(luma).resize((w, h), Image.Resampling.BICUBIC)
  # Texture strength in fixed point (x32): a nearest upsample of uint8 is
  # several times cheaper than a float one, and the strength varies slowly.
  grain = _to_image(texture * 32).resize((w, h), Image.Resampling.NEAREST)
  fine = (detail * 0.35) * np.asarray(grain) * _noise(rng, w, h)
  return _to_image(np.asarray(y, np.float32) + fine)


def jpeg(rng: np.random.Generator) -> bytes:
  """One generated RGB JPEG (baseline, 4:2:0, quality `QUALITY`)."""
  w, h = image_size(rng)
  # How busy the image is: spreads file sizes as ImageNet's spread.
  detail = float(np.exp(rng.normal(0.3, 0.6)))
  slope = rng.uniform(0, 0.5)
  luma, cb, cr, texture = _half(rng, (w + 1) // 2, (h + 1) // 2, detail,
                                slope)
  # Chroma nearest-upsampled: the encoder's 4:2:0 averages it back.
  planes = [_full_luma(rng, luma, texture, detail, w, h)] + [
      _to_image(c).resize((w, h), Image.Resampling.NEAREST) for c in (cb, cr)]
  out = io.BytesIO()
  # Given YCbCr, the encoder skips its RGB conversion; the file is the same
  # standard JFIF, decoded as RGB.
  Image.merge("YCbCr", planes).save(out, "JPEG", quality=QUALITY,
                                    subsampling="4:2:0")
  return out.getvalue()


def examples(count: int, num_classes: int,
             seed: int) -> Iterator[tuple[bytes, int]]:
  """`count` (JPEG bytes, label) pairs, the same for the same seed; labels
  are uniform over `num_classes`."""
  if count < 0 or num_classes < 1:
    raise ValueError(f"examples wants count >= 0 and num_classes >= 1, got "
                     f"{count} and {num_classes}")
  rng = np.random.default_rng(seed)
  for _ in range(count):
    label = int(rng.integers(num_classes))
    yield jpeg(rng), label


def write_tfds(data_dir: str, train: int, validation: int,
               file_format: str = "array_record", seed: int = 0,
               images_per_shard: int = 1024) -> str:
  """Writes generated images as a prepared TFDS `imagenet2012` (1000
  classes, train and validation splits) in `data_dir`; returns `data_dir`.
  Read with --config.dataset.data_dir=data_dir."""
  from cnnflax.data import tfds_files
  tfds_files.write(data_dir, "imagenet2012", "5.1.0",
                   {"train": examples(train, 1000, seed),
                    "validation": examples(validation, 1000, seed + 1)},
                   1000, file_format, per_shard=images_per_shard)
  return data_dir


def main(argv) -> None:
  del argv
  from absl import flags
  f = flags.FLAGS
  write_tfds(f.out, f.train, f.validation, f.file_format, f.seed)
  print(f"wrote imagenet2012 to {f.out}: {f.train} train and {f.validation} "
        f"validation images ({f.file_format})")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("out", None, "The TFDS data_dir to write into.")
  flags.DEFINE_integer("train", 10_000, "Training images.")
  flags.DEFINE_integer("validation", 1_000, "Validation images.")
  flags.DEFINE_enum("file_format", "array_record", ["array_record", "tfrecord"],
                    "TFDS file format.")
  flags.DEFINE_integer("seed", 0, "Seed of the generated images.")
  flags.mark_flags_as_required(["out"])
  app.run(main)
