"""RandAugment and AutoAugment: each op on known images, the op lists and magnitude ranges, plan statistics."""
import collections

import numpy as np
import pytest
from PIL import Image, ImageOps

from jaxcnn.data import autoaugment as aa

ZERO_LEVEL_IDENTITY_OPS = ("Identity", "Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def _ramp(h=8, w=8, c=1):
  """Distinct values that never equal the fill (128): 10, 13, ... along rows then columns."""
  values = (np.arange(h * w * c) * 3 + 10) % 251
  values[values == aa.FILL] = 1
  return values.reshape(h, w, c).astype(np.uint8)


def _pil(image):
  return Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)


def _array(pil, channels):
  out = np.asarray(pil)
  return out[..., None] if channels == 1 else out


def _test_images():
  rng = np.random.default_rng(0)
  images = []
  for c in (1, 3):
    images += [rng.integers(0, 256, (9, 7, c), dtype=np.uint8),           # full range
               rng.integers(90, 140, (8, 8, c), dtype=np.uint8),          # narrow range
               np.full((5, 6, c), 77, np.uint8),                           # constant
               rng.choice(np.array([0, 7, 255], np.uint8), (6, 5, c)),     # three values
               np.where(rng.random((8, 8, c)) < 0.9, 255, rng.integers(0, 256, (8, 8, c))).astype(np.uint8)]
  return images


@pytest.mark.parametrize("ours, pil_op", [(aa.auto_contrast, ImageOps.autocontrast), (aa.equalize, ImageOps.equalize),
                                          (aa.invert, ImageOps.invert)])
def test_numpy_point_ops_equal_pil(ours, pil_op):
  for image in _test_images():
    np.testing.assert_array_equal(ours(image), _array(pil_op(_pil(image)), image.shape[2]))


def test_solarize_and_posterize_equal_pil():
  for image in _test_images():
    for threshold in (0, 1, 77, 128, 205, 255, 256):
      np.testing.assert_array_equal(aa.solarize(image, threshold),
                                    _array(ImageOps.solarize(_pil(image), threshold), image.shape[2]))
    for bits in range(1, 9):
      np.testing.assert_array_equal(aa.posterize(image, bits),
                                    _array(ImageOps.posterize(_pil(image), bits), image.shape[2]))
    np.testing.assert_array_equal(aa.posterize(image, 0), 0)      # PIL refuses 0 bits; timm's TF mapping asks for it
    np.testing.assert_array_equal(aa.solarize(image, 256), image)
    np.testing.assert_array_equal(aa.solarize(image, 0), 255 - image)


def test_auto_contrast_and_equalize_on_known_images():
  image = np.array([[[10], [20]], [[30], [61]]], np.uint8)        # [10, 61] -> [0, 255]: 5 (v - 10)
  np.testing.assert_array_equal(aa.auto_contrast(image)[..., 0], [[0, 50], [100, 255]])
  two = np.array([[[0, 9, 100]], [[255, 9, 151]]], np.uint8)
  # Per channel: 0 already spans [0, 255], 1 is constant (both unchanged), 2 is stretched.
  np.testing.assert_array_equal(aa.auto_contrast(two), [[[0, 9, 0]], [[255, 9, 255]]])
  spread = np.repeat(np.arange(0, 256, 1, dtype=np.uint8)[:, None, None], 3, axis=1)[:, :1]
  np.testing.assert_array_equal(aa.equalize(spread), spread)       # a flat histogram is already equalised
  dark = np.full((32, 32, 1), 10, np.uint8)
  dark[24:] = 20
  # 768 pixels at 10, 256 at 20: step (1024 - 256) // 255 = 3, so 10 -> 1 // 3 = 0 and 20 -> min(769 // 3, 255).
  np.testing.assert_array_equal(aa.equalize(dark), np.where(dark == 10, 0, 255))
  np.testing.assert_array_equal(aa.equalize(dark[:4, :4]), dark[:4, :4])     # too few pixels: PIL leaves it


def test_translate_moves_by_whole_pixels_and_fills_gray():
  image = _ramp()
  out = aa.apply_plan(image, [("TranslateX", 3.0)])
  np.testing.assert_array_equal(out[:, :5], image[:, 3:])
  np.testing.assert_array_equal(out[:, 5:], aa.FILL)
  out = aa.apply_plan(image, [("TranslateY", -2.0)])
  np.testing.assert_array_equal(out[2:], image[:-2])
  np.testing.assert_array_equal(out[:2], aa.FILL)


def test_rotate_and_shear_on_known_images():
  rgb = _ramp(6, 6, 3)
  np.testing.assert_array_equal(aa.apply_plan(rgb, [("Rotate", 90.0)]), np.rot90(rgb))    # counter-clockwise
  image = _ramp(8, 16, 1)
  # Shear 2 about the top-left corner: output pixel (x, y) reads input (x + 2 (y + 1/2), y), a pixel centre.
  out = aa.apply_plan(image, [("ShearX", 2.0)])
  for y in range(8):
    inside = max(0, 16 - (2 * y + 1))
    np.testing.assert_array_equal(out[y, :inside], image[y, 2 * y + 1:])
    np.testing.assert_array_equal(out[y, inside:], aa.FILL)
  tall = np.ascontiguousarray(image.transpose(1, 0, 2))
  np.testing.assert_array_equal(aa.apply_plan(tall, [("ShearY", 2.0)]), out.transpose(1, 0, 2))


def test_enhance_ops_on_known_images():
  rgb = _ramp(4, 4, 3)
  np.testing.assert_array_equal(aa.apply_plan(rgb, [("Brightness", 0.0)]), 0)
  for name in ("Brightness", "Color", "Contrast", "Sharpness"):
    np.testing.assert_array_equal(aa.apply_plan(rgb, [(name, 1.0)]), rgb)
  gray = aa.apply_plan(rgb, [("Color", 0.0)])                  # fully desaturated: PIL's luma in every channel
  np.testing.assert_array_equal(gray, np.repeat(np.asarray(_pil(rgb).convert("L"))[..., None], 3, axis=2))
  flat = aa.apply_plan(rgb, [("Contrast", 0.0)])
  assert len(np.unique(flat)) == 1                            # contrast 0: the mean gray everywhere
  one = _ramp(4, 4, 1)
  np.testing.assert_array_equal(aa.apply_plan(one, [("Color", 0.0)]), one)   # grayscale has no colour to remove


def test_apply_plan_keeps_shape_and_dtype_for_every_op():
  for channels in (1, 3):
    image = _ramp(8, 8, channels)
    for name in sorted(aa.OP_NAMES):
      out = aa.apply_plan(image, [(name, 1.0), ("Invert", 0.0), (name, 1.0)])
      assert out.shape == image.shape and out.dtype == np.uint8, name


def test_randaugment_op_list_is_the_papers():
  assert len(aa.RANDAUGMENT_OPS) == 14 == len(set(aa.RANDAUGMENT_OPS))
  assert set(aa.RANDAUGMENT_OPS) == {
      "Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Posterize", "Contrast", "Brightness",
      "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY"}
  assert set(aa.RANDAUGMENT_LEVELS) == set(aa.RANDAUGMENT_INCREASING_LEVELS) == set(aa.RANDAUGMENT_OPS)
  assert set(aa.RANDAUGMENT_OPS) <= aa.OP_NAMES


def _abs_values(levels, name, magnitude, size=(32, 40), draws=50):
  """The distinct |argument|s (rounded to 1e-9) an op gets at `magnitude` over `draws` generators."""
  return {round(abs(levels[name](magnitude, np.random.default_rng(s), size)), 9) for s in range(draws)}


def _rounded(*values):
  return {round(v, 9) for v in values}


@pytest.mark.parametrize("magnitude, expected", [
    (0, dict(Rotate=0, ShearX=0, TranslateX=0, TranslateY=0, Color=0.1, Solarize=0, Posterize=0)),
    (9, dict(Rotate=27, ShearX=0.27, TranslateX=0.405 * 40, TranslateY=0.405 * 32, Color=1.72, Solarize=230,
             Posterize=3)),
    (10, dict(Rotate=30, ShearY=0.3, TranslateX=0.45 * 40, Sharpness=1.9, Solarize=256, Posterize=4)),
])
def test_randaugment_magnitude_ranges_match_timm(magnitude, expected):
  for name, value in expected.items():
    assert _abs_values(aa.RANDAUGMENT_LEVELS, name, magnitude) == _rounded(value), name


def test_randaugment_increasing_ranges_match_timm_inc1():
  levels = aa.RANDAUGMENT_INCREASING_LEVELS
  assert {round(levels["Contrast"](9, np.random.default_rng(s), (8, 8)), 9) for s in range(50)} == {0.19, 1.81}
  assert _abs_values(levels, "Brightness", 0) == {1.0}
  assert _abs_values(levels, "Color", 10) == _rounded(0.1, 1.9)
  assert _abs_values(levels, "Solarize", 9) == {26} and _abs_values(levels, "Solarize", 0) == {256}
  assert _abs_values(levels, "Posterize", 9) == {1} and _abs_values(levels, "Posterize", 0) == {4}


def test_signed_ops_take_both_signs():
  for name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"):
    signs = {np.sign(aa.RANDAUGMENT_LEVELS[name](5, np.random.default_rng(s), (8, 8))) for s in range(40)}
    assert signs == {-1.0, 1.0}, name


@pytest.mark.parametrize("channels", [1, 3])
def test_randaugment_at_magnitude_zero_with_identity_like_ops_is_identity(channels):
  image = _ramp(12, 10, channels)
  for seed in range(30):
    out = aa.rand_augment(image, np.random.default_rng(seed), num_ops=3, magnitude=0, prob=1.0,
                          ops=ZERO_LEVEL_IDENTITY_OPS)
    np.testing.assert_array_equal(out, image)
  # With timm's increasing mapping the colour ops are the identity at magnitude 0 too.
  ops = ZERO_LEVEL_IDENTITY_OPS + ("Color", "Contrast", "Brightness", "Sharpness", "Solarize")
  for seed in range(30):
    out = aa.rand_augment(image, np.random.default_rng(seed), num_ops=3, magnitude=0, prob=1.0, increasing=True,
                          ops=ops)
    np.testing.assert_array_equal(out, image)
  # ... but not the TF/timm default mapping: contrast 0.1 at magnitude 0.
  out = aa.rand_augment(image, np.random.default_rng(0), num_ops=1, magnitude=0, prob=1.0, ops=("Contrast",))
  assert not np.array_equal(out, image)


def test_randaugment_plan_statistics():
  """n ops drawn uniformly with replacement from the 14, each kept with probability `prob`."""
  rng = np.random.default_rng(123)
  draws, n, prob = 6000, 2, 0.5
  counts, lengths = collections.Counter(), collections.Counter()
  for _ in range(draws):
    plan = aa.randaugment_plan(rng, (32, 32), num_ops=n, magnitude=9, prob=prob)
    lengths[len(plan)] += 1
    counts.update(name for name, _ in plan)
  for k, p in [(0, 0.25), (1, 0.5), (2, 0.25)]:                   # Binomial(2, 0.5)
    assert abs(lengths[k] / draws - p) < 5 * np.sqrt(p * (1 - p) / draws), k
  applied = sum(counts.values())
  assert set(counts) == set(aa.RANDAUGMENT_OPS)
  for name in aa.RANDAUGMENT_OPS:
    assert abs(counts[name] / applied - 1 / 14) < 5 * np.sqrt((1 / 14) * (13 / 14) / applied), name
  assert aa.randaugment_plan(rng, (32, 32), num_ops=3, prob=0.0) == []
  assert len(aa.randaugment_plan(rng, (32, 32), num_ops=3, prob=1.0)) == 3


def test_randaugment_magnitude_noise():
  rng = np.random.default_rng(7)
  rotations = [abs(arg) for _ in range(3000)
               for _, arg in aa.randaugment_plan(rng, (8, 8), 1, 9, magnitude_std=0.5, prob=1.0, ops=("Rotate",))]
  assert abs(np.mean(rotations) - 27) < 0.3 and 1.2 < np.std(rotations) < 1.8     # 3 degrees per magnitude step
  assert max(rotations) <= 30                                                       # clipped at magnitude 10
  uniform = [abs(arg) for _ in range(3000)
             for _, arg in aa.randaugment_plan(rng, (8, 8), 1, 9, magnitude_std=float("inf"), prob=1.0,
                                               ops=("Rotate",))]
  assert abs(np.mean(uniform) - 13.5) < 0.6 and min(uniform) < 1 and max(uniform) <= 27


def test_autoaugment_cifar10_policy_table():
  policy = aa.CIFAR10_POLICY
  assert len(policy) == 25 and all(len(sub) == 2 for sub in policy)
  for sub in policy:
    for name, prob, level in sub:
      assert name in aa.AUTOAUGMENT_LEVELS and 0 <= prob <= 1 and 0 <= level <= 9
  # Spot checks against the paper's appendix table.
  assert policy[0] == (("Invert", 0.1, 7), ("Contrast", 0.2, 6))
  assert policy[5] == (("ShearY", 0.2, 7), ("Posterize", 0.3, 7))
  assert policy[14] == (("Solarize", 0.5, 2), ("Invert", 0.0, 3))
  assert policy[24] == (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1))
  assert sum(name == "Equalize" for sub in policy for name, _, _ in sub) == 9


def test_autoaugment_levels_follow_the_authors_cifar_code():
  levels, size = aa.AUTOAUGMENT_LEVELS, (32, 32)
  assert _abs_values(levels, "Rotate", 2, size) == {6}
  assert _abs_values(levels, "TranslateX", 9, size) == {9} and _abs_values(levels, "TranslateY", 9, (64, 64)) == {18}
  assert _abs_values(levels, "ShearY", 8, size) == _rounded(0.24)
  assert _abs_values(levels, "Posterize", 7, size) == {2}          # keeps 4 - int(2.8) bits
  assert _abs_values(levels, "Solarize", 2, size) == {205}         # 256 - int(51.2)
  assert _abs_values(levels, "Brightness", 6, size) == _rounded(1.18)


def test_autoaugment_applies_sub_policies_with_their_probabilities():
  rng = np.random.default_rng(2024)
  draws = 25000
  chosen = collections.Counter()
  applied = collections.Counter()
  for _ in range(draws):
    index, plan = aa.autoaugment_plan(rng, (32, 32))
    chosen[index] += 1
    # Which of the two ops applied: a plan lists them in order, and both ops of a sub-policy may share a name.
    names = [name for name, _ in plan]
    first, second = (op[0] for op in aa.CIFAR10_POLICY[index])
    if len(plan) == 2:
      applied[index, 0] += 1
      applied[index, 1] += 1
    elif len(plan) == 1 and first != second:
      applied[index, 0 if names[0] == first else 1] += 1
    elif len(plan) == 1:
      applied[index, "one of two"] += 1
  for index, sub in enumerate(aa.CIFAR10_POLICY):
    assert abs(chosen[index] / draws - 1 / 25) < 5 * np.sqrt((1 / 25) * (24 / 25) / draws)
    (_, p0, _), (_, p1, _) = sub
    if sub[0][0] == sub[1][0]:
      # Same op twice: exactly one applies with probability p0 (1 - p1) + (1 - p0) p1.
      both, one = applied[index, 0], applied[index, "one of two"]
      expect = [(both, p0 * p1), (one, p0 * (1 - p1) + (1 - p0) * p1)]
    else:
      expect = [(applied[index, 0], p0), (applied[index, 1], p1)]
    for count, p in expect:
      assert abs(count / chosen[index] - p) <= 5 * np.sqrt(p * (1 - p) / chosen[index]) + 1e-9, (index, sub)
  assert applied[14, 1] == 0                                      # ('Invert', 0.0): never


def test_autoaugment_image_is_its_plan_applied():
  image = _ramp(32, 32, 3)
  changed = 0
  for seed in range(20):
    out = aa.auto_augment(image, np.random.default_rng(seed))
    _, plan = aa.autoaugment_plan(np.random.default_rng(seed), (32, 32))
    np.testing.assert_array_equal(out, aa.apply_plan(image, plan))
    changed += not np.array_equal(out, image)
  assert changed > 10
