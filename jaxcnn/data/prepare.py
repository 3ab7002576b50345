"""Getting a TensorFlow Datasets dataset onto disk as ArrayRecord, without TensorFlow.

    python -m jaxcnn.data.prepare cifar10 [--data_dir DIR] [--manual_dir DIR]
    python -m jaxcnn.data.prepare voc0712_det     # a joined dataset: each tfds dataset it reads

tfds 4.9.10 downloads with `requests` and writes ArrayRecord without
TensorFlow, but four steps on the way still call TensorFlow: the archive
extractor (`tf.compat.as_text`, `tf.io.gfile.GFile`), the builders' raw-file
readers (cifar, mnist and svhn open files with `tf.io.gfile.GFile`; oxford_iiit_pet
decodes and re-encodes a few corrupt JPEGs with `tf.image.decode_image` and
`tf.io.encode_jpeg`), the downloader's non-HTTP copy (`tf.io.gfile.copy`), and
the Image feature, which encodes numpy images to PNG with `tf.image.encode_png`; coco's feature spec also
names `tf.int64`, so even constructing its builder to read it needs a stand-in. When TensorFlow is not
installed, `without_tensorflow` stands in for exactly these calls (files through
etils.epath, PNG/JPEG through PIL, lossless for PNG) while a dataset is being
prepared, and puts everything back afterwards. With TensorFlow installed, tfds
runs unchanged.

tfds retries an unreachable download host for minutes, so before downloading we
check that every host answers a TCP connection within a few seconds and fail
with a UserError that says what to do otherwise.
"""
import argparse
import contextlib
import importlib.util
import io
import os
import socket
import sys
import threading
import time
import types
import urllib.parse
from typing import Iterable, List, Optional

import numpy as np

from jaxcnn.errors import UserError

REACH_TIMEOUT_S = 3.0
_DEFAULT_PORTS = {"https": 443, "http": 80, "ftp": 21}


# --------------------------------------------------------------------------- reading


def tfds_data_source(info, split: str, *, data_dir: Optional[str], download: bool,
                     manual_dir: Optional[str]):
  """`tfds.data_source` of a prepared dataset, preparing it first when allowed and possible."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with builder_code_without_tensorflow(info.tfds_name):
    try:
      return tfds.data_source(info.tfds_name, split=split, data_dir=data_dir, download=False)
    except Exception as err:  # pylint: disable=broad-except  (tfds signals "not prepared" in several ways)
      first_error = err
    builder = tfds.builder(info.tfds_name, data_dir=data_dir)
    if builder.is_prepared():
      _explain_prepared_failure(info, split, builder, first_error)
    _prepare_if_possible(info, builder, download=download, manual_dir=manual_dir)
    return tfds.data_source(info.tfds_name, split=split, data_dir=data_dir, download=False)


def _prepare_if_possible(info, builder, *, download: bool, manual_dir: Optional[str]) -> None:
  """Prepares an unprepared builder from manual_dir or the network, or raises the UserError saying why not."""
  root = str(builder.data_dir_root)
  have_archives = bool(manual_dir) and not _missing_archives(builder, manual_dir)
  if not (download or have_archives):
    raise _not_prepared(info, builder, root, "data.download is False", download)
  if not have_archives:
    unreachable = unreachable_hosts(_download_urls(builder))
    if unreachable:
      raise _not_prepared(info, builder, root, f"no connection to {', '.join(unreachable)} "
                                                f"within {REACH_TIMEOUT_S:g} s", download)
  prepare_builder(builder, manual_dir=manual_dir)


def _explain_prepared_failure(info, split, builder, error):
  """The dataset is on disk but could not be opened: wrong file format, bad split, or a real bug."""
  from tensorflow_datasets.core import file_adapters  # pylint: disable=g-import-not-at-top
  fmt = builder.info.file_format
  if fmt not in (file_adapters.FileFormat.ARRAY_RECORD, file_adapters.FileFormat.PARQUET):
    raise UserError(
        f"dataset '{info.name}' is prepared under {builder.data_dir} as {getattr(fmt, 'value', fmt)}, which has no "
        f"random access; prepare it again as ArrayRecord into another data_dir (python -m jaxcnn.data.prepare "
        f"{info.name} --data_dir=DIR) or delete that folder") from None
  if isinstance(error, (ValueError, KeyError)):
    raise UserError(f"cannot read split '{split}' of dataset '{info.name}': {error}") from None
  raise error


def _not_prepared(info, builder, root: str, reason: str, download: bool) -> UserError:
  from jaxcnn.data.sources import embedded_names  # pylint: disable=g-import-not-at-top
  archives = ", ".join(_archive_names(builder)) or "its downloaded files"
  return UserError(
      f"dataset '{info.name}' is not prepared under {root} and cannot be downloaded ({reason}); "
      f"prepare it on a machine with internet with `python -m jaxcnn.data.prepare {info.name} --data_dir={root}` "
      f"(or, with TensorFlow installed, `tfds build {info.tfds_name} --file_format=array_record --data_dir={root}`), "
      f"or put {archives} in a folder and set data.manual_dir to it; "
      f"or {'run where the download host is reachable' if download else 'set data.download=True'}; "
      f"embedded datasets that need nothing: {', '.join(embedded_names())}")


# --------------------------------------------------------------------------- download checks


def _download_urls(builder) -> List[str]:
  urls = list((builder.url_infos or {}).keys())
  return urls or [builder.info.homepage]


def _archive_names(builder) -> List[str]:
  return sorted({i.filename for i in (builder.url_infos or {}).values() if i.filename})


def _missing_archives(builder, manual_dir: str) -> List[str]:
  names = _archive_names(builder)
  if not names:
    return ["(unknown file names)"]
  return [n for n in names if not os.path.exists(os.path.join(manual_dir, n))]


def _connect_target(url: str):
  """(host, port) a download of `url` opens first: the proxy if one is configured for its scheme."""
  parsed = urllib.parse.urlparse(url)
  proxy = os.environ.get(f"{parsed.scheme}_proxy") or os.environ.get(f"{parsed.scheme.upper()}_PROXY")
  if proxy:
    parsed = urllib.parse.urlparse(proxy if "://" in proxy else "http://" + proxy)
  return parsed.hostname, parsed.port or _DEFAULT_PORTS.get(parsed.scheme, 443)


def unreachable_hosts(urls: Iterable[str], timeout: float = REACH_TIMEOUT_S) -> List[str]:
  """'host:port' of every download host that does not accept a TCP connection within `timeout`.

  The probes run in daemon threads with one overall deadline, so a resolver or
  a firewall that never answers costs `timeout` seconds, not minutes.
  """
  targets = sorted({_connect_target(u) for u in urls if u})
  answered = {}

  def probe(target):
    try:
      with socket.create_connection(target, timeout=timeout):
        answered[target] = True
    except (OSError, ValueError):
      answered[target] = False

  threads = [threading.Thread(target=probe, args=(t,), daemon=True) for t in targets]
  for thread in threads:
    thread.start()
  deadline = time.monotonic() + timeout + 0.2
  for thread in threads:
    thread.join(max(0.0, deadline - time.monotonic()))
  return [f"{host}:{port}" for host, port in targets if not answered.get((host, port))]


# --------------------------------------------------------------------------- preparing


def prepare_builder(builder, manual_dir: Optional[str] = None) -> None:
  """`builder.download_and_prepare` as ArrayRecord, TensorFlow or not."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  with without_tensorflow(builder):
    builder.download_and_prepare(file_format="array_record", download_config=config)


def prepare(name: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None):
  """Downloads (or takes from `manual_dir`) and prepares a tfds dataset of ours; returns its builder."""
  from jaxcnn.data.sources import dataset_info  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  info = dataset_info(name)
  if info.embedded:
    raise UserError(f"dataset '{name}' is embedded and needs no preparation")
  if not info.tfds_name:
    raise UserError(f"dataset '{name}' is not a tfds dataset; prepare "
                    f"{' and '.join(joined_tfds_names(name)) or 'the files its module names'} instead")
  with builder_code_without_tensorflow(info.tfds_name):
    builder = tfds.builder(info.tfds_name, data_dir=data_dir or None)
    if not builder.is_prepared():
      _prepare_if_possible(info, builder, download=True, manual_dir=manual_dir)
  return builder


def joined_tfds_names(name: str) -> List[str]:
  """The tfds datasets of ours that a joined dataset (`sources.register_joined`) reads, in order."""
  from jaxcnn.data.sources import dataset_info, joined_parts  # pylint: disable=g-import-not-at-top
  names = []
  for parts in joined_parts(name).values():
    for part, _ in parts:
      if dataset_info(part).tfds_name and part not in names:
        names.append(part)
  return names


class _StandIn(types.SimpleNamespace):
  """A namespace with only the given attributes; anything else says that TensorFlow is needed."""

  def __init__(self, path: str, **attrs):
    super().__init__(**attrs)
    object.__setattr__(self, "_path", path)

  def __getattr__(self, name):
    raise ModuleNotFoundError(
        f"preparing this dataset calls {self._path}.{name}, which needs TensorFlow "
        f"(pip install tensorflow-cpu)")


class _NeverRaised(Exception):
  """Stands in for tf.errors.* in `except` clauses: TensorFlow is absent, so it cannot be raised."""


def _as_text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _gfile_open(path, mode="r"):
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path).open(mode)


def _gfile_copy(src, dst, overwrite=False):
  from etils import epath  # pylint: disable=g-import-not-at-top
  epath.Path(src).copy(epath.Path(dst), overwrite=overwrite)


class _EncodedBytes(bytes):
  """Bytes with the `.numpy()` of the eager tensor TensorFlow's encoders return."""

  def numpy(self) -> bytes:
    return bytes(self)


def _decode_image(contents, channels=None, **unused):
  """tf.image.decode_image through PIL: uint8 [H, W, C] with the file's own channels (RGBA keeps alpha)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if channels:
    raise ModuleNotFoundError("decoding an image to a chosen channel count needs TensorFlow (pip install "
                              "tensorflow-cpu)")
  with Image.open(io.BytesIO(bytes(contents))) as im:
    array = np.asarray(im)
  return array[..., None] if array.ndim == 2 else array


def _encode_jpeg(image, quality=95, **unused):
  """tf.io.encode_jpeg (default quality 95) through PIL, for uint8 [H, W, 1 or 3] arrays."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image, np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="JPEG", quality=quality)
  return _EncodedBytes(buffer.getvalue())


TF_STAND_IN = _StandIn(
    "tf",
    io=_StandIn("tf.io", gfile=_StandIn("tf.io.gfile", GFile=_gfile_open, copy=_gfile_copy),
                encode_jpeg=_encode_jpeg),
    image=_StandIn("tf.image", decode_image=_decode_image),   # oxford_iiit_pet re-encodes a few corrupt JPEGs
    shape=np.shape,
    int64=np.int64,          # coco's feature spec names tf.int64 (needed to construct the builder at all)
    compat=_StandIn("tf.compat", as_text=_as_text),
    errors=_StandIn("tf.errors", UnimplementedError=_NeverRaised),
)


def _encode_image_with_pil(encoder, np_image: np.ndarray) -> bytes:
  """tfds `_ImageEncoder._encode_image` through PIL instead of tf.image.encode_{png,jpeg}."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if np_image.dtype != np.uint8 or np_image.ndim != 3:
    raise ModuleNotFoundError(f"encoding a {np_image.dtype} image of shape {np_image.shape} needs TensorFlow "
                              f"(pip install tensorflow-cpu)")
  planes = np_image[..., 0] if np_image.shape[-1] == 1 else np_image
  buffer = io.BytesIO()
  if encoder.encoding_format == "jpeg":
    Image.fromarray(planes).save(buffer, format="JPEG", quality=95)   # tf.image.encode_jpeg's default
  else:
    Image.fromarray(planes).save(buffer, format="PNG")
  return buffer.getvalue()


@contextlib.contextmanager
def _replaced(obj, name: str, value):
  old = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, old)


def tensorflow_installed() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


@contextlib.contextmanager
def builder_code_without_tensorflow(tfds_name: str):
  """While the builder of `tfds_name` ('coco/2017') is constructed and read: its module's `tf` served by
  TF_STAND_IN when TensorFlow is absent (coco's feature spec names tf.int64); tfds core keeps failing loudly."""
  if tensorflow_installed():
    yield
    return
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.utils import lazy_imports_utils  # pylint: disable=g-import-not-at-top
  try:   # the builder's module and its base classes' (coco_captions builds on coco's feature spec)
    modules = {sys.modules[c.__module__] for c in tfds.builder_cls(tfds_name.split("/")[0].split(":")[0]).__mro__}
  except Exception:  # pylint: disable=broad-except  (an unknown name: tfds.data_source says so itself)
    modules = set()
  with contextlib.ExitStack() as stack:
    for module in modules:
      if getattr(module, "tf", None) is lazy_imports_utils.tensorflow:
        stack.enter_context(_replaced(module, "tf", TF_STAND_IN))
    yield


@contextlib.contextmanager
def without_tensorflow(builder):
  """While preparing `builder`: the TF calls tfds makes are served without TF (no-op when TF is installed)."""
  if tensorflow_installed():
    yield
    return
  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import downloader, extractor
  from tensorflow_datasets.core.features import image_feature
  from tensorflow_datasets.core.utils import lazy_imports_utils
  # pylint: enable=g-import-not-at-top
  lazy_tf = lazy_imports_utils.tensorflow
  modules = {downloader, extractor}
  # The builder's own modules (not tfds core, whose other TF uses must keep failing loudly).
  modules.update(sys.modules[c.__module__] for c in type(builder).__mro__
                 if c.__module__ in sys.modules and not c.__module__.startswith("tensorflow_datasets.core"))
  with contextlib.ExitStack() as stack:
    for module in modules:
      if getattr(module, "tf", None) is lazy_tf:
        stack.enter_context(_replaced(module, "tf", TF_STAND_IN))
    stack.enter_context(_replaced(image_feature._ImageEncoder, "_encode_image", _encode_image_with_pil))  # pylint: disable=protected-access
    yield


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxcnn.data.prepare", description=__doc__.split("\n\n")[0])
  parser.add_argument("name", help="dataset name, e.g. cifar10")
  parser.add_argument("--data_dir", default="", help="tfds data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  parser.add_argument("--manual_dir", default="", help="folder with the already downloaded archives")
  args = parser.parse_args(argv)
  try:
    names = joined_tfds_names(args.name) or [args.name]
    for name in names:
      builder = prepare(name, data_dir=args.data_dir or None, manual_dir=args.manual_dir or None)
      sizes = ", ".join(f"{k}: {v.num_examples}" for k, v in sorted(builder.info.splits.items()))
      print(f"{name} is prepared under {builder.data_dir} ({sizes})")
  except UserError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
