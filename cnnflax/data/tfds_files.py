"""Prepared TFDS datasets, read and written without TensorFlow or tfds.

A prepared TFDS dataset is a folder `DATA_DIR/NAME[/CONFIG]/VERSION/` with
`dataset_info.json` (splits, shard lengths, file format), `features.json`
and the shards `NAME-SPLIT.FORMAT-0000i-of-0000n`, each record a serialized
`tf.train.Example`. This module reads both formats `tfds build` writes:

  * array_record (random access built in), through the array_record package;
  * tfrecord (`tfds build`'s default), by indexing each shard's record
    offsets once (cached in paths.cache_dir('tfrecord_index')) and then
    reading records by offset.

It parses `tf.train.Example` with a small protobuf decoder of its own, so
worker processes import neither TensorFlow nor tfds. The writer produces the
same layout (tests and the generated benchmark dataset use it); tests check
that tfds itself reads what it writes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import struct
from typing import Iterable

import numpy as np
from etils import epath

from cnnflax import paths
from cnnflax.errors import DataError

FORMATS = ("array_record", "tfrecord")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
      "~/tensorflow_datasets")


# ------------------------------------------------------------- locating ----

@dataclasses.dataclass(frozen=True)
class Prepared:
  """One prepared version of a dataset: what its two JSON files say."""
  name: str
  folder: str
  version: str
  file_format: str
  splits: dict  # split name -> (filepath template, shard lengths)
  image_key: str
  label_key: str
  num_classes: int
  channels: int

  def split(self, split: str) -> "Split":
    if split not in self.splits:
      raise DataError(
          f"{self.name} {self.version}: no split {split!r} in {self.folder} "
          f"(it has {', '.join(sorted(self.splits))}); prepare that split or "
          f"choose another")
    template, lengths = self.splits[split]
    files = [str(paths.path(self.folder) / _shard_name(
        template, self.name, split, self.file_format, i, len(lengths)))
             for i in range(len(lengths))]
    missing = [f for f in files if not paths.path(f).exists()]
    if missing:
      raise DataError(
          f"{self.name} {self.version}: {len(missing)} of the {len(files)} "
          f"{split} shards are missing, e.g. {missing[0]}; the copy is "
          f"incomplete: copy or prepare it again")
    if self.file_format == "array_record":
      records = ArrayRecords(files)
    else:
      records = TFRecords(files)
    if len(records) != sum(lengths):
      raise DataError(
          f"{self.name} {self.version}: the {split} shards hold {len(records)} "
          f"records but dataset_info.json says {sum(lengths)}; the copy is "
          f"incomplete or corrupt: copy or prepare it again")
    return Split(records, self.image_key, self.label_key,
                 f"{self.folder} ({split}, {self.file_format})")


def find(name: str, data_dir: str | None, version: str = "") -> Prepared:
  """The prepared dataset `name` ("name" or "name/config") in `data_dir`;
  the newest complete version unless `version` is given."""
  data_dir = data_dir or default_data_dir()
  root = paths.path(data_dir) / name
  build = (f"prepare it with `tfds build {name.split('/')[0]} "
           f"--data_dir={data_dir}` and set --config.dataset.data_dir to it")
  if not root.is_dir():
    raise DataError(f"{name}: no prepared TFDS dataset in {data_dir} (no "
                    f"folder {root}); {build}")
  versions = sorted((p.name for p in root.iterdir()
                     if _VERSION.match(p.name)
                     and (p / "dataset_info.json").exists()),
                    key=lambda v: tuple(map(int, v.split("."))))
  if not versions:
    raise DataError(f"{name}: {root} holds no complete prepared version "
                    f"(only unfinished or foreign folders); {build}")
  if version and version not in versions:
    raise DataError(
        f"{name}: version {version} is not prepared in {root} (it holds "
        f"{', '.join(versions)}); set --config.dataset.version to one of "
        f"them, or prepare {version}")
  return _read_prepared(name, root / (version or versions[-1]))


def _read_prepared(name: str, folder: epath.Path) -> Prepared:
  info = _read_json(folder / "dataset_info.json")
  features = _read_json(folder / "features.json")
  file_format = info.get("fileFormat", "tfrecord")  # tfds's own default
  if file_format not in FORMATS:
    raise DataError(
        f"{name}: {folder} is stored as {file_format}, which cnnflax cannot "
        f"read; prepare it again with `tfds build --file_format="
        f"array_record`")
  splits = {s["name"]: (s.get("filepathTemplate", _TEMPLATE),
                        [int(n) for n in s.get("shardLengths", [])])
            for s in info.get("splits", [])}
  image_key, label_key = _supervised_keys(info, features, name, folder)
  return Prepared(name.split("/")[0], str(folder), folder.name, file_format,
                  splits, image_key, label_key,
                  _num_classes(features, label_key, name, folder),
                  _channels(features, image_key))


def _read_json(path: epath.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise DataError(f"{path} is missing; the prepared dataset is incomplete: "
                    "copy or prepare it again") from None
  except ValueError as e:
    raise DataError(f"{path} is not valid JSON ({e}); copy or prepare the "
                    "dataset again") from None


def _features(features: dict) -> dict:
  return features.get("featuresDict", {}).get("features", {})


def _supervised_keys(info: dict, features: dict, name: str,
                     folder) -> tuple[str, str]:
  items = info.get("supervisedKeys", {}).get("tuple", {}).get("items", [])
  keys = [i.get("featureKey") for i in items]
  if len(keys) == 2 and all(keys):
    return keys[0], keys[1]
  found = _features(features)
  if "image" in found and "label" in found:
    return "image", "label"
  raise DataError(f"{name}: {folder} is not an image classification dataset "
                  f"(no supervised keys; features {sorted(found)})")


def _num_classes(features: dict, label_key: str, name: str, folder) -> int:
  label = _features(features).get(label_key, {})
  if "classLabel" not in label:
    raise DataError(f"{name}: feature {label_key!r} in {folder} is not a "
                    "class label; cnnflax trains classifiers only")
  return int(label["classLabel"]["numClasses"])


def _channels(features: dict, image_key: str) -> int:
  dims = (_features(features).get(image_key, {}).get("image", {})
          .get("shape", {}).get("dimensions", ["-1", "-1", "3"]))
  return int(dims[-1]) if int(dims[-1]) > 0 else 3


_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def _shard_name(template: str, dataset: str, split: str, file_format: str,
                index: int, count: int) -> str:
  return (template.replace("{DATASET}", dataset).replace("{SPLIT}", split)
          .replace("{FILEFORMAT}", file_format)
          .replace("{SHARD_X_OF_Y}", f"{index:05d}-of-{count:05d}")
          .replace("{SHARD_INDEX}", f"{index:05d}")
          .replace("{NUM_SHARDS}", f"{count:05d}"))


# ---------------------------------------------------------- the records ----

class Split:
  """One split: records by index, parsed into (encoded image, label)."""

  def __init__(self, records, image_key: str, label_key: str,
               where: str = ""):
    self.records, self.image_key, self.label_key = records, image_key, label_key
    self.where = where  # for logs and results.json: folder, split, format

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> tuple[bytes, int]:
    example = parse_example(self.records[int(index)])
    try:
      return example[self.image_key][0], int(example[self.label_key][0])
    except (KeyError, IndexError):
      raise DataError(
          f"record {index} lacks {self.image_key!r} or {self.label_key!r} "
          f"(it has {sorted(example)}); the dataset's features.json does "
          "not describe its records") from None


class ArrayRecords:
  """array_record shards; picklable, opened lazily in each process."""

  def __init__(self, files: list[str]):
    try:
      from array_record.python import array_record_data_source
    except ImportError:
      raise DataError(f"{files[0]} is an array_record file, and reading it "
                      "needs the array_record package: pip install "
                      "'cnnflax[imagenet]' (or -e '.[imagenet]')") from None
    self._source = array_record_data_source.ArrayRecordDataSource(files)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> bytes:
    return self._source[index]


class TFRecords:
  """tfrecord shards read by offset. The offsets come from one scan of the
  record headers per shard, cached by the shard's path, size and mtime."""

  def __init__(self, files: list[str]):
    self.files = files
    tables = [_tfrecord_offsets(f) for f in files]
    self.file_of = np.concatenate(
        [np.full(len(t), i, np.int32) for i, t in enumerate(tables)])
    self.offsets = np.concatenate([t[:, 0] for t in tables])
    self.lengths = np.concatenate([t[:, 1] for t in tables])
    self._handles: dict[int, object] = {}

  def __len__(self) -> int:
    return len(self.offsets)

  def __getitem__(self, index: int) -> bytes:
    file = int(self.file_of[index])
    handle = self._handles.get(file)
    if handle is None:
      handle = self._handles[file] = paths.path(self.files[file]).open("rb")
    handle.seek(int(self.offsets[index]))
    return handle.read(int(self.lengths[index]))

  def __getstate__(self):  # open files stay in the process that opened them
    return {**self.__dict__, "_handles": {}}


def _tfrecord_offsets(file: str) -> np.ndarray:
  """[records, 2] int64: (data offset, data length) of each record."""
  path = paths.path(file)
  stat = path.stat()
  key = hashlib.sha256(f"{path}|{stat.length}|{stat.mtime}".encode())
  cache = (paths.path(paths.cache_dir("tfrecord_index"))
           / f"{key.hexdigest()[:32]}.npy")
  try:
    with cache.open("rb") as f:
      return np.load(f)
  except (OSError, ValueError):
    pass
  table = _scan_tfrecord(path, stat.length)
  try:
    paths.makedirs(cache.parent)
    paths.write_atomic(cache, _npy_bytes(table))
  except OSError:  # a read-only home still trains, just indexes again
    pass
  return table


def _npy_bytes(array: np.ndarray) -> bytes:
  import io
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


def _scan_tfrecord(path: epath.Path, size: int) -> np.ndarray:
  rows = []
  with path.open("rb") as f:
    position = 0
    while position < size:
      header = f.read(12)
      if len(header) < 12:
        raise _not_tfrecord(path, position, "ends inside a record header")
      (length,) = struct.unpack("<Q", header[:8])
      if struct.unpack("<I", header[8:])[0] != _masked_crc(header[:8]):
        raise _not_tfrecord(path, position, "has a record header whose "
                            "checksum does not match")
      rows.append((position + 12, length))
      position += 12 + length + 4
      if position > size:
        raise _not_tfrecord(path, position, "ends inside a record")
      f.seek(position)
  return np.asarray(rows, np.int64).reshape(-1, 2)


def _not_tfrecord(path, position: int, what: str) -> DataError:
  return DataError(f"{path} {what} at byte {position}: it is truncated or "
                   "not a tfrecord file; copy or prepare the dataset again")


def _masked_crc(data: bytes) -> int:
  import google_crc32c
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ----------------------------------------------------- tf.train.Example ----
# Example{1: Features{1: map<string, Feature>}}; Feature is one of
# 1: BytesList{1: repeated bytes}, 2: FloatList{1: repeated float},
# 3: Int64List{1: repeated int64}.

def _varint(data: bytes, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    byte = data[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    if byte < 0x80:
      return result, pos
    shift += 7


def _fields(data: bytes):
  """(field number, wire type, value) of a message; LEN values as bytes."""
  pos, end = 0, len(data)
  while pos < end:
    key, pos = _varint(data, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _varint(data, pos)
    elif wire == 2:
      length, pos = _varint(data, pos)
      value, pos = data[pos:pos + length], pos + length
    elif wire == 5:
      value, pos = data[pos:pos + 4], pos + 4
    elif wire == 1:
      value, pos = data[pos:pos + 8], pos + 8
    else:
      raise DataError(f"a record is not a tf.train.Example (wire type {wire})")
    yield number, wire, value


def _signed(value: int) -> int:
  return value - (1 << 64) if value >= 1 << 63 else value


def _feature_values(feature: bytes) -> list:
  values = []
  for kind, _, body in _fields(feature):
    for _, wire, item in _fields(body):
      if kind == 1:
        values.append(bytes(item))
      elif kind == 2:
        values.extend(np.frombuffer(item, "<f4").tolist())
      elif wire == 0:
        values.append(_signed(item))
      else:  # packed int64s
        pos = 0
        while pos < len(item):
          value, pos = _varint(item, pos)
          values.append(_signed(value))
  return values


def parse_example(record: bytes) -> dict[str, list]:
  """A serialized tf.train.Example as {key: list of bytes/float/int}."""
  out = {}
  for _, _, features in _fields(memoryview(record)):
    for _, _, entry in _fields(features):
      key, value = b"", b""
      for number, _, part in _fields(entry):
        if number == 1:
          key = bytes(part)
        else:
          value = part
      out[key.decode()] = _feature_values(value)
  return out


def _tag(number: int, wire: int) -> bytes:
  return _varint_bytes(number << 3 | wire)


def _varint_bytes(value: int) -> bytes:
  value &= (1 << 64) - 1
  out = bytearray()
  while value >= 0x80:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _length_delimited(number: int, body: bytes) -> bytes:
  return _tag(number, 2) + _varint_bytes(len(body)) + body


def serialize_example(features: dict[str, bytes | int | list]) -> bytes:
  """{key: bytes, int, or a list of one kind} as a tf.train.Example."""
  entries = b""
  for key in sorted(features):
    values = features[key]
    values = values if isinstance(values, list) else [values]
    if all(isinstance(v, bytes) for v in values):
      body = _length_delimited(1, b"".join(_length_delimited(1, v)
                                           for v in values))
    else:
      packed = b"".join(_varint_bytes(int(v)) for v in values)
      body = _length_delimited(3, _length_delimited(1, packed))
    entries += _length_delimited(1, _length_delimited(1, key.encode())
                                 + _length_delimited(2, body))
  return _length_delimited(1, entries)


# --------------------------------------------------------------- writing ----

def write(data_dir: str, name: str, version: str,
          splits: dict[str, Iterable[tuple[bytes, int]]], num_classes: int,
          file_format: str = "array_record", shards: int = 1,
          encoding: str = "jpeg", channels: int = 3,
          per_shard: int | None = None) -> str:
  """Writes (encoded image, label) pairs as a prepared TFDS dataset with
  `image`, `label` and `file_name` features, the layout `tfds build` makes;
  returns the version folder. Each split goes into `shards` equal shards,
  or, with `per_shard`, is streamed into shards of that many records."""
  if file_format not in FORMATS:
    raise ValueError(f"file_format={file_format!r}; choose one of {FORMATS}")
  folder = paths.path(data_dir) / name / version
  paths.makedirs(folder)
  infos = []
  for split, examples in splits.items():
    records = (serialize_example({"image": image, "label": int(label),
                                  "file_name": f"{split}_{i:08d}".encode()})
               for i, (image, label) in enumerate(examples))
    lengths, sizes = [], []
    for i, chunk in enumerate(_chunks(records, shards, per_shard)):
      _write_shard(folder / f".{split}-{i:05d}.part", chunk, file_format)
      lengths.append(len(chunk))
      sizes.append(sum(map(len, chunk)))
    for i in range(len(lengths)):  # the count is known only now
      os.replace(folder / f".{split}-{i:05d}.part", folder / _shard_name(
          _TEMPLATE, name, split, file_format, i, len(lengths)))
    infos.append({"filepathTemplate": _TEMPLATE, "name": split,
                  "numBytes": str(sum(sizes)),
                  "shardLengths": [str(n) for n in lengths]})
  info = {"fileFormat": file_format, "moduleName": "cnnflax.data.tfds_files",
          "name": name, "splits": infos, "version": version,
          "supervisedKeys": {"tuple": {"items": [{"featureKey": "image"},
                                                 {"featureKey": "label"}]}}}
  paths.write_atomic(folder / "features.json",
                     json.dumps(_features_json(num_classes, encoding,
                                               channels), indent=2))
  # Last: a folder without it is an unfinished one and is not read.
  paths.write_atomic(folder / "dataset_info.json", json.dumps(info, indent=2))
  return str(folder)


def _chunks(records: Iterable[bytes], shards: int, per_shard: int | None):
  if per_shard:
    chunk = []
    for record in records:
      chunk.append(record)
      if len(chunk) == per_shard:
        yield chunk
        chunk = []
    if chunk:
      yield chunk
    return
  records = list(records)
  bounds = np.linspace(0, len(records), shards + 1).astype(int)
  for a, b in zip(bounds[:-1], bounds[1:]):
    yield records[a:b]


def _features_json(num_classes: int, encoding: str, channels: int) -> dict:
  prefix = "tensorflow_datasets.core.features."
  return {"pythonClassName": prefix + "features_dict.FeaturesDict",
          "featuresDict": {"features": {
              "image": {"pythonClassName": prefix + "image_feature.Image",
                        "image": {"shape": {"dimensions": ["-1", "-1",
                                                           str(channels)]},
                                  "dtype": "uint8",
                                  "encodingFormat": encoding}},
              "label": {"pythonClassName":
                        prefix + "class_label_feature.ClassLabel",
                        "classLabel": {"numClasses": str(num_classes)}},
              "file_name": {"pythonClassName": prefix + "text_feature.Text",
                            "text": {}}}}}


def _write_shard(path: epath.Path, records: list[bytes],
                 file_format: str) -> None:
  if file_format == "array_record":
    from array_record.python import array_record_module
    # group_size:1, as tfds writes it: each record readable on its own.
    writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
    for record in records:
      writer.write(record)
    writer.close()
    return
  with path.open("wb") as f:
    for record in records:
      length = struct.pack("<Q", len(record))
      f.write(length + struct.pack("<I", _masked_crc(length)) + record
              + struct.pack("<I", _masked_crc(record)))
