"""Geometric transforms: masks and boxes move with the image (an image fed as its own mask, boxes against masks)."""
import numpy as np
import pytest
from scipy import ndimage

from jaxcnn.data import geometry
from jaxcnn.errors import UserError

KINDS = {"image": "image", "segmentation": "mask", "boxes": "boxes"}
IGNORE = 255


def _blocks(h, w, block, seed):
  """A label map of constant `block` x `block` squares with classes 0..9, and the image showing it (20 * (c + 1))."""
  rng = np.random.default_rng(seed)
  classes = rng.integers(0, 10, (-(-h // block), -(-w // block)))
  mask = np.kron(classes, np.ones((block, block), np.int64))[:h, :w].astype(np.int32)
  image = (20 * (mask + 1)).astype(np.uint8)[..., None]
  return image, mask


def _assert_image_equals_its_mask(out, margin=2):
  """Away from block edges (a `margin`-pixel erosion of each constant region), image == 20 * (mask + 1)."""
  image, mask = out["image"][..., 0].astype(int), out["segmentation"]
  padded = mask == IGNORE
  np.testing.assert_array_equal(image[padded], 0)             # padding: image 0 and mask ignore, together
  interior = np.zeros_like(padded)
  for c in np.unique(mask[~padded]):
    interior |= ndimage.binary_erosion(mask == c, np.ones((2 * margin + 1,) * 2), border_value=0)
  interior &= ~padded
  assert interior.sum() > 0.15 * (~padded).sum()              # a good part of the image is compared
  np.testing.assert_allclose(image[interior], 20 * (mask[interior] + 1), atol=1)


@pytest.mark.parametrize("seed", range(6))
def test_random_scale_crop_flip_keep_an_image_equal_to_its_own_mask(seed):
  image, mask = _blocks(45, 70, 14, seed)
  rng = np.random.default_rng(seed)
  example = {"image": image, "segmentation": mask}
  example = geometry.random_scale(example, KINDS, rng, (0.5, 2.0))
  example = geometry.random_crop(example, KINDS, rng, (48, 64), IGNORE)
  example = geometry.random_flip(example, KINDS, rng)
  assert example["image"].shape == (48, 64, 1) and example["segmentation"].shape == (48, 64)
  _assert_image_equals_its_mask(example)


@pytest.mark.parametrize("size", [(32, 32), (40, 90), (100, 30)])
def test_fit_keeps_the_aspect_and_pads_with_ignore(size):
  image, mask = _blocks(45, 70, 18, 3)
  out = geometry.fit({"image": image, "segmentation": mask}, KINDS, size, IGNORE)
  assert out["image"].shape[:2] == size and out["segmentation"].shape == size
  factor = min(size[0] / 45, size[1] / 70)
  h, w = round(45 * factor), round(70 * factor)
  assert (out["segmentation"][:h, :w] != IGNORE).all() and (out["segmentation"][h:] == IGNORE).all()
  assert (out["segmentation"][:, w:] == IGNORE).all() and (h == size[0] or w == size[1])
  _assert_image_equals_its_mask(out)
  same = {"image": image, "segmentation": mask}
  assert geometry.fit(same, KINDS, (45, 70), IGNORE) is same


def test_nearest_mask_resize_reads_the_input_pixel_under_each_output_centre():
  mask = np.arange(12, dtype=np.int32).reshape(3, 4)
  np.testing.assert_array_equal(geometry.resize_mask(mask, (6, 8)), np.repeat(np.repeat(mask, 2, 0), 2, 1))
  np.testing.assert_array_equal(geometry.resize_mask(mask, (3, 2)), mask[:, [1, 3]])   # centres 1.0, 3.0
  np.testing.assert_array_equal(geometry.resize_mask(np.arange(5)[None], (1, 3)), [[0, 2, 4]])


def _rectangles(h, w, boxes):
  """A mask with box i filled by class i + 1 (0 elsewhere) and the image showing it."""
  mask = np.zeros((h, w), np.int32)
  for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
    mask[y1:y2, x1:x2] = i + 1
  return {"image": (mask * 30).astype(np.uint8)[..., None], "segmentation": mask,
          "boxes": boxes.astype(np.float32), "boxes_valid": np.ones(len(boxes), bool)}


def _mask_box(mask, c):
  ys, xs = np.nonzero(mask == c)
  return None if not len(ys) else np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("seed", range(8))
def test_boxes_follow_their_mask_regions(seed):
  boxes = np.array([[2, 3, 20, 15], [30, 5, 55, 40], [10, 25, 28, 47], [50, 42, 60, 48]], np.float32)
  example = _rectangles(48, 64, boxes)
  rng = np.random.default_rng(100 + seed)
  example = geometry.random_scale(example, KINDS, rng, (0.6, 1.8))
  example = geometry.random_crop(example, KINDS, rng, (40, 40), IGNORE)
  example = geometry.random_flip(example, KINDS, rng)
  seen = 0
  for i in range(len(boxes)):
    region = _mask_box(example["segmentation"], i + 1)
    if example["boxes_valid"][i]:
      assert region is not None
      np.testing.assert_allclose(example["boxes"][i], region, atol=1.0)   # nearest sampling: within a pixel
      seen += 1
    else:
      assert region is None or (region[2] - region[0]) * (region[3] - region[1]) <= 2
  assert example["boxes"].dtype == np.float32 and example["boxes"].shape == (4, 4)
  assert (example["boxes"] >= 0).all() and (example["boxes"][:, [0, 2]] <= 40).all()


def test_exact_box_maps_for_flip_crop_and_integer_scales():
  boxes = np.array([[2, 3, 20, 15], [30, 5, 55, 40], [0, 0, 0, 0]], np.float32)
  example = _rectangles(48, 64, boxes[:2])
  example["boxes"], example["boxes_valid"] = boxes, np.array([True, True, False])
  flipped = geometry.flip(example, KINDS)
  np.testing.assert_array_equal(flipped["boxes"][:2], [[44, 3, 62, 15], [9, 5, 34, 40]])
  for i in range(2):
    np.testing.assert_array_equal(flipped["boxes"][i], _mask_box(flipped["segmentation"], i + 1))
  doubled = geometry.resize(example, KINDS, (96, 128))
  for i in range(2):
    np.testing.assert_array_equal(doubled["boxes"][i], _mask_box(doubled["segmentation"], i + 1))
  cropped = geometry.crop(example, KINDS, 10, 25, (30, 30))
  np.testing.assert_array_equal(cropped["boxes"][:2], [[0, 0, 0, 5], [5, 0, 30, 30]])
  np.testing.assert_array_equal(cropped["boxes_valid"], [False, True, False])   # the first left without area
  np.testing.assert_array_equal(cropped["boxes"][1], _mask_box(cropped["segmentation"], 2))
  padded = geometry.pad(example, KINDS, (50, 70), IGNORE)
  np.testing.assert_array_equal(padded["boxes"], boxes)
  assert (padded["segmentation"][48:] == IGNORE).all() and (padded["image"][:, 64:] == 0).all()


def test_pad_boxes():
  boxes, valid = geometry.pad_boxes(np.array([[1, 2, 3, 4]]), 3)
  np.testing.assert_array_equal(boxes, [[1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(valid, [True, False, False])
  with pytest.raises(UserError, match="canvas 7 has 4 boxes, more than the 3 allowed"):
    geometry.pad_boxes(np.zeros((4, 4)), 3, "canvas 7")


def test_random_draws_are_the_documented_ones():
  image, mask = _blocks(30, 40, 5, 0)
  example = {"image": image, "segmentation": mask}
  out = geometry.random_scale(example, KINDS, np.random.default_rng(1), (0.5, 2.0))
  s = np.random.default_rng(1).uniform(0.5, 2.0)
  assert out["image"].shape[:2] == (round(30 * s), round(40 * s))
  base = geometry.random_scale(example, KINDS, np.random.default_rng(1), (0.5, 2.0), base=20)
  assert min(base["image"].shape[:2]) == round(20 * s)
  out = geometry.random_crop(example, KINDS, np.random.default_rng(2), (20, 50), IGNORE)
  top, left = np.random.default_rng(2).integers(0, (11, 1))
  np.testing.assert_array_equal(out["segmentation"][:, :40], mask[top:top + 20])
  assert (out["segmentation"][:, 40:] == IGNORE).all()
