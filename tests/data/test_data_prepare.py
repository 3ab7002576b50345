"""Preparing tfds datasets as ArrayRecord without TensorFlow, from fake archives in the real formats.

No network: the archives come from a manual_dir or from a stubbed HTTP response;
the real tfds extractor, builder code, PNG encoding and ArrayRecord writer run.
The fake archives are tiny, so tfds's registered checksums are not checked here.
"""
import contextlib
import gzip
import io
import sys
import tarfile
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import downloader
from tensorflow_datasets.core.features import image_feature
from tensorflow_datasets.core.utils import lazy_imports_utils
from tensorflow_datasets.image_classification import cifar, mnist

from jaxcnn import data
from jaxcnn.data import prepare
from jaxcnn.errors import UserError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


def _fake_cifar10_tarball(n_per_file=(3, 2, 2, 2, 3), n_test=4, seed=0):
  """cifar-10-binary.tar.gz bytes (rows of 1 label byte + 3072 CHW pixel bytes) and its examples by split."""
  rng = np.random.default_rng(seed)
  examples = {"train": [], "test": []}
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
    def add(name, payload):
      member = tarfile.TarInfo("cifar-10-batches-bin/" + name)
      member.size = len(payload)
      tar.addfile(member, io.BytesIO(payload))
    files = [(f"data_batch_{i + 1}.bin", n, "train") for i, n in enumerate(n_per_file)]
    for name, n, split in files + [("test_batch.bin", n_test, "test")]:
      labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
      pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
      add(name, np.concatenate([labels, pixels], axis=1).tobytes())
      images = pixels.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
      examples[split] += [(int(l), im.tobytes()) for l, im in zip(labels[:, 0], images)]
    add("batches.meta.txt", "\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                       "ship", "truck"]).encode() + b"\n")
  return buffer.getvalue(), {k: sorted(v) for k, v in examples.items()}


def _read_all(source):
  return sorted((source[i]["label"], source[i]["image"].tobytes()) for i in range(len(source)))


@pytest.fixture
def accept_fake_checksums(monkeypatch):
  monkeypatch.setattr(tfds.download.DownloadManager, "_register_or_validate_checksums",
                      lambda self, url, url_info, path: None)


def _tf_absent():
  return not prepare.tensorflow_installed()


def test_prepare_cifar10_from_manual_dir(tmp_path, accept_fake_checksums):
  tarball, examples = _fake_cifar10_tarball()
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "cifar-10-binary.tar.gz").write_bytes(tarball)
  data_dir = str(tmp_path / "tfds")
  # download=False: archives in manual_dir need no network, so they are used without asking.
  train = data.get_source("cifar10", "train", data_dir=data_dir, manual_dir=str(manual))
  assert isinstance(train, data.TfdsSource) and len(train) == 12
  assert _read_all(train) == examples["train"]     # pixels survive PNG encoding exactly
  test = data.get_source("cifar10", "test", data_dir=data_dir)   # prepared now: no manual_dir needed
  assert _read_all(test) == examples["test"]
  assert (tmp_path / "tfds" / "cifar10" / "3.0.2" / "cifar10-train.array_record-00000-of-00001").exists()
  if _tf_absent():
    assert "tensorflow" not in sys.modules
  # Everything patched for the preparation is back.
  assert cifar.tf is lazy_imports_utils.tensorflow
  assert image_feature._ImageEncoder._encode_image is not prepare._encode_image_with_pil


def test_download_path_without_network(tmp_path, monkeypatch, accept_fake_checksums):
  """download=True: the real downloader writes what the (stubbed) HTTP response sends, then tfds prepares it."""
  tarball, examples = _fake_cifar10_tarball(seed=1)
  requested = []

  @contextlib.contextmanager
  def fake_open_url(url, **kwargs):
    requested.append(url)
    yield types.SimpleNamespace(url=url, headers={}), iter([tarball[:5000], tarball[5000:]])

  monkeypatch.setattr(downloader, "_open_url", fake_open_url)
  monkeypatch.setattr(prepare, "unreachable_hosts", lambda urls, timeout=3.0: [])
  source = data.get_source("cifar10", "test", data_dir=str(tmp_path), download=True)
  assert requested == [CIFAR10_URL]
  assert _read_all(source) == examples["test"]
  assert list((tmp_path / "downloads").glob("cifar10/*cifar-10-binary*.tar.gz"))   # the real download step ran


def test_prepare_grayscale_mnist_from_manual_dir(tmp_path, monkeypatch, accept_fake_checksums):
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, 5, dtype=np.uint8)
  header_images = np.array([0, 0, 8, 3], np.uint8).tobytes() + np.array([5, 28, 28], ">i4").tobytes()
  header_labels = np.array([0, 0, 8, 1], np.uint8).tobytes() + np.array([5], ">i4").tobytes()
  for prefix in ["train", "t10k"]:
    (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header_images + images.tobytes()))
    (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header_labels + labels.tobytes()))
  monkeypatch.setattr(mnist, "_TRAIN_EXAMPLES", 5)   # the builder reads a fixed count from the files
  monkeypatch.setattr(mnist, "_TEST_EXAMPLES", 5)
  source = data.get_source("mnist", "train", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path))
  assert _read_all(source) == sorted((int(l), im[..., None].tobytes()) for l, im in zip(labels, images))


def test_cli_prepares_from_manual_dir(tmp_path, capsys, accept_fake_checksums):
  tarball, _ = _fake_cifar10_tarball(seed=3)
  (tmp_path / "cifar-10-binary.tar.gz").write_bytes(tarball)
  code = prepare.main(["cifar10", f"--data_dir={tmp_path / 'tfds'}", f"--manual_dir={tmp_path}"])
  assert code == 0
  assert "cifar10 is prepared under" in capsys.readouterr().out
  assert prepare.main(["digits"]) == 2
  assert "embedded" in capsys.readouterr().err


@pytest.mark.skipif(not _tf_absent(), reason="the stand-in is only used without TensorFlow")
def test_stand_in_names_what_needs_tensorflow():
  assert prepare.TF_STAND_IN.compat.as_text(b"a/b") == "a/b"
  with pytest.raises(ModuleNotFoundError, match=r"calls tf\.image\.encode_png, which needs TensorFlow"):
    prepare.TF_STAND_IN.image.encode_png   # pylint: disable=pointless-statement


def test_dataset_prepared_as_tfrecord_is_explained(tmp_path, accept_fake_checksums):
  tarball, _ = _fake_cifar10_tarball(seed=4)
  (tmp_path / "cifar-10-binary.tar.gz").write_bytes(tarball)
  data_dir = tmp_path / "tfds"
  data.get_source("cifar10", "test", data_dir=str(data_dir), manual_dir=str(tmp_path))
  info_file = data_dir / "cifar10" / "3.0.2" / "dataset_info.json"
  info_file.write_text(info_file.read_text().replace('"array_record"', '"tfrecord"'))   # as `tfds build` makes it
  with pytest.raises(UserError,
                     match=r"dataset 'cifar10' is prepared under .* as tfrecord, which has no random access"):
    data.get_source("cifar10", "test", data_dir=str(data_dir), download=True)


def _tar_gz(members):
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
    for name, payload in members.items():
      member = tarfile.TarInfo(name)
      member.size = len(payload)
      tar.addfile(member, io.BytesIO(payload))
  return buffer.getvalue()


def _image_bytes(array, fmt):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()


def test_prepare_oxford_iiit_pet_trimaps_from_manual_dir(tmp_path, accept_fake_checksums):
  """The pets builder, corrupt-sample re-encoding included (an RGBA file among the JPEGs), without TensorFlow."""
  names = {"trainval": ["Abyssinian_5", "beagle_7"], "test": ["pug_3"]}      # Abyssinian_5: a listed corrupt sample
  images, annotations, trimaps = {}, {}, {}
  for split, split_names in names.items():
    lines = []
    for n, name in enumerate(split_names):
      h, w = 20 + 3 * n, 30 + 2 * n
      trimap = np.full((h, w), 2, np.uint8)
      trimap[5:15, 8:20] = 3
      trimap[6:14, 9:19] = 1
      trimaps[name] = trimap
      pixels = np.full((h, w, 4 if name == "Abyssinian_5" else 3), 90, np.uint8)
      images[f"images/{name}.jpg"] = _image_bytes(pixels, "PNG" if pixels.shape[2] == 4 else "JPEG")
      annotations[f"annotations/trimaps/{name}.png"] = _image_bytes(trimap, "PNG")
      annotations[f"annotations/xmls/{name}.xml"] = (
          f"<annotation><size><width>{w}</width><height>{h}</height></size><object><bndbox><xmin>1</xmin>"
          f"<ymin>2</ymin><xmax>5</xmax><ymax>6</ymax></bndbox></object></annotation>").encode()
      lines.append(f"{name} {n + 1} {n % 2 + 1} 1")
    annotations[f"annotations/{split}.txt"] = ("\n".join(lines) + "\n").encode()
  (tmp_path / "images.tar.gz").write_bytes(_tar_gz(images))
  (tmp_path / "annotations.tar.gz").write_bytes(_tar_gz(annotations))
  source = data.get_source("oxford_iiit_pet", "train", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path))
  assert len(source) == 2 and len(data.get_source("oxford_iiit_pet", "test", data_dir=str(tmp_path / "tfds"))) == 1
  by_size = {source[i]["segmentation"].shape: source[i] for i in range(2)}
  for name in names["trainval"]:
    example = by_size[trimaps[name].shape]
    assert example["image"].shape == trimaps[name].shape + (3,)        # the RGBA sample lost its alpha
    expected = np.select([trimaps[name] == 1, trimaps[name] == 2], [1, 0], 255)
    np.testing.assert_array_equal(example["segmentation"], expected)
