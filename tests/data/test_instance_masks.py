"""Instance masks (field kind 'box_mask'): digits_inst's masks are the ink of each box, every geometric transform
moves them with the image and their box, they enter, drop and pad with their boxes, and bad ones are one-line
errors naming the example."""
import chex
import numpy as np
import pytest

from jaxcnn import data
from jaxcnn.data import canvas, detection, geometry, sources
from jaxcnn.errors import UserError

KINDS = canvas.INST_INFO.field_kinds
INK = canvas.INK_THRESHOLD


@pytest.fixture(scope="module")
def examples():
  """The first 6 test canvases of digits_inst as the source gives them (64 x 64, integer tight boxes)."""
  source = data.get_source("digits_inst", "test")
  return [source[i] for i in range(6)]


def centres_outside(example, tol=1e-3):
  """How many mask pixels of valid slots have their centre outside their slot's box (by more than `tol`)."""
  bad = 0
  for m in np.flatnonzero(example["boxes_valid"]):
    rows, cols = np.nonzero(example["box_masks"][m])
    x1, y1, x2, y2 = example["boxes"][m]
    bad += int(np.sum((cols + 0.5 < x1 - tol) | (cols + 0.5 > x2 + tol) | (rows + 0.5 < y1 - tol)
                      | (rows + 0.5 > y2 + tol)))
  return bad


def ink_of_masks(example):
  return example["box_masks"].max(0) > 0


# ----------------------------------------------------------------------------- the dataset


def test_digits_inst_is_digits_det_with_the_ink_of_each_box():
  info = data.dataset_info("digits_inst")
  assert info.field_kinds["box_masks"] == "box_mask" and info.max_boxes == 4 and info.num_classes == 10
  assert "digits_inst" in sources.embedded_names()
  inst = canvas.digits_canvas_splits(instance_masks=True)["test"]
  det = canvas.digits_canvas_splits()["test"]
  assert set(det) == {"image", "segmentation", "boxes", "classes", "valid"}   # unchanged for digits_seg/_det
  for key in det:
    np.testing.assert_array_equal(inst[key], det[key], err_msg=key)
  masks = inst["instance_masks"]
  assert masks.dtype == np.uint8 and masks.shape == (500, 4, 64, 64) and set(np.unique(masks)) == {0, 1}
  assert not masks[~inst["valid"]].any()
  assert (masks.sum(1) <= 1).all()                                          # digits never overlap
  np.testing.assert_array_equal(masks.max(1), inst["segmentation"] > 0)    # their union is the ink
  for n, m in zip(*np.nonzero(inst["valid"])):
    rows, cols = np.nonzero(masks[n, m])
    np.testing.assert_array_equal([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], inst["boxes"][n, m])
    assert (inst["segmentation"][n][masks[n, m] > 0] == inst["classes"][n, m] + 1).all()


# ----------------------------------------------------------------------------- geometry


def test_flip_crop_pad_and_place_move_masks_exactly_as_the_image(examples):
  """No resampling: the masks' union stays the image's ink, and every mask pixel centre stays inside its box."""
  rng = np.random.default_rng(0)
  for example in examples:
    assert centres_outside(example, tol=0) == 0
    moved = [geometry.flip(example, KINDS), geometry.crop(example, KINDS, 10, 7, (40, 50)),
             geometry.pad(example, KINDS, (70, 80), 255), geometry.place(example, KINDS, 5, 9, (90, 100), 0, 255),
             geometry.zoom_out(example, KINDS, rng, 0, 255, p=1.0),
             geometry.random_crop(example, KINDS, rng, (80, 48), 255)]
    for out in moved:
      assert out["box_masks"].dtype == np.uint8
      assert out["box_masks"].shape == (4,) + out["image"].shape[:2]
      np.testing.assert_array_equal(ink_of_masks(out), out["image"][..., 0] >= INK)
      assert centres_outside(out, tol=0) == 0
      np.testing.assert_array_equal(out["box_classes"], example["box_classes"])


def test_a_crop_that_invalidates_a_box_keeps_its_slot_and_mask_aligned(examples):
  example = examples[0]
  valid = np.flatnonzero(example["boxes_valid"])
  x1, y1, x2, y2 = example["boxes"][valid[0]]
  # a window right of the first box: that box loses its area, the others keep their slots
  out = geometry.crop(example, KINDS, 0, int(x2), (64, 64 - int(x2)))
  assert not out["boxes_valid"][valid[0]] and not out["box_masks"][valid[0]].any()
  for m in valid[1:]:
    np.testing.assert_array_equal(out["box_masks"][m], example["box_masks"][m][:, int(x2):])
    assert out["boxes_valid"][m] == (example["boxes"][m][2] > x2)


@pytest.mark.parametrize("size", [(96, 80), (41, 37), (32, 64)])
def test_one_resize_keeps_every_mask_pixel_centre_in_its_box_and_equals_the_label_map_resize(examples, size):
  for example in examples:
    out = geometry.resize(example, KINDS, size)
    assert out["box_masks"].shape == (4,) + size and centres_outside(out) == 0
    seg = geometry.resize_mask((example["box_masks"].max(0)).astype(np.uint8), size)
    np.testing.assert_array_equal(ink_of_masks(out), seg > 0)   # the same pixel map as a 'mask' field


def test_fit_and_iou_crop_move_masks_with_their_boxes(examples):
  rng = np.random.default_rng(3)
  cropped = 0
  for example in examples * 4:
    out = geometry.iou_crop(example, KINDS, rng)
    cropped += out["image"].shape != example["image"].shape
    np.testing.assert_array_equal(ink_of_masks(out), out["image"][..., 0] >= INK)
    assert centres_outside(out, tol=0) == 0
    fitted = geometry.fit(out, KINDS, (48, 48), 255)
    assert fitted["box_masks"].shape == (4, 48, 48) and centres_outside(fitted) == 0
    h, w = geometry.fitted_size(out["image"].shape[:2], (48, 48))
    assert not fitted["box_masks"][:, h:].any() and not fitted["box_masks"][:, :, w:].any()   # padding is 0
  assert cropped >= 4


# ----------------------------------------------------------------------------- the pipeline


def _cfg(**overrides):
  cfg = data.default_data_config()
  cfg.update(dict(name="digits_inst", image_size=48, normalize="unit", num_threads=2))
  cfg.update(overrides)
  return cfg


def test_training_batches_carry_masks_inside_their_boxes_at_the_output_size():
  cfg = _cfg(augment="zoom_out,iou_crop,flip,scale,crop")
  spec = data.element_spec(cfg, 8)
  assert (spec["box_masks"].shape, spec["box_masks"].dtype) == ((8, 4, 48, 48), np.uint8)
  it = data.train_iterator(cfg, global_batch_size=8, seed=2)
  invalidated = 0
  for _ in range(3):
    batch = next(it)
    chex.assert_trees_all_equal_shapes_and_dtypes(batch, {k: np.zeros(v.shape, v.dtype) for k, v in spec.items()})
    assert set(np.unique(batch["box_masks"])) <= {0, 1}
    for i in range(8):
      example = {k: batch[k][i] for k in ("boxes", "boxes_valid", "box_masks")}
      assert centres_outside(example) == 0
      invalidated += int(np.sum(~batch["boxes_valid"][i] & batch["box_masks"][i].any((1, 2))))
      on = ink_of_masks(example)
      assert not (on & (batch["image"][i, ..., 0] == 0)).any()
      if on.any():   # the masks sit on the digits' ink (bilinear image, nearest masks: not pixel-exact)
        assert (batch["image"][i, ..., 0][on] >= INK / 255).mean() > 0.5
  assert invalidated > 0   # crops did invalidate boxes; their masks stayed in their slots, ignored


def test_eval_batches_fit_masks_and_pad_positions_with_zero_masks():
  batches = list(data.eval_iterator(_cfg(eval_split="test[:5]", image_size=(32, 48)), global_batch_size=4))
  assert len(batches) == 2
  source = data.get_source("digits_inst", "test[:5]")
  for b, batch in enumerate(batches):
    assert batch["box_masks"].shape == (4, 4, 32, 48) and batch["box_masks"].dtype == np.uint8
    for i in range(4):
      if batch["mask"][i] == 0:
        assert not batch["box_masks"][i].any() and not batch["boxes_valid"][i].any()
        continue
      want = geometry.resize_box_masks(source[4 * b + i]["box_masks"], (32, 32))
      np.testing.assert_array_equal(batch["box_masks"][i, :, :, :32], want)   # 64x64 fitted to 32x32, then padded
      assert not batch["box_masks"][i, :, :, 32:].any()
  assert batches[1]["mask"].tolist() == [1, 0, 0, 0]


# ----------------------------------------------------------------------------- entering with the boxes


def test_masks_are_dropped_with_their_boxes_and_padded_with_zeros():
  masks = np.zeros((4, 6, 8), np.uint8)
  for m in range(4):
    masks[m, m, m] = 1
  boxes = np.array([[0, 0, 2, 2], [1, 1, 1, 5], [2, 2, 4, 4], [30, 3, 40, 5]], np.float32)   # 2nd, 4th: no area
  out_boxes, valid, columns = detection.enter_boxes(
      boxes, np.array([1, 1, 1, 1], bool), {"cls": ("box_class", [0, 1, 2, 3]), "masks": ("box_mask", masks == 1)},
      (6, 8), 5, 6, "example 3")
  assert valid.tolist() == [True, True, False, False, False, False]
  assert columns["cls"].tolist() == [0, 2, 0, 0, 0, 0]
  assert columns["masks"].dtype == np.uint8 and columns["masks"].shape == (6, 6, 8)
  np.testing.assert_array_equal(columns["masks"][:2], masks[[0, 2]])
  assert not columns["masks"][2:].any()
  # a source's own validity drops rows the same way
  _, valid, columns = detection.enter_boxes(boxes[[0, 2]], np.array([False, True]),
                                            {"masks": ("box_mask", masks[[0, 2], ..., None])}, (6, 8), 5, 3, "x")
  np.testing.assert_array_equal(columns["masks"][0], masks[2])
  assert valid.tolist() == [True, False, False] and not columns["masks"][1:].any()
  # no boxes: every slot padding, whatever empty array stands for the masks
  for empty in (np.zeros((0, 6, 8)), np.zeros(0)):
    _, valid, columns = detection.enter_boxes(np.zeros((0, 4)), None, {"masks": ("box_mask", empty)}, (6, 8), 5, 2,
                                              "x")
    assert not valid.any() and columns["masks"].shape == (2, 6, 8)


@pytest.mark.parametrize("masks, message", [
    (np.zeros((2, 6, 7), np.uint8), r"^example 3: 'masks' has shape \(2, 6, 7\); want \[N, 6, 8\]: one mask of "
                                    r"the image's size \(6x8\) per box$"),
    (np.full((2, 6, 8), 255, np.uint8), r"^example 3: 'masks' holds value 255; want 0/1 \(or bool\) instance "
                                        r"masks$"),
    (np.zeros((3, 6, 8), np.uint8), r"^example 3: 2 boxes but per-box fields of other lengths \{'masks': 3\}"),
])
def test_bad_masks_are_one_line_errors_naming_the_example(masks, message):
  with pytest.raises(UserError, match=message):
    detection.enter_boxes(np.array([[0, 0, 2, 2], [1, 1, 3, 3]], np.float32), None, {"masks": ("box_mask", masks)},
                          (6, 8), 5, 4, "example 3")


@pytest.fixture
def toy_inst():
  """A registered dataset with instance masks whose example 1 has masks of the wrong size."""
  class Source:
    def __len__(self):
      return 2

    def __getitem__(self, i):
      h = 10 + int(i)
      return {"image": np.zeros((h, 12, 1), np.uint8), "boxes": np.array([[1, 1, 4, 4]], np.float32),
              "box_classes": np.array([0]), "box_masks": np.ones((1, 10, 12), np.uint8)}

    def describe(self, i):
      return f"toy file {int(i)}.png"

  info = data.DatasetInfo("toy_inst", 1, (10, 12, 1), False, "train", "test", None,
                          fields={"image": "image", "boxes": "boxes", "box_classes": "box_class",
                                  "box_masks": "box_mask"}, max_boxes=2)
  data.register_source(info, lambda split, data_dir: Source())
  yield
  for table in (sources._INFOS, sources._OPENERS):
    table.pop("toy_inst", None)
  sources._open_registered.cache_clear()


def test_the_pipeline_names_the_example_with_bad_masks(toy_inst):
  cfg = _cfg(name="toy_inst", image_size=(10, 12), data_dir="/toy")
  with pytest.raises(UserError, match=r"^toy file 1.png \(dataset 'toy_inst'\): 'box_masks' has shape "
                                      r"\(1, 10, 12\); want \[N, 11, 12\]") as err:
    list(data.eval_iterator(cfg, global_batch_size=2))
  assert "\n" not in str(err.value)
