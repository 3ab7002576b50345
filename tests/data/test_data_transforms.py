"""Per-example numpy transforms: exact results on small hand-made images."""
import numpy as np
import pytest

from jaxcnn.data import transforms


def test_resize_keeps_constant_images_and_shapes():
  gray = np.full((8, 8, 1), 77, np.uint8)
  out = transforms.resize(gray, 32)
  assert out.shape == (32, 32, 1) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, 77)
  rgb = np.zeros((28, 28, 3), np.uint8) + np.array([10, 20, 30], np.uint8)
  np.testing.assert_array_equal(transforms.resize(rgb, 32), np.broadcast_to(rgb[:1, :1], (32, 32, 3)))


def test_resize_is_bilinear_per_channel():
  ramp = np.tile(np.arange(0, 256, 32, dtype=np.uint8)[None, :, None], (8, 1, 1))   # 0, 32, ..., 224 along x
  up = transforms.resize(ramp, 16)
  # Bilinear 2x upsampling of a linear ramp stays linear inside: neighbours differ by 16.
  np.testing.assert_array_equal(np.diff(up[0, 1:-1, 0].astype(int)), 16)
  assert np.all(up == up[:1])    # rows are unchanged by a horizontal ramp
  both = transforms.resize(np.concatenate([ramp, ramp[:, ::-1]], axis=2), 16)
  np.testing.assert_array_equal(both[..., :1], up)
  np.testing.assert_array_equal(both[..., 1:], transforms.resize(np.ascontiguousarray(ramp[:, ::-1]), 16))


def test_resize_is_identity_at_native_size():
  image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  assert transforms.resize(image, 8) is image


def test_to_channels():
  gray = np.arange(4, dtype=np.uint8).reshape(2, 2, 1)
  np.testing.assert_array_equal(transforms.to_channels(gray, 3), np.repeat(gray, 3, axis=2))
  red = np.zeros((1, 1, 3), np.uint8)
  red[..., 0] = 255
  assert transforms.to_channels(red, 1)[0, 0, 0] == 76    # 0.299 * 255 = 76.2
  white = np.full((1, 1, 3), 255, np.uint8)
  assert transforms.to_channels(white, 1)[0, 0, 0] == 255


def test_random_crop_is_a_window_of_the_padded_image():
  image = np.arange(1, 37, dtype=np.uint8).reshape(6, 6, 1)
  padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
  offsets = set()
  for seed in range(200):
    out = transforms.random_crop(image, np.random.default_rng(seed), 2)
    assert out.shape == image.shape
    matches = [(t, l) for t in range(5) for l in range(5) if np.array_equal(padded[t:t + 6, l:l + 6], out)]
    assert matches
    offsets.update(matches)
  assert offsets == {(t, l) for t in range(5) for l in range(5)}   # every offset 0..2p happens


@pytest.mark.parametrize("shape, padding", [((5, 7, 3), 2), ((4, 4, 1), 4), ((3, 5, 1), 6)])
def test_random_crop_equals_crop_of_np_pad(shape, padding):
  image = np.random.default_rng(1).integers(1, 256, shape, dtype=np.uint8)
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  for seed in range(30):
    top, left = np.random.default_rng(seed).integers(0, 2 * padding + 1, size=2)
    out = transforms.random_crop(image, np.random.default_rng(seed), padding)
    np.testing.assert_array_equal(out, padded[top:top + shape[0], left:left + shape[1]])


def test_random_crop_reflect_has_no_zero_border():
  image = np.full((6, 6, 3), 9, np.uint8)
  image[0] = 200
  for seed in range(20):
    out = transforms.random_crop(image, np.random.default_rng(seed), 3, pad_mode="reflect")
    assert out.min() > 0
  assert transforms.random_crop(image, np.random.default_rng(0), 0) is image


def test_random_flip_mirrors_half_the_time():
  image = np.arange(12, dtype=np.uint8).reshape(2, 6, 1)
  flips = 0
  for seed in range(400):
    out = transforms.random_flip(image, np.random.default_rng(seed))
    if np.array_equal(out, image[:, ::-1]):
      flips += 1
    else:
      np.testing.assert_array_equal(out, image)
  assert 160 < flips < 240


def test_normalize():
  image = np.array([[[0, 255], [51, 102]]], np.uint8)      # [1, 2, 2]
  out = transforms.normalize(image, mean=(0.5, 0.0), std=(0.5, 2.0))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [[[-1.0, 0.5], [-0.6, 0.2]]], atol=1e-6)


def test_parse_augment_and_apply():
  assert transforms.parse_augment("") == ()
  assert transforms.parse_augment("none") == ()
  assert transforms.parse_augment(" crop , flip ") == ("crop", "flip")
  with pytest.raises(ValueError):
    transforms.parse_augment("crop,cutout")
  image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
  opts = transforms.AugmentOptions(crop_padding=1)
  a = transforms.augment(image, np.random.default_rng(5), ("crop", "flip"), opts)
  rng = np.random.default_rng(5)
  b = transforms.random_flip(transforms.random_crop(image, rng, 1), rng)
  np.testing.assert_array_equal(a, b)
