"""tfds sources through tfds.testing.mock_data, and failing fast (never the network) when data is missing."""
import socket
import threading
import time

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxcnn import data
from jaxcnn.data import prepare
from jaxcnn.errors import UserError


def test_mock_data_reaches_get_source():
  with tfds.testing.mock_data(num_examples=12):
    cifar = data.get_source("cifar10", "train")
    mnist = data.get_source("mnist", "test")
  assert isinstance(cifar, data.TfdsSource) and len(cifar) == len(mnist) == 12
  example = cifar[3]
  assert example["image"].shape == (32, 32, 3) and example["image"].dtype == np.uint8
  assert isinstance(example["label"], int) and 0 <= example["label"] < 10
  assert mnist[0]["image"].shape == (28, 28, 1)


def test_mock_data_through_the_pipelines():
  cfg = data.default_data_config()
  cfg.update(dict(name="mnist", image_size=32, channels=3, augment="crop,flip"))
  with tfds.testing.mock_data(num_examples=20):
    batch = next(data.train_iterator(cfg, global_batch_size=8, seed=0, process_index=1, process_count=2))
    evals = list(data.eval_iterator(cfg, global_batch_size=16))
  chex.assert_shape(batch["image"], (4, 32, 32, 3))
  chex.assert_type([batch["image"], batch["label"]], [np.float32, np.int32])
  assert len(evals) == 2
  np.testing.assert_array_equal(np.concatenate([b["mask"] for b in evals]), np.arange(32) < 20)


def _assert_helpful(message, data_dir):
  assert "\n" not in message
  for part in ["'cifar10'", f"not prepared under {data_dir}", "cannot be downloaded",
               f"tfds build cifar10 --file_format=array_record --data_dir={data_dir}",
               "python -m jaxcnn.data.prepare cifar10", "manual_dir", "cifar-10-binary.tar.gz", "digits"]:
    assert part in message


@pytest.fixture
def no_tfds_download(monkeypatch):
  """Any attempt of tfds to download fails the test at once."""
  def refuse(*args, **kwargs):
    raise AssertionError("tfds tried to download")
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", refuse)
  monkeypatch.setattr(tfds.download.DownloadManager, "download", refuse)


def test_missing_dataset_without_download_fails_fast(tmp_path, no_tfds_download):
  start = time.monotonic()
  with pytest.raises(UserError) as err:
    data.get_source("cifar10", "train", data_dir=str(tmp_path), download=False)
  assert time.monotonic() - start < 10
  _assert_helpful(str(err.value), tmp_path)
  assert "data.download is False" in str(err.value)


def test_missing_dataset_with_silent_network_fails_within_seconds(tmp_path, monkeypatch, no_tfds_download):
  """A host that never answers (dropped packets) costs the probe timeout, not tfds's minutes of retries."""
  probed = []

  def never_answers(address, timeout=None):
    probed.append(address)
    threading.Event().wait(30)
    raise OSError("timed out")

  monkeypatch.setattr(prepare.socket, "create_connection", never_answers)
  start = time.monotonic()
  with pytest.raises(UserError) as err:
    data.get_source("cifar10", "train", data_dir=str(tmp_path), download=True)
  elapsed = time.monotonic() - start
  assert elapsed < 6
  assert probed == [("www.cs.toronto.edu", 443)]
  _assert_helpful(str(err.value), tmp_path)
  assert "no connection to www.cs.toronto.edu:443 within 3 s" in str(err.value)


def test_unreachable_hosts_on_loopback():
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(1)
  open_port = server.getsockname()[1]
  closed = socket.socket()
  closed.bind(("127.0.0.1", 0))
  closed_port = closed.getsockname()[1]
  closed.close()
  try:
    result = prepare.unreachable_hosts([f"http://127.0.0.1:{open_port}/a.tar.gz",
                                        f"http://127.0.0.1:{closed_port}/b.tar.gz"], timeout=2)
  finally:
    server.close()
  assert result == [f"127.0.0.1:{closed_port}"]


def test_probe_goes_to_the_proxy_when_one_is_set(monkeypatch):
  monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
  assert prepare._connect_target("https://www.cs.toronto.edu/~kriz/x.tar.gz") == ("proxy.example", 3128)
  monkeypatch.delenv("https_proxy")
  monkeypatch.delenv("HTTPS_PROXY", raising=False)
  assert prepare._connect_target("https://www.cs.toronto.edu/~kriz/x.tar.gz") == ("www.cs.toronto.edu", 443)
  assert prepare._connect_target("http://ufldl.stanford.edu/housenumbers/a.mat") == ("ufldl.stanford.edu", 80)
