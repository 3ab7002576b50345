"""Dataset registry and the embedded digits source."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

from jaxcnn import data
from jaxcnn.errors import UserError


def test_names_and_infos():
  names = data.dataset_names()
  for name in ["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped"]:
    assert name in names
  info = data.dataset_info("cifar100")
  assert (info.num_classes, info.image_shape, info.embedded, info.tfds_name) == (100, (32, 32, 3), False, "cifar100")
  assert (info.train_split, info.eval_split) == ("train", "test")
  digits = data.dataset_info("digits")
  assert digits.embedded and digits.tfds_name is None and digits.image_shape == (8, 8, 1)
  with pytest.raises(Exception):
    digits.num_classes = 3     # frozen
  assert {"digits", "digits_captions", "digits_det", "digits_inst", "digits_seg"} <= set(data.embedded_names())


def test_unknown_dataset_lists_the_known_ones():
  with pytest.raises(UserError, match=r"unknown dataset 'cifar11'.*did you mean cifar10.*known: .*digits"):
    data.dataset_info("cifar11")
  with pytest.raises(UserError, match="known: "):
    data.get_source("imagenet_typo", "train")


def test_digits_split_sizes_balance_and_content():
  train, test = data.get_source("digits", "train"), data.get_source("digits", "test")
  assert (len(train), len(test)) == (1437, 360)
  np.testing.assert_array_equal(np.bincount(test.labels), [36] * 10)
  digits = load_digits()
  np.testing.assert_array_equal(np.bincount(train.labels), np.bincount(digits.target) - 36)
  # Both splits together are exactly the 1,797 images, scaled 0..16 -> 0..255.
  scaled = np.rint(digits.images * 255 / 16).astype(np.uint8)[..., None]
  ours = np.concatenate([train.images, test.images])
  key = lambda imgs, labels: sorted(zip(labels.tolist(), (im.tobytes() for im in imgs)))
  assert key(ours, np.concatenate([train.labels, test.labels])) == key(scaled, digits.target)
  assert train.images.dtype == np.uint8 and train.images.max() == 255 and train.images.min() == 0
  example = test[0]
  assert example["image"].shape == (8, 8, 1) and isinstance(example["label"], int)


def test_digits_split_is_the_documented_deterministic_one():
  labels = load_digits().target
  test_idx = data.sources.digits_test_indices(labels)
  assert len(test_idx) == 360 and len(set(test_idx.tolist())) == 360
  zeros = np.flatnonzero(labels == 0)     # 178 of them: ranks floor((i + .5) * 178 / 36)
  expected = zeros[((np.arange(36) + 0.5) * len(zeros) / 36).astype(int)]
  np.testing.assert_array_equal(test_idx[labels[test_idx] == 0], expected)
  test = data.get_source("digits", "test")
  np.testing.assert_array_equal(test.labels, labels[test_idx])


def test_split_slicing_and_errors():
  assert len(data.get_source("digits", "train[:100]")) == 100
  assert len(data.get_source("digits", "train[:10%]+test[-5:]")) == 144 + 5
  np.testing.assert_array_equal(data.get_source("digits", "test[10:20]").images,
                                data.get_source("digits", "test").images[10:20])
  with pytest.raises(UserError, match=r"unknown split 'validation' of dataset 'digits' \(splits: train, test\)"):
    data.get_source("digits", "validation")
  with pytest.raises(UserError, match="unknown split 'valid'.*cifar10"):
    data.get_source("cifar10", "valid")      # rejected before looking for files
  with pytest.raises(UserError, match="cannot read split"):
    data.get_source("digits", "train[::2]")
  with pytest.raises(UserError, match="non-empty string"):
    data.get_source("digits", "")
  with pytest.raises(UserError, match="split 'train\\[5:5\\]' of dataset 'digits' is empty"):
    data.get_source("digits", "train[5:5]")


def test_channel_stats():
  mean, std = data.channel_stats("digits")
  pixels = data.get_source("digits", "train").images.astype(np.float64) / 255
  np.testing.assert_allclose([mean[0], std[0]], [pixels.mean(), pixels.std()], rtol=1e-5)
  mean, std = data.channel_stats("cifar10")
  assert mean.shape == std.shape == (3,) and mean.dtype == np.float32
  np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465])
