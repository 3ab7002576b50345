"""Per-example numpy transforms: exact results on small hand-made images."""
import numpy as np
import pytest

from jaxcnn.data import autoaugment, transforms


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


def _erased_box(before, after):
  """(top, left, height, width) of the changed pixels, asserting they fill their bounding box."""
  changed = np.any(after != before, axis=2)
  if not changed.any():
    return None
  rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
  top, left, h, w = rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
  assert changed[top:top + h, left:left + w].all() and changed.sum() == h * w   # one solid rectangle
  return top, left, h, w


def _explainable(h, w, size, area, aspect):
  """Whether round(sqrt(a * r)) = h, round(sqrt(a / r)) = w for some a in area * size and r in aspect."""
  lo_a, hi_a = max((h - .5) * (w - .5), area[0] * size), min((h + .5) * (w + .5), area[1] * size)
  lo_r, hi_r = max((h - .5) / (w + .5), aspect[0]), min((h + .5) / max(w - .5, 1e-9), aspect[1])
  return lo_a <= hi_a + 1e-9 and lo_r <= hi_r + 1e-9


@pytest.mark.parametrize("area, aspect", [((0.02, 1 / 3), (0.3, 1 / 0.3)), ((0.1, 0.2), (1.0, 1.0)),
                                          ((0.3, 0.5), (0.5, 2.0))])
def test_random_erase_changes_one_rectangle_within_the_area_and_aspect_ranges(area, aspect):
  image = np.full((32, 24, 3), 5.0, np.float32)       # normalised values never equal to the zero fill
  sizes = []
  for seed in range(300):
    out = transforms.random_erase(image, np.random.default_rng(seed), 1.0, area, aspect, mode="const")
    box = _erased_box(image, out)
    if box is None:
      continue
    top, left, h, w = box
    assert h < 32 and w < 24                             # strictly inside, as timm
    assert np.all(out[top:top + h, left:left + w] == 0)
    assert _explainable(h, w, 32 * 24, area, aspect), (h, w)
    sizes.append(h * w)
  assert len(sizes) > 250
  assert min(sizes) < 1.3 * area[0] * 768 + 20 and max(sizes) > 0.8 * area[1] * 768 - 20   # the range is used


def test_random_erase_fills_and_probability():
  image = np.full((32, 32, 3), 5.0, np.float32)
  pixel_values, erased = [], 0
  for seed in range(400):
    out = transforms.random_erase(image, np.random.default_rng(seed), 0.25, mode="pixel")
    box = _erased_box(image, out)
    if box is not None:
      erased += 1
      top, left, h, w = box
      pixel_values.append(out[top:top + h, left:left + w].ravel())
    else:
      np.testing.assert_array_equal(out, image)
  assert 0.15 < erased / 400 < 0.3                      # p = 0.25 (an erase can also fail its 10 attempts)
  values = np.concatenate(pixel_values)
  assert abs(values.mean()) < 0.05 and abs(values.std() - 1) < 0.05    # N(0, 1) per pixel and channel
  for seed in range(20):
    out = transforms.random_erase(image, np.random.default_rng(seed), 1.0, mode="rand")
    top, left, h, w = _erased_box(image, out)
    patch = out[top:top + h, left:left + w]
    np.testing.assert_array_equal(patch, np.broadcast_to(patch[:1, :1], patch.shape))   # one colour
  assert transforms.random_erase(image, np.random.default_rng(0), 0.0) is image


def test_split_augment_and_new_names():
  assert transforms.parse_augment("crop,flip,randaugment,autoaugment,erase") == (
      "crop", "flip", "randaugment", "autoaugment", "erase")
  assert transforms.split_augment(("crop", "randaugment", "erase")) == (("crop", "randaugment"), ("erase",))
  assert transforms.split_augment(("crop", "flip")) == (("crop", "flip"), ())
  image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
  opts = transforms.AugmentOptions(randaugment_n=3, randaugment_m=5.0)
  expected = autoaugment.rand_augment(image, np.random.default_rng(3), 3, 5.0)
  np.testing.assert_array_equal(transforms.augment(image, np.random.default_rng(3), ("randaugment",), opts), expected)
