"""Detection augmentations: photometric = torchvision's kernels and documented draws; zoom_out and iou_crop move
boxes with their pixels and keep per-box slots aligned; fit / stretch sizes; determinism; config checks."""
import json

import chex
import numpy as np
import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.transforms import functional as F

from jaxcnn import data
from jaxcnn.data import canvas, geometry, sources, transforms
from jaxcnn.errors import UserError

KINDS = {"image": "image", "segmentation": "mask", "boxes": "boxes"}
IGNORE = 255


def _torch(image):
  return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()


def _numpy(tensor):
  return tensor.permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------- photometric


@pytest.mark.parametrize("channels", [3, 1])
def test_colour_ops_equal_torchvision_on_uint8(channels):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (23, 31, channels), dtype=np.uint8)
  image[:4] = 90                                   # grey pixels: hue's equal-channel branch
  for ours, theirs, factors in [
      (transforms.adjust_brightness, F.adjust_brightness, (0.875, 1.04, 1.125)),
      (transforms.adjust_contrast, F.adjust_contrast, (0.5, 0.81, 1.5)),
      (transforms.adjust_saturation, F.adjust_saturation, (0.5, 1.27, 1.5)),
      (transforms.adjust_hue, F.adjust_hue, (-0.05, 0.013, 0.05, -0.5, 0.5))]:
    for factor in factors:
      np.testing.assert_array_equal(ours(image, factor), _numpy(theirs(_torch(image), factor)))


@pytest.mark.parametrize("channels", [3, 1])
def test_photometric_distort_follows_the_documented_draws(channels):
  """References built from torchvision's functional kernels, drawing as the docstring says."""
  image = np.random.default_rng(1).integers(0, 256, (12, 10, channels), dtype=np.uint8)
  changed = 0
  for seed in range(24):
    rng = np.random.default_rng(seed)
    u = rng.random(7)
    want = _torch(image)
    if u[0] < 0.5:
      want = F.adjust_brightness(want, rng.uniform(0.875, 1.125))
    if u[1] < 0.5 and u[2] < 0.5:
      want = F.adjust_contrast(want, rng.uniform(0.5, 1.5))
    if u[3] < 0.5:
      want = F.adjust_saturation(want, rng.uniform(0.5, 1.5))
    if u[4] < 0.5:
      want = F.adjust_hue(want, rng.uniform(-0.05, 0.05))
    if u[1] >= 0.5 and u[5] < 0.5:
      want = F.adjust_contrast(want, rng.uniform(0.5, 1.5))
    if u[6] < 0.5:
      want = want[torch.from_numpy(rng.permutation(channels))]
    got = transforms.photometric_distort(image, np.random.default_rng(seed))
    assert got.shape == image.shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, _numpy(want))
    changed += not np.array_equal(got, image)
  assert changed > 12


# ----------------------------------------------------------------------------- zoom_out and iou_crop


def _instances(h=40, w=56):
  """Four rectangles, mask value = slot + 1, an image whose red/green channels are x/y (so a crop's offset
  is readable from its pixels), and their boxes (the fourth slot padding)."""
  boxes = np.array([[2, 3, 20, 15], [30, 5, 52, 34], [8, 22, 26, 38], [0, 0, 0, 0]], np.float32)
  mask = np.zeros((h, w), np.int32)
  for i, (x1, y1, x2, y2) in enumerate(boxes[:3].astype(int)):
    mask[y1:y2, x1:x2] = i + 1
  ys, xs = np.mgrid[:h, :w]
  image = np.stack([xs, ys, 40 * mask], -1).astype(np.uint8)
  return {"image": image, "segmentation": mask, "boxes": boxes, "boxes_valid": np.array([1, 1, 1, 0], bool)}


def _region(mask, value):
  ys, xs = np.nonzero(mask == value)
  return None if not len(ys) else np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_zoom_out_places_the_image_on_a_mean_canvas_as_documented():
  example = _instances()
  fill = np.array([11, 22, 33], np.uint8)
  zoomed = 0
  for seed in range(16):
    rng = np.random.default_rng(seed)
    out = geometry.zoom_out(example, KINDS, rng, fill, IGNORE, (1.0, 4.0))
    rng = np.random.default_rng(seed)
    if rng.random() >= 0.5:
      assert out is example
      continue
    zoomed += 1
    r = 1.0 + 3.0 * rng.random()
    cw, ch = int(56 * r), int(40 * r)
    a, b = rng.random(2)
    left, top = int((cw - 56) * a), int((ch - 40) * b)
    assert out["image"].shape == (ch, cw, 3) and out["segmentation"].shape == (ch, cw)
    np.testing.assert_array_equal(out["image"][top:top + 40, left:left + 56], example["image"])
    outside = np.ones((ch, cw), bool)
    outside[top:top + 40, left:left + 56] = False
    assert (out["image"][outside] == fill).all() and (out["segmentation"][outside] == IGNORE).all()
    for i in range(3):
      np.testing.assert_array_equal(out["boxes"][i], _region(out["segmentation"], i + 1))
    np.testing.assert_array_equal(out["boxes_valid"], example["boxes_valid"])
  assert 4 <= zoomed <= 12


def test_iou_crop_keeps_boxes_whose_centres_stay_and_moves_them_with_the_pixels():
  example = _instances()
  cropped = 0
  for seed in range(60):
    out = geometry.iou_crop(example, KINDS, np.random.default_rng(seed))
    if out is example:
      continue
    cropped += 1
    h, w = out["segmentation"].shape
    left, top = int(out["image"][0, 0, 0]), int(out["image"][0, 0, 1])
    assert 0.3 * 56 - 1 <= w <= 56 and 0.3 * 40 - 1 <= h <= 40 and 0.5 <= w / h <= 2.0
    np.testing.assert_array_equal(out["segmentation"], example["segmentation"][top:top + h, left:left + w])
    centres = (example["boxes"][:, :2] + example["boxes"][:, 2:]) / 2
    inside = ((left < centres[:, 0]) & (centres[:, 0] < left + w) & (top < centres[:, 1])
              & (centres[:, 1] < top + h) & example["boxes_valid"])
    assert inside.any()
    np.testing.assert_array_equal(out["boxes_valid"], inside)
    for i in np.flatnonzero(inside):
      np.testing.assert_array_equal(out["boxes"][i], _region(out["segmentation"], i + 1))   # clipped, exact
  assert 20 <= cropped <= 58            # the 1.0 option (1 in 7 per round) leaves some examples as they are
  empty = {**example, "boxes_valid": np.zeros(4, bool)}
  assert geometry.iou_crop(empty, KINDS, np.random.default_rng(0)) is empty


def test_iou_crop_honours_the_drawn_minimum_iou():
  """With only the 0.9 option, every crop overlaps some kept box by IoU >= 0.9."""
  example = _instances()
  crops = 0
  for seed in range(10):
    out = geometry.iou_crop(example, KINDS, np.random.default_rng(seed), options=(0.9,), trials=200)
    if out is example:
      continue
    crops += 1
    h, w = out["segmentation"].shape
    left, top = int(out["image"][0, 0, 0]), int(out["image"][0, 0, 1])
    ious = geometry.box_iou(example["boxes"][out["boxes_valid"]], (left, top, left + w, top + h))
    assert ious.max() >= 0.9
  assert crops >= 5


# ----------------------------------------------------------------------------- fixed output sizes


@pytest.mark.parametrize("hw", [(375, 500), (500, 333), (480, 640), (100, 900)])
def test_fit_with_a_shorter_side_is_torchvisions_min_max_size(hw):
  transform = GeneralizedRCNNTransform(800, 1333, [0.0] * 3, [1.0] * 3).eval()
  images, _ = transform([torch.zeros(3, *hw)])
  theirs = tuple(images.image_sizes[0])
  ours = geometry.fitted_size(hw, 1333, shorter=800)
  assert all(abs(a - b) <= 1 for a, b in zip(ours, theirs)), (ours, theirs)
  assert geometry.fitted_size(hw, 1333) == tuple(round(s * 1333 / max(hw)) for s in hw)


def _cfg(name="digits_det", **overrides):
  cfg = data.default_data_config()
  cfg.update(dict(name=name, normalize="unit"))
  cfg.update(overrides)
  return cfg


def test_stretch_and_shorter_side_resizes_in_eval_batches():
  test = canvas.digits_canvas_splits()["test"]
  stretched = next(iter(data.eval_iterator(_cfg(image_size=(32, 48), resize="stretch"), global_batch_size=4)))
  np.testing.assert_allclose(stretched["boxes"], test["boxes"][:4] * np.float32([0.75, 0.5, 0.75, 0.5]),
                             rtol=1e-6)
  np.testing.assert_array_equal(stretched["source_hw"], [[64, 64]] * 4)
  limited = next(iter(data.eval_iterator(_cfg(image_size=96, resize_shorter=48), global_batch_size=4)))
  np.testing.assert_allclose(limited["boxes"], test["boxes"][:4] * 0.75, rtol=1e-6)   # 64 -> 48, then padded
  assert (limited["image"][:, 48:] == 0).all() and (limited["image"][:, :, 48:] == 0).all()


# ----------------------------------------------------------------------------- through the pipeline


@pytest.fixture
def toy_objects():
  """Digit canvases whose mask holds each digit's class + 1, with its boxes given in shuffled slots with
  invalid slots between them (the pipeline compacts them, so slot alignment of the classes is tested)."""
  a = canvas.digits_canvas_splits()["train"]
  n, m = 24, 6
  rng = np.random.default_rng(0)
  boxes, classes, valid = np.zeros((n, m, 4), np.float32), np.zeros((n, m), np.int32), np.zeros((n, m), bool)
  mask = np.zeros((n, 64, 64), np.uint8)
  for i in range(n):
    slots = rng.permutation(m)
    for j, slot in enumerate(np.flatnonzero(a["valid"][i])):
      boxes[i, slots[j]], classes[i, slots[j]], valid[i, slots[j]] = a["boxes"][i, slot], j, True
      x1, y1, x2, y2 = a["boxes"][i, slot].astype(int)
      mask[i, y1:y2, x1:x2][a["segmentation"][i, y1:y2, x1:x2] > 0] = j + 1
  arrays = {"image": np.repeat(a["image"][:n], 3, axis=-1), "segmentation": mask, "boxes": boxes,
            "boxes_valid": valid, "box_classes": classes}
  info = data.DatasetInfo("toy_objects", 5, (64, 64, 3), True, "train", "test", None, max_boxes=4,
                          fields={"image": "image", "segmentation": "mask", "boxes": "boxes",
                                  "box_classes": "box_class"})
  sources.register_embedded(info, lambda: {"train": arrays, "test": arrays})
  yield
  sources._INFOS.pop("toy_objects", None)
  sources._EMBEDDED_LOADERS.pop("toy_objects", None)


def _ssd_cfg(**overrides):
  return _cfg("toy_objects", image_size=(48, 40), resize="stretch", augment="photometric,zoom_out,iou_crop,flip",
              zoom_out_range=(1.0, 2.0), **overrides)


def test_ssd_recipe_keeps_every_box_on_its_object(toy_objects):
  checked = 0
  for batch in [next(it) for it in [data.train_iterator(_ssd_cfg(), global_batch_size=8, seed=3)] for _ in range(6)]:
    for mask, boxes, valid, classes in zip(batch["segmentation"], batch["boxes"], batch["boxes_valid"],
                                           batch["box_classes"]):
      for slot in np.flatnonzero(valid):
        region = _region(mask, classes[slot] + 1)
        if region is None:      # a sliver left by the crop that nearest sampling does not show
          assert min(boxes[slot, 2:] - boxes[slot, :2]) < 2
          continue
        np.testing.assert_allclose(boxes[slot], region, atol=2.0)
        checked += 1
  assert checked > 60


def test_ssd_recipe_is_deterministic_by_seed_and_process_count(toy_objects):
  cfg = _ssd_cfg()
  take = lambda it: [next(it) for _ in range(3)]
  first = take(data.train_iterator(cfg, global_batch_size=8, seed=7))
  chex.assert_trees_all_equal(first, take(data.train_iterator(cfg, global_batch_size=8, seed=7)))
  other = take(data.train_iterator(cfg, global_batch_size=8, seed=8))
  assert not np.array_equal(first[0]["boxes"], other[0]["boxes"])
  shards = [take(data.train_iterator(cfg, global_batch_size=8, seed=7, process_index=p, process_count=2))
            for p in range(2)]
  for t in range(3):
    chex.assert_trees_all_equal({k: np.concatenate([s[t][k] for s in shards]) for k in first[t]}, first[t])
  it = data.train_iterator(cfg, global_batch_size=8, seed=7)
  next(it)
  state = json.loads(json.dumps(it.get_state()))
  resumed = data.train_iterator(cfg, global_batch_size=8, seed=7)
  resumed.set_state(state)
  chex.assert_trees_all_equal(take(resumed)[:2], first[1:])


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("name, override, message", [
    ("digits_det", dict(resize="crop"), "data.resize must be one of fit, stretch, got 'crop'"),
    ("digits_det", dict(resize="stretch", resize_shorter=32), r"data.resize_shorter=32 limits the shorter side"),
    ("digits_det", dict(zoom_out_range=(0.5, 2.0)), r"data.zoom_out_range must be a pair \(min, max\) with 1 <="),
    ("digits_det", dict(max_boxes=-1), "data.max_boxes must be an integer >= 0"),
    ("digits_seg", dict(augment="iou_crop"), "iou_crop chooses crops by their overlap with boxes; 'digits_seg' has"),
    ("digits", dict(augment="flip,zoom_out"), "zoom_out is for datasets with masks or boxes; 'digits' has none"),
    ("digits", dict(augment="iou_crop"), "iou_crop is for datasets with masks or boxes"),
])
def test_bad_detection_config_values(name, override, message):
  with pytest.raises(UserError, match=message) as err:
    data.resolve(_cfg(name, **override))
  assert "\n" not in str(err.value)


def test_photometric_also_serves_classification():
  cfg = _cfg("digits", augment="photometric,flip")
  assert data.resolve(cfg).augment == ("photometric", "flip")
  batch = next(data.train_iterator(cfg, global_batch_size=4, seed=0))
  assert batch["image"].shape == (4, 8, 8, 1)
