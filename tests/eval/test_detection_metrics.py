"""Detection metrics against pycocotools' own JSON path, hand-computed VOC examples and py-faster-rcnn's
voc_eval written out as loops; detection pictures."""
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxcnn.eval.detection import (BOX_COLORS, COCO_STAT_NAMES, GT_COLOR, coco_metrics, draw_detections,
                                   evaluate_detections, save_detection_grid, voc_ap, voc_map)

K = 4


def random_case(seed, n=10, m=6, d=24, k=K, crowd=True, difficult=False):
  """Ground truth with empty images, crowd boxes and a class never labelled (k - 1, yet detected);
  detections: jittered copies of the ground truth (some relabelled), duplicates and random boxes."""
  rng = np.random.default_rng(seed)
  xy = rng.uniform(0, 120, (n, m, 2))
  size = np.exp(rng.uniform(np.log(6), np.log(200), (n, m, 1)))  # small, medium and large boxes
  wh = size * np.exp(rng.uniform(-0.4, 0.4, (n, m, 2)))
  gt = {"boxes": np.concatenate([xy, xy + wh], -1).astype(np.float32),
        "labels": rng.integers(0, k - 1, (n, m)).astype(np.int32),
        "valid": rng.random((n, m)) < 0.7}
  gt["valid"][[1, 4]] = False  # images without ground truth
  if crowd:
    gt["crowd"] = (rng.random((n, m)) < 0.15) & gt["valid"]
  if difficult:
    gt["difficult"] = (rng.random((n, m)) < 0.2) & gt["valid"]
  src = rng.integers(0, m, (n, d))
  boxes = np.take_along_axis(gt["boxes"], src[..., None], 1)
  boxes = boxes + rng.normal(0, 1, boxes.shape) * 0.06 * (boxes[..., 2:] - boxes[..., :2]).repeat(2, -1)
  random_boxes = np.concatenate([xy[:, :1] + rng.uniform(-20, 20, (n, d, 2)),
                                 xy[:, :1] + rng.uniform(30, 90, (n, d, 2))], -1)
  far = rng.random((n, d)) < 0.25
  boxes = np.where(far[..., None], random_boxes, boxes)
  labels = np.take_along_axis(gt["labels"], src, 1)
  labels = np.where(rng.random((n, d)) < 0.15, rng.integers(0, k, (n, d)), labels)
  det = {"boxes": boxes.astype(np.float32), "scores": rng.random((n, d)).astype(np.float32),
         "labels": labels.astype(np.int32), "valid": rng.random((n, d)) < 0.8}
  return det, gt


def reference_coco_stats(tmp_path, det, gt, k=K, difficult_as_crowd=True):
  """pycocotools through its JSON path, with its own ids (image 100 + i, category 10 c + 7)."""
  images, annotations, results = [], [], []
  crowd = np.asarray(gt.get("crowd", np.zeros_like(gt["valid"])))
  if difficult_as_crowd and "difficult" in gt:
    crowd = crowd | gt["difficult"]
  for i in range(len(gt["boxes"])):
    images.append({"id": 100 + i, "width": 640, "height": 480, "file_name": f"{i}.jpg"})
    for j in range(gt["boxes"].shape[1]):
      if gt["valid"][i][j]:
        x1, y1, x2, y2 = [float(v) for v in gt["boxes"][i][j]]
        area = float(gt["area"][i][j]) if "area" in gt else (x2 - x1) * (y2 - y1)
        annotations.append({"id": 1000 + len(annotations), "image_id": 100 + i,
                            "category_id": 10 * int(gt["labels"][i][j]) + 7,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area, "iscrowd": int(crowd[i][j])})
    for j in range(det["boxes"].shape[1]):
      if det["valid"][i][j]:
        x1, y1, x2, y2 = [float(v) for v in det["boxes"][i][j]]
        results.append({"image_id": 100 + i, "category_id": 10 * int(det["labels"][i][j]) + 7,
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(det["scores"][i][j])})
  dataset = {"images": images, "annotations": annotations,
             "categories": [{"id": 10 * c + 7, "name": f"c{c}"} for c in range(k)]}
  (tmp_path / "gt.json").write_text(json.dumps(dataset))
  (tmp_path / "results.json").write_text(json.dumps(results))
  coco_gt = COCO(str(tmp_path / "gt.json"))
  coco_dt = coco_gt.loadRes(str(tmp_path / "results.json"))
  evaluator = COCOeval(coco_gt, coco_dt, "bbox")
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  return np.where(evaluator.stats > -1, evaluator.stats, np.nan)


def stats(metrics):
  return np.array([metrics[name] for name in COCO_STAT_NAMES])


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_metrics_equal_pycocotools_json_path(tmp_path, seed, capsys):
  det, gt = random_case(seed)
  assert gt["crowd"].any() and (det["labels"][det["valid"]] == K - 1).any()
  ours = coco_metrics(det, gt, K, all_stats=True)
  assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed
  reference = reference_coco_stats(tmp_path, det, gt)
  assert 0.05 < ours["map"] < 0.95 and np.isfinite(stats(ours)).all()
  np.testing.assert_array_equal(stats(ours), reference)
  assert list(coco_metrics(det, gt, K)) == ["map", "map50", "map75", "map_small", "map_medium", "map_large",
                                           "mar_100"]


def test_difficult_and_area_reach_cocoeval_as_documented(tmp_path):
  det, gt = random_case(2, difficult=True)
  gt["area"] = 0.6 * (gt["boxes"][..., 2] - gt["boxes"][..., 0]) * (gt["boxes"][..., 3] - gt["boxes"][..., 1])
  for as_crowd in (True, False):
    ours = coco_metrics(det, gt, K, difficult_as_crowd=as_crowd, all_stats=True)
    np.testing.assert_array_equal(stats(ours), reference_coco_stats(tmp_path, det, gt, difficult_as_crowd=as_crowd))
  assert coco_metrics(det, gt, K)["map"] != coco_metrics(det, gt, K, difficult_as_crowd=False)["map"]


def test_area_frame_scales_only_the_area_ranges():
  det, gt = random_case(3)
  frame = np.stack([np.full(10, 2.0), np.linspace(0.5, 3.0, 10)], -1)  # (sy, sx) per image
  scaled = {k: dict(v) for k, v in (("det", det), ("gt", gt))}
  for d in scaled.values():
    d["boxes"] = d["boxes"].astype(np.float64) * np.stack([frame[:, 1], frame[:, 0]] * 2, -1)[:, None]
  np.testing.assert_allclose(stats(coco_metrics(det, gt, K, area_frame=frame, all_stats=True)),
                             stats(coco_metrics(scaled["det"], scaled["gt"], K, all_stats=True)), rtol=1e-12)
  plain, doubled = coco_metrics(det, gt, K), coco_metrics(det, gt, K, area_frame=2.0)
  assert plain["map50"] == doubled["map50"] and plain["map_small"] != doubled["map_small"]


def test_perfect_detections_give_one():
  _, gt = random_case(4, crowd=False)
  det = {"boxes": gt["boxes"], "scores": np.linspace(1, 0.5, gt["valid"].size).reshape(gt["valid"].shape),
         "labels": gt["labels"], "valid": gt["valid"]}
  m = evaluate_detections(det, gt, K)
  for key in ("map", "map50", "map75", "map_small", "map_medium", "map_large", "mar_100", "voc_map50",
              "voc07_map50"):
    assert m[key] == 1.0, key


def test_no_detections_and_no_ground_truth():
  det, gt = random_case(5)
  none = {k: v[:, :0] for k, v in det.items()}
  m = evaluate_detections(none, gt, K)
  assert all(v == 0.0 for v in m.values()), m
  nothing = dict(gt, valid=np.zeros_like(gt["valid"]))
  m = evaluate_detections(det, nothing, K)
  assert set(m) == {"map", "map50", "map75", "map_small", "map_medium", "map_large", "mar_100", "voc_map50",
                    "voc07_map50"}
  assert all(np.isnan(v) for v in m.values()), m
  mean, per_class = voc_map(det, nothing, num_classes=K)
  assert np.isnan(mean) and np.isnan(per_class).all()


def test_labels_outside_the_classes_are_an_error():
  det, gt = random_case(6)
  det["labels"] = np.where(det["valid"], K, 0)  # the detector's label space (1..K) passed by mistake
  with pytest.raises(ValueError, match="outside 0..3"):
    coco_metrics(det, gt, K)
  with pytest.raises(ValueError, match="outside 0..3"):
    voc_map(det, gt, num_classes=K)


# --- PASCAL VOC ----------------------------------------------------------------------------------

def hand_example():
  """Class 0: 4 positives and a difficult box over two images; class 1: one box found; class 2: no box.

  Class 0 in score order: 0.9 TP (g1), 0.8 FP (g1 again), 0.7 on the difficult box (ignored),
  0.6 TP (g3), 0.5 FP (nothing), 0.4 TP (g2); g4 is missed. (recall, precision):
  (1/4, 1), (1/4, 1/2), (2/4, 2/3), (2/4, 1/2), (3/4, 3/5).
  Area: 1/4 * (1 + 2/3 + 3/5) = 17/30. 11 points: t = 0, .1, .2 -> 1; .3, .4, .5 -> 2/3; .6, .7 -> 3/5;
  .8, .9, 1 -> 0: (3 + 2 + 1.2) / 11 = 31/55.
  """
  nan4 = [0, 0, 0, 0]
  gt = {"boxes": np.array([[[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], nan4],
                           [[0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30], nan4]], np.float32),
        "labels": np.array([[0, 0, 1, 0], [0, 0, 0, 0]]),
        "valid": np.array([[True, True, True, False], [True, True, True, False]]),
        "difficult": np.array([[False, False, False, False], [False, False, True, False]])}
  det = {"boxes": np.array([[[1, 0, 11, 10], [0, 1, 10, 11], [40, 40, 45, 45], [20, 21, 30, 31], [50, 50, 60, 60],
                             [0, 0, 8, 8]],
                            [[0, 21, 10, 31], [0, 0, 10, 9], nan4, nan4, nan4, nan4]], np.float32),
         "scores": np.array([[0.9, 0.8, 0.5, 0.4, 0.95, 0.3], [0.7, 0.6, 0, 0, 0, 0]]),
         "labels": np.array([[0, 0, 0, 0, 1, 2], [0, 0, 0, 0, 0, 0]]),
         "valid": np.array([[True] * 6, [True, True, False, False, False, False]])}
  return det, gt


def test_voc_hand_example_area_and_11_points():
  det, gt = hand_example()
  mean, ap = voc_map(det, gt, num_classes=3)
  np.testing.assert_allclose(ap[:2], [17 / 30, 1.0], rtol=1e-12)
  assert np.isnan(ap[2])  # detected, never labelled: left out of the mean
  np.testing.assert_allclose(mean, (17 / 30 + 1) / 2, rtol=1e-12)
  mean07, ap07 = voc_map(det, gt, use_07_metric=True, num_classes=3)
  np.testing.assert_allclose(ap07[:2], [31 / 55, 1.0], rtol=1e-12)
  np.testing.assert_allclose(mean07, (31 / 55 + 1) / 2, rtol=1e-12)
  # without its difficult flag the box is a positive and the 0.7 detection its true positive
  _, ap_plain = voc_map(det, dict(gt, difficult=np.zeros_like(gt["difficult"])), num_classes=3)
  # (1/5, 1), (1/5, 1/2), (2/5, 2/3), (3/5, 3/4), (3/5, 3/5), (4/5, 4/6)
  np.testing.assert_allclose(ap_plain[0], 1 / 5 * (1 + 3 / 4 + 3 / 4 + 4 / 6), rtol=1e-12)
  m = evaluate_detections(det, gt, 3)
  assert m["voc_map50"] == mean and m["voc07_map50"] == mean07


def test_voc_threshold_is_strict_and_plus_one_is_an_option():
  gt = {"boxes": np.array([[[0, 0, 3, 3]]], np.float32), "labels": np.array([[0]]), "valid": np.array([[True]])}
  det = {"boxes": np.array([[[1, 0, 4, 3]]], np.float32), "scores": np.array([[0.9]]), "labels": np.array([[0]]),
         "valid": np.array([[True]])}
  assert voc_map(det, gt)[0] == 0.0  # IoU 6 / 12 = 0.5 exactly: not above the threshold
  assert voc_map(det, gt, plus_one=True)[0] == 1.0  # devkit widths + 1: IoU 12 / 20
  assert voc_map(det, gt, iou_threshold=0.49)[0] == 1.0


def test_voc07_recall_of_exactly_three_tenths_counts_at_point_three():
  recall, precision = np.array([0.1, 0.2, 0.3]), np.array([1.0, 1.0, 1.0])
  assert voc_ap(recall, precision, use_07_metric=True) == 4 / 11  # t = 0, .1, .2, .3
  np.testing.assert_allclose(voc_ap(recall, precision), 0.3, rtol=1e-12)


def py_faster_rcnn_voc_eval(det, gt, classname, ovthresh=0.5, use_07_metric=False, plus_one=True):
  """py-faster-rcnn's voc_eval (lib/datasets/voc_eval.py) from its published description, as loops."""
  recs = {}
  for i in range(len(gt["boxes"])):
    recs[i] = [{"name": int(gt["labels"][i][j]), "bbox": [float(v) for v in gt["boxes"][i][j]],
                "difficult": bool(gt["difficult"][i][j])}
               for j in range(gt["boxes"].shape[1]) if gt["valid"][i][j]]
  class_recs, npos = {}, 0
  for i, objects in recs.items():
    R = [obj for obj in objects if obj["name"] == classname]
    bbox = np.array([x["bbox"] for x in R]).reshape(-1, 4)
    difficult = np.array([x["difficult"] for x in R]).astype(bool)
    npos = npos + sum(~difficult)
    class_recs[i] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(R)}
  image_ids, confidence, BB = [], [], []
  for i in range(len(det["boxes"])):
    for j in range(det["boxes"].shape[1]):
      if det["valid"][i][j] and det["labels"][i][j] == classname:
        image_ids.append(i)
        confidence.append(float(det["scores"][i][j]))
        BB.append([float(v) for v in det["boxes"][i][j]])
  BB = np.array(BB).reshape(-1, 4)
  sorted_ind = np.argsort(-np.array(confidence))
  BB = BB[sorted_ind, :]
  image_ids = [image_ids[x] for x in sorted_ind]
  nd = len(image_ids)
  tp, fp = np.zeros(nd), np.zeros(nd)
  one = 1.0 if plus_one else 0.0
  for d in range(nd):
    R = class_recs[image_ids[d]]
    bb = BB[d, :]
    ovmax = -np.inf
    BBGT = R["bbox"]
    if BBGT.size > 0:
      ixmin = np.maximum(BBGT[:, 0], bb[0])
      iymin = np.maximum(BBGT[:, 1], bb[1])
      ixmax = np.minimum(BBGT[:, 2], bb[2])
      iymax = np.minimum(BBGT[:, 3], bb[3])
      iw = np.maximum(ixmax - ixmin + one, 0.)
      ih = np.maximum(iymax - iymin + one, 0.)
      inters = iw * ih
      uni = ((bb[2] - bb[0] + one) * (bb[3] - bb[1] + one)
             + (BBGT[:, 2] - BBGT[:, 0] + one) * (BBGT[:, 3] - BBGT[:, 1] + one) - inters)
      overlaps = inters / uni
      ovmax = np.max(overlaps)
      jmax = np.argmax(overlaps)
    if ovmax > ovthresh:
      if not R["difficult"][jmax]:
        if not R["det"][jmax]:
          tp[d] = 1.
          R["det"][jmax] = 1
        else:
          fp[d] = 1.
    else:
      fp[d] = 1.
  fp, tp = np.cumsum(fp), np.cumsum(tp)
  rec = tp / float(npos)
  prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  if use_07_metric:
    ap = 0.
    for t in np.arange(0., 1.1, 0.1):
      p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
      ap = ap + p / 11.
    return ap
  mrec = np.concatenate(([0.], rec, [1.]))
  mpre = np.concatenate(([0.], prec, [0.]))
  for i in range(mpre.size - 1, 0, -1):
    mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
  i = np.where(mrec[1:] != mrec[:-1])[0]
  return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def voc_random_case(seed):
  """Random detections over ground truth with 7, 11 and 13 non-difficult boxes per class: no recall is
  k / 10 but 0 and 1, where py-faster-rcnn's np.arange thresholds (0.30000000000000004, ...) would differ."""
  det, gt = random_case(seed, n=12, m=8, d=30, k=3, crowd=False)
  rng = np.random.default_rng(seed + 100)
  labels = np.full(gt["valid"].shape, -1)
  slots = rng.permutation(gt["valid"].size)
  positives = {0: 7, 1: 11, 2: 13}
  start = 0
  for c, count in positives.items():
    labels.flat[slots[start:start + count + 2]] = c  # 2 more boxes per class become difficult
    start += count + 2
  gt["valid"] = labels >= 0
  gt["labels"] = np.maximum(labels, 0)
  gt["difficult"] = np.zeros_like(gt["valid"])
  for c in positives:
    gt["difficult"].flat[np.flatnonzero(labels.ravel() == c)[:2]] = True
  src = rng.integers(0, gt["valid"].shape[1], det["valid"].shape)
  det["boxes"] = np.where(rng.random(det["valid"].shape + (1,)) < 0.6,
                          np.take_along_axis(gt["boxes"], src[..., None], 1) + rng.normal(0, 3, det["boxes"].shape),
                          det["boxes"]).astype(np.float32)
  det["labels"] = np.where(rng.random(det["valid"].shape) < 0.8, np.take_along_axis(gt["labels"], src, 1),
                           rng.integers(0, 3, det["valid"].shape))
  return det, gt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voc_map_equals_py_faster_rcnn_voc_eval(seed):
  det, gt = voc_random_case(seed)
  for use_07 in (False, True):
    for plus_one in (False, True):
      _, ap = voc_map(det, gt, use_07_metric=use_07, num_classes=3, plus_one=plus_one)
      reference = [py_faster_rcnn_voc_eval(det, gt, c, use_07_metric=use_07, plus_one=plus_one) for c in range(3)]
      assert 0.05 < min(reference) and max(reference) < 0.95
      np.testing.assert_allclose(ap, reference, rtol=1e-12, atol=1e-15)


# --- other implementations, where installed ------------------------------------------------------

def test_faster_coco_eval_gives_the_same_stats():
  faster = pytest.importorskip("faster_coco_eval")
  for seed in (0, 1, 2):
    det, gt = random_case(seed, difficult=seed == 2)
    ours = stats(coco_metrics(det, gt, K, all_stats=True))
    from jaxcnn.eval.detection import coco_ground_truth, coco_results
    ref_gt = faster.COCO()
    ref_gt.dataset = json.loads(json.dumps(coco_ground_truth(gt, K).dataset))
    ref_gt.createIndex()
    evaluator = faster.COCOeval_faster(ref_gt, ref_gt.loadRes(coco_results(det, K)), "bbox",
                                        print_function=lambda *args, **kwargs: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    reference = np.asarray(evaluator.stats[:12], np.float64)
    np.testing.assert_array_equal(ours, np.where(reference > -1, reference, np.nan))


def test_torchmetrics_mean_average_precision_agrees():
  pytest.importorskip("torchmetrics")
  pytest.importorskip("torchvision")
  import torch
  from torchmetrics.detection import MeanAveragePrecision
  det, gt = random_case(7)
  # COCOeval's float64 thresholds: torchmetrics' defaults are float32 linspaces (0.550000011920929, ...),
  # which move a few matches and recall points (0.1643 against 0.1647 for map here)
  metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy", iou_thresholds=np.linspace(0.5, 0.95, 10).tolist(),
                                rec_thresholds=np.linspace(0.0, 1.0, 101).tolist())
  preds, targets = [], []
  for i in range(len(det["boxes"])):
    v, g = det["valid"][i], gt["valid"][i]
    preds.append({"boxes": torch.tensor(det["boxes"][i][v]), "scores": torch.tensor(det["scores"][i][v]),
                  "labels": torch.tensor(det["labels"][i][v], dtype=torch.int64)})
    targets.append({"boxes": torch.tensor(gt["boxes"][i][g]), "labels": torch.tensor(gt["labels"][i][g], dtype=torch.int64),
                    "iscrowd": torch.tensor(gt["crowd"][i][g], dtype=torch.int64)})
  metric.update(preds, targets)
  theirs = metric.compute()
  ours = coco_metrics(det, gt, K)
  for key, name in (("map", "map"), ("map50", "map_50"), ("map75", "map_75"), ("map_small", "map_small"),
                    ("map_medium", "map_medium"), ("map_large", "map_large"), ("mar_100", "mar_100")):
    np.testing.assert_allclose(ours[key], float(theirs[name]), rtol=1e-6, err_msg=key)


# --- pictures ------------------------------------------------------------------------------------

def test_detection_grid_draws_boxes_labels_and_ground_truth(tmp_path):
  rng = np.random.default_rng(8)
  images = rng.normal(size=(2, 64, 64, 3)).astype(np.float32) * 0.1  # normalised, dark after stretching
  det = {"boxes": np.array([[[8, 16, 40, 48], [44, 4, 60, 20]], [[0, 0, 1, 1], [0, 0, 1, 1]]], np.float32),
         "scores": np.array([[0.9, 0.1], [0.8, 0.8]]), "labels": np.array([[1, 2], [0, 0]]),
         "valid": np.array([[True, True], [False, False]])}
  gt = {"boxes": np.array([[[10, 18, 38, 46]], [[20, 20, 50, 30]]], np.float32), "labels": np.array([[1], [3]]),
        "valid": np.array([[True], [True]])}
  path = save_detection_grid(str(tmp_path / "plots" / "det.png"), images, det, class_names=["a", "b", "c", "d"],
                             ground_truth=gt)
  picture = np.asarray(Image.open(path).convert("RGB"))
  s, pad = 4, 2  # 64 -> 256 pixels a cell
  assert picture.shape == (256 + 2 * pad, 2 * (256 + pad) + pad, 3)
  cell0 = picture[pad:pad + 256, pad:pad + 256]
  cell1 = picture[pad:pad + 256, 2 * pad + 256:2 * pad + 512]
  color = BOX_COLORS[1]
  np.testing.assert_array_equal(cell0[48 * s - 1, 24 * s], color)  # bottom edge of the label-1 box
  np.testing.assert_array_equal(cell0[32 * s, 8 * s], color)  # its left edge
  np.testing.assert_array_equal(cell0[46 * s - 1, 24 * s], GT_COLOR)  # the ground truth's bottom edge
  np.testing.assert_array_equal(cell1[30 * s - 1, 35 * s], GT_COLOR)
  label_band = cell0[16 * s - 12:16 * s - 2, 8 * s + 1:8 * s + 40]  # "b 0.90", white on the box colour, above it
  assert np.all(label_band == color, -1).mean() > 0.3 and (label_band.min(-1) > 200).any()
  assert not np.all(cell0[20 * s - 1, 52 * s] == BOX_COLORS[2])  # below the score threshold: not drawn
  assert not np.any(np.all(cell1 == BOX_COLORS[0], -1))  # invalid detections: not drawn
  gray = draw_detections(np.full((1, 56, 48, 1), 7, np.uint8), {k: v[:1] for k, v in det.items()}, min_cell=100)
  assert gray.shape == (1, 112, 96, 3)  # H 56 -> 112 (scale 2), W 48 -> 96
  np.testing.assert_array_equal(gray[0, 48 * 2 - 1, 24 * 2], color)
