"""Instance masks in the detection task: COCO's segm evaluation against pycocotools on hand-made cases, masks
turned into RLEs per eval batch (also when batches come gathered from several processes), and a tiny Mask R-CNN
trained and evaluated on digits_inst through the one trainer with mask AP logged."""
import jax
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from experiments.configs.common import detection_config
from jaxcnn import data as data_lib
from jaxcnn.eval import detection as det_eval
from jaxcnn.tasks.base import Task
from jaxcnn.tasks.detection import Detection
from jaxcnn.train import train_and_evaluate
from jaxcnn.train.trainer import evaluate
from jaxcnn.train.writers import read_metrics

H, W = 32, 40


def square(y, x, side=10, hw=(H, W)):
  mask = np.zeros(hw, bool)
  mask[y:y + side, x:x + side] = True
  return mask


def case(shift=0):
  """One image, one 10x10 ground-truth square of class 1 (and an unused slot); one detection of the same square
  shifted `shift` pixels right (and two invalid slots)."""
  gt = {"boxes": np.array([[[5, 5, 15, 15], [0, 0, 0, 0]]], np.float32), "labels": np.array([[1, 0]]),
        "valid": np.array([[True, False]]), "masks": np.stack([square(5, 5), np.ones((H, W), bool)])[None]}
  dt = {"boxes": np.array([[[5 + shift, 5, 15 + shift, 15], [0, 0, 4, 4], [0, 0, 4, 4]]], np.float32),
        "scores": np.array([[0.9, 0.8, 0.7]]), "labels": np.array([[1, 1, 1]]),
        "valid": np.array([[True, False, False]]),
        "masks": np.stack([square(5, 5 + shift), square(0, 0, 4), square(0, 0, 4)])[None]}
  return dt, gt


def pycocotools_segm(dt, gt):
  """COCOeval(iouType='segm') on COCO objects built by hand from the same masks, as COCO's JSON path does."""
  def rle(mask):
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))

  coco_gt = COCO()
  coco_gt.dataset = {"images": [{"id": 1, "height": H, "width": W}],
                     "categories": [{"id": c} for c in (1, 2)],
                     "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "segmentation": rle(gt["masks"][0, 0]),
                                      "area": float(gt["masks"][0, 0].sum()), "bbox": [5, 5, 10, 10], "iscrowd": 0}]}
  coco_gt.createIndex()
  coco_dt = coco_gt.loadRes([{"image_id": 1, "category_id": 2, "segmentation": rle(dt["masks"][0, 0]),
                              "score": 0.9}])
  evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  return evaluator.stats


@pytest.mark.parametrize("shift, expected", [
    (0, (1.0, 1.0, 1.0)),
    # IoU = 80 / 120 = 2/3: a match at the thresholds .50, .55, .60, .65 only, so AP = 4/10, AP50 1, AP75 0
    (2, (0.4, 1.0, 0.0)),
    (6, (0.0, 0.0, 0.0)),   # IoU = 40 / 160
])
def test_mask_ap_is_pycocotools_segm_on_hand_made_cases(shift, expected):
  dt, gt = case(shift)
  ours = det_eval.coco_metrics(dt, gt, 2, iou_type="segm", all_stats=True)
  theirs = pycocotools_segm(dt, gt)
  np.testing.assert_allclose([ours[k] for k in det_eval.COCO_STAT_NAMES],
                             [s if s > -1 else np.nan for s in theirs], atol=1e-12)
  np.testing.assert_allclose([ours["map"], ours["map50"], ours["map75"]], expected, atol=1e-9)
  full = det_eval.evaluate_detections(dt, gt, 2)
  assert (full["mask_map"], full["mask_map50"], full["mask_map75"]) == (ours["map"], ours["map50"], ours["map75"])
  assert full["map"] == pytest.approx(expected[0])   # the boxes are shifted alike
  # RLEs made once per batch give the same numbers as the pixels
  rles = {**dt, "masks": det_eval.masks_to_rle(dt["masks"], dt["valid"])}
  np.testing.assert_equal(det_eval.coco_metrics(rles, {**gt, "masks": det_eval.masks_to_rle(gt["masks"], gt["valid"])},
                                                2, iou_type="segm"), det_eval.coco_metrics(dt, gt, 2, iou_type="segm"))


def test_mask_areas_are_pixel_counts_in_the_source_frame_and_crowds_are_ignored():
  dt, gt = case(0)
  # 100 mask pixels (a box of 100 too): small; in a source frame 4x larger each way, 1600: medium
  assert np.isnan(det_eval.coco_metrics(dt, gt, 2, iou_type="segm")["map_medium"])
  framed = det_eval.coco_metrics(dt, gt, 2, iou_type="segm", area_frame=4.0)
  assert framed["map_medium"] == pytest.approx(1.0) and np.isnan(framed["map_small"])
  # a thin L-shaped ground truth (19 pixels) in a 10x10 box: in that frame its box is medium (1600) but its
  # mask small (304), and the mask's pixel count is the object's area in the box evaluation too (COCO's)
  thin = np.zeros((H, W), bool)
  thin[5:15, 5] = thin[14, 5:15] = True
  gt_thin = {**gt, "masks": np.stack([thin, thin])[None]}
  boxes = det_eval.evaluate_detections({**dt, "masks": gt_thin["masks"][:, [0, 0, 0]]}, gt_thin, 2, area_frame=4.0)
  assert boxes["map_small"] == pytest.approx(1.0) and np.isnan(boxes["map_medium"]) and boxes["mask_map"] > 0.99
  no_masks = det_eval.evaluate_detections(dt, {k: v for k, v in gt_thin.items() if k != "masks"}, 2, area_frame=4.0)
  assert no_masks["map_medium"] == pytest.approx(1.0) and np.isnan(no_masks["map_small"])
  # a crowd region (image 2: 20 x 30) with a 10x10 detection inside it: ignored, not a false positive
  crowd = {k: np.concatenate([v, v], 0) for k, v in gt.items()}
  crowd["masks"][1, 0] = square(0, 0, 20) | square(0, 10, 20)
  crowd["boxes"][1, 0] = [0, 0, 30, 20]
  crowd["crowd"] = np.array([[False, False], [True, False]])
  two = {k: np.concatenate([v, v], 0) for k, v in dt.items()}
  assert det_eval.coco_metrics(two, crowd, 2, iou_type="segm")["map"] == pytest.approx(1.0)
  crowd["crowd"][:] = False   # now a positive the detection misses (IoU 1/6) and a false positive
  assert det_eval.coco_metrics(two, crowd, 2, iou_type="segm")["map"] < 0.6
  with pytest.raises(ValueError, match="binary"):
    det_eval.masks_to_rle(dt["masks"].astype(np.float32))
  with pytest.raises(ValueError, match="needs ground truth 'masks'"):
    det_eval.coco_metrics(dt, {k: v for k, v in gt.items() if k != "masks"}, 2, iou_type="segm")


# ----------------------------------------------------------------------------- per batch, over processes


def test_masks_become_rles_per_batch_and_match_one_pass_over_the_split():
  """evaluate() hands each gathered global batch to host_batch: masks arrive as RLEs of the real examples only,
  whatever the batching, and give the numbers of one direct evaluation of the whole split's pixels."""
  rng = np.random.default_rng(0)
  n, d, m = 7, 3, 2
  gt_masks = np.stack([[square(*rng.integers(0, 20, 2), side=int(rng.integers(4, 12))) for _ in range(m)]
                       for _ in range(n)])
  shifts = rng.integers(-2, 3, (n, d, 2))
  dt_masks = np.stack([[np.roll(gt_masks[i, j % m], tuple(shifts[i, j]), (0, 1)) for j in range(d)]
                       for i in range(n)])
  split = {"boxes": rng.uniform(0, 20, (n, d, 4)).astype(np.float32) + [0, 0, 8, 8],
           "scores": rng.uniform(0, 1, (n, d)), "labels": rng.integers(0, 2, (n, d)),
           "valid": rng.uniform(size=(n, d)) < 0.8, "masks": dt_masks,
           "gt_boxes": np.tile(np.array([[0, 0, 20, 20]], np.float32), (n, m, 1)),
           "gt_labels": rng.integers(0, 2, (n, m)), "gt_valid": rng.uniform(size=(n, m)) < 0.9,
           "gt_masks": gt_masks}
  split["masks"] &= split["valid"][:, :, None, None]
  split["gt_masks"] &= split["gt_valid"][:, :, None, None]
  c = detection_config()
  c.model.name = "maskrcnn_resnet50_fpn"
  c.data.name, c.data.image_size = "digits_inst", 64
  task = Detection(c, data_lib.dataset_info("digits_inst"))
  assert task.mask_field == "box_masks"
  seen = []
  host_batch = task.host_batch
  task.host_batch = lambda outputs: seen.append(host_batch(outputs)) or seen[-1]

  def batches(global_batch, processes):
    """Global batches as the runners return them: each process's share gathered in process order, padded."""
    for start in range(0, n, global_batch):
      shares = []
      for p in range(processes):
        local = global_batch // processes
        idx = np.arange(start + p * local, start + (p + 1) * local)
        real = idx < n
        share = {k: np.where(real.reshape((-1,) + (1,) * (v.ndim - 1)), v[np.minimum(idx, n - 1)], 0).astype(v.dtype)
                 for k, v in split.items()}
        shares.append({**share, "mask": real.astype(np.float32)})
      yield {f"per_example/{k}": np.concatenate([s[k] for s in shares]) for k in shares[0]}

  direct = det_eval.evaluate_detections({k: split[k] for k in ("boxes", "scores", "labels", "valid", "masks")},
                                        {k[3:]: v for k, v in split.items() if k.startswith("gt_")}, 10)
  assert 0 < direct["mask_map"] < 1
  for global_batch, processes in ((4, 2), (3, 1), (8, 4)):
    seen.clear()
    metrics = evaluate(task, batches(global_batch, processes), lambda b: b)
    assert len(seen) == -(-n // global_batch)
    for out in seen:
      assert out["masks"].dtype == object and out["gt_masks"].dtype == object
      real = out["mask"] > 0
      assert all(r is None for r in out["masks"][~real].flat)   # padding examples are not encoded
      np.testing.assert_array_equal(np.not_equal(out["masks"][real], None), out["valid"][real])
    for key in ("map", "map50", "mask_map", "mask_map50", "mask_map75", "voc_map50"):
      assert metrics[f"eval/{key}"] == pytest.approx(direct[key], nan_ok=True), (key, global_batch)


def test_the_default_hook_keeps_per_example_outputs_as_they_are():
  outputs = {"x": np.arange(3), "mask": np.ones(3)}
  assert Task.host_batch(None, outputs) is outputs


# ----------------------------------------------------------------------------- a tiny Mask R-CNN through the trainer


def config():
  """A tiny Mask R-CNN (ResNet-18 C3-C5, 16-channel FPN, one 16-wide mask conv) on 64x64 digits_inst canvases."""
  c = detection_config()
  c.model.name = "maskrcnn_resnet50_fpn"
  with c.model.unlocked():
    c.model.update(backbone_name="resnet18", returned_layers=(2, 3, 4), fpn_channels=16, representation_size=32,
                   anchor_sizes=((16,), (32,), (64,), (128,)), rpn_pre_nms_top_n_train=100,
                   rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20,
                   box_batch_size_per_image=32, detections_per_img=10, box_score_thresh=0.0,
                   mask_layers=(16,), mask_dim_reduced=16)
  c.data.name, c.data.image_size, c.data.eval_split = "digits_inst", 64, "test[:12]"
  c.train.steps, c.train.batch_size, c.train.log_every = 2, 4, 1
  c.eval.every, c.eval.batch_size = 2, 8
  c.checkpoint.every, c.checkpoint.use_async, c.checkpoint.keep_best = 0, False, False
  c.optim.name, c.optim.lr = "adam", 1e-4
  c.detection.pictures = 0
  return c


def test_a_tiny_mask_rcnn_trains_on_digits_inst_and_logs_mask_ap(tmp_path):
  c = config()
  task = Detection(c, data_lib.dataset_info("digits_inst"))
  batch = next(data_lib.train_iterator(c.data, global_batch_size=2, seed=0))
  targets = Detection.targets(batch, task.mask_field)
  assert targets["masks"].shape == (2, 4, 64, 64) and targets["masks"].dtype == np.uint8
  assert "masks" not in Detection.targets(batch)
  summary = train_and_evaluate(c, str(tmp_path), devices=jax.devices()[:1])
  assert summary["headline_metric"] == "eval/map"
  for key in ("eval/map", "eval/map50", "eval/mask_map", "eval/mask_map50", "eval/mask_map75"):
    assert 0.0 <= summary[key] <= 1.0, key
  records = [r for r in read_metrics(str(tmp_path / "metrics.jsonl")) if "train/loss_mask" in r]
  assert len(records) == 2 and all(np.isfinite(r["train/loss_mask"]) and r["train/loss_mask"] > 0 for r in records)
