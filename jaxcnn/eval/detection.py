"""Object detection evaluation: COCO's metrics by the official evaluator, PASCAL VOC's mAP, pictures.

Inputs are the padded arrays the detection task produces (NumPy or JAX, boxes
xyxy in pixels with continuous edges: a box's width is x2 - x1):

  detections    {'boxes': [N, D, 4] float, 'scores': [N, D], 'labels': [N, D] int, 'valid': [N, D] bool,
                 optional 'masks': binary instance masks (below)}
  ground_truth  {'boxes': [N, M, 4], 'labels': [N, M], 'valid': [N, M],
                 optional 'crowd': [N, M] bool (COCO's iscrowd), 'difficult': [N, M] bool (VOC),
                 'area': [N, M] float (COCO's per-object area, the segment's; default: the mask's pixel
                 count when 'masks' are given, else the box's w * h), 'masks' (below)}

Instance masks ('masks', for COCO's segm evaluation) are either bool / 0-1
integer arrays [N, slots, H, W] (every image in one H x W frame, the boxes'
pixels), or what `masks_to_rle` makes of them: an object array [N, slots]
holding a COCO compressed RLE dict (pycocotools.mask.encode) in every valid
slot and None elsewhere, so that a split's masks need not be held as pixels.

Labels are dataset classes 0..K-1 (the detector's 1..K minus one); a valid
detection or box with a label outside 0..K-1 is an error, as it would
otherwise drop out of the evaluation silently. A missing 'valid' means every
slot is used.

`coco_metrics` hands the arrays to pycocotools' COCOeval (iouType 'bbox'),
unmodified: ground truth as an in-memory COCO object (image ids 1..N,
category id c + 1 for class c, annotation ids from 1 because COCOeval takes
a match to annotation id 0 for no match), detections through `COCO.loadRes`
on a results list, as in COCO's JSON path. COCO's rules then apply:
  - a class with no ground truth box in the split is left out of every mean,
    so its false positives cost nothing; a detection on an image without
    ground truth is a false positive of its class;
  - crowd boxes: a detection not matched to another box and overlapping a
    crowd box enough (IoU = intersection over the detection's area) is
    ignored, not a false positive; several may match one crowd box;
  - the area ranges (small < 32^2 <= medium < 96^2 <= large) use the ground
    truth's 'area' if given, else the box's w * h (pycocotools' `loadRes`
    gives detections w * h too). COCO's own annotations give the segment
    area, smaller than the box, so pass `area` to reproduce COCO's
    small/medium/large split;
  - at most 100 detections per image and class (maxDets 1, 10, 100);
  - VOC's 'difficult' boxes are given to COCOeval as crowd boxes
    (`difficult_as_crowd=True`), its only way to ignore a box (it overwrites
    an 'ignore' field with 'iscrowd'): they count as no positive and
    detections on them are not false positives, as in VOC's rule, but the
    overlap with them is measured as for a crowd; `difficult_as_crowd=False`
    makes them ordinary ground truth.
Where COCOeval reports -1 (nothing to measure: no ground truth at all, or no
box in an area range) the value is NaN, so that a mean or a "best" over runs
is never taken over a -1.

`coco_metrics(..., iou_type='segm')` is COCO's mask AP by the same evaluator,
the same rules and the same keys, with IoUs between masks instead of boxes:
ground-truth annotations carry their RLE (and the mask's pixel count as
'area' unless 'area' is given, as COCO's annotations do), detections are
given to `loadRes` as {image_id, category_id, segmentation, score} (its
segm path: the detection's area is its mask's pixel count), as torchvision's
references do. Binary masks there are what torchvision thresholds its mask
probabilities to (> 0.5). `evaluate_detections` adds it as 'mask_map',
'mask_map50', 'mask_map75' when both sides have masks.

faster-coco-eval 1.8.0 (`faster_coco_eval.COCOeval_faster`) gives the same
12 stats as pycocotools 2.0.11 on the random crowd / empty-image cases of
tests/eval/test_detection_metrics.py (checked there when it is installed);
pycocotools stays the evaluator used here. torchmetrics 1.9.0's
MeanAveragePrecision (pycocotools backend) agrees to its float32 output when
given COCOeval's float64 IoU and recall thresholds; with its default float32
thresholds (0.550000011920929, ...) a few matches and recall points move.

`voc_map` is the PASCAL VOC devkit's rule (as in py-faster-rcnn's voc_eval):
per class, the detections of the whole split sorted by decreasing score
(stable: ties keep image order, then slot order); each is matched to the
ground truth box of its class and image with the largest IoU; IoU >
threshold (strictly) and that box not 'difficult' and not yet matched: true
positive; IoU > threshold on a 'difficult' box: ignored (neither TP nor FP);
otherwise (including a largest-IoU box already matched) a false positive.
Recall counts the non-difficult boxes. Crowd boxes are treated as difficult.
AP is the area under the precision envelope (VOC2010+, `use_07_metric=False`)
or the mean of the envelope's precision at recall >= 0, 0.1, ..., 1.0
(VOC2007's 11 points); the thresholds are exactly k / 10 (py-faster-rcnn's
np.arange(0, 1.1, 0.1) drifts to 0.30000000000000004, so a recall of exactly
3/10 misses that point there). IoU is that of continuous boxes by default;
`plus_one=True` adds the devkit's +1 to widths and heights, which is VOC's rule
for its inclusive integer pixel coordinates (published VOC numbers use it).
A class without non-difficult ground truth has AP NaN and is left out of the
mean, as in COCO.
"""
import contextlib
import io
import os
from typing import Optional, Sequence, Tuple

import numpy as np

COCO_STAT_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
                   "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")
COCO_KEYS = ("map", "map50", "map75", "map_small", "map_medium", "map_large", "mar_100")
MASK_KEYS = ("map", "map50", "map75")   # logged as mask_<key>
IOU_TYPES = ("bbox", "segm")


# --- inputs --------------------------------------------------------------------------------------

def _field(d, name, shape, dtype, default=None):
  if name not in d or d[name] is None:
    if default is None:
      raise ValueError(f"detection eval: missing '{name}'")
    return np.full(shape, default, dtype)
  x = np.asarray(d[name]).astype(dtype)
  if x.shape != tuple(shape):
    raise ValueError(f"detection eval: '{name}' has shape {x.shape}, expected {tuple(shape)}")
  return x


def _boxes(d, what):
  boxes = np.asarray(d["boxes"], np.float64)
  if boxes.ndim != 3 or boxes.shape[-1] != 4:
    raise ValueError(f"detection eval: {what} 'boxes' must be [N, slots, 4], got shape {boxes.shape}")
  return boxes


def _detections(detections, num_images=None):
  boxes = _boxes(detections, "detections")
  shape = boxes.shape[:2]
  out = {"boxes": boxes,
         "scores": _field(detections, "scores", shape, np.float64),
         "labels": _field(detections, "labels", shape, np.int64),
         "valid": _field(detections, "valid", shape, bool, True)}
  if num_images is not None and shape[0] != num_images:
    raise ValueError(f"detection eval: {shape[0]} images of detections, {num_images} of ground truth")
  return out


def _ground_truth(ground_truth):
  boxes = _boxes(ground_truth, "ground truth")
  shape = boxes.shape[:2]
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return {"boxes": boxes,
          "labels": _field(ground_truth, "labels", shape, np.int64),
          "valid": _field(ground_truth, "valid", shape, bool, True),
          "crowd": _field(ground_truth, "crowd", shape, bool, False),
          "difficult": _field(ground_truth, "difficult", shape, bool, False),
          "area": (w * h if ground_truth.get("area") is None
                   else _field(ground_truth, "area", shape, np.float64))}


def _check_labels(labels, valid, num_classes, what):
  bad = valid & ((labels < 0) | (labels >= num_classes))
  if bad.any():
    raise ValueError(f"detection eval: {what} label {int(labels[bad][0])} outside 0..{num_classes - 1} "
                     f"(labels are dataset classes: the detector's label minus 1)")


def masks_to_rle(masks, valid=None) -> np.ndarray:
  """COCO compressed RLEs of binary masks [N, S, H, W] (bool or 0/1 integers; NumPy or JAX).

  Returns an object array [N, S]: pycocotools.mask.encode's dict {'size': [H, W], 'counts': bytes} in every
  slot where `valid` [N, S] (default: all) is True, None elsewhere.
  """
  from pycocotools import mask as mask_utils
  masks = np.asarray(masks)
  if masks.ndim != 4 or masks.dtype.kind not in "biu":
    raise ValueError(f"detection eval: masks must be binary [N, slots, H, W] (bool or 0/1; threshold "
                     f"probabilities first), got {masks.dtype} {masks.shape}")
  valid = np.ones(masks.shape[:2], bool) if valid is None else np.asarray(valid, bool)
  if valid.shape != masks.shape[:2]:
    raise ValueError(f"detection eval: 'valid' has shape {valid.shape}, masks {masks.shape}")
  out = np.full(masks.shape[:2], None, object)
  for i in range(masks.shape[0]):
    slots = np.flatnonzero(valid[i])
    if slots.size:  # pycocotools wants [H, W, K] in Fortran order
      stack = np.asfortranarray(np.moveaxis(masks[i, slots] != 0, 0, -1).astype(np.uint8))
      for j, rle in zip(slots, mask_utils.encode(stack)):
        out[i, j] = rle
  return out


def _mask_rles(d, valid, what):
  """The RLE object array [N, S] of d['masks'] (arrays are encoded here); every valid slot needs a mask."""
  masks = d.get("masks")
  if masks is None:
    raise ValueError(f"detection eval: iou_type 'segm' needs {what} 'masks'")
  if not (isinstance(masks, np.ndarray) and masks.dtype == object):
    masks = np.asarray(masks)
    if masks.ndim != 4 or masks.shape[:2] != valid.shape:
      raise ValueError(f"detection eval: {what} 'masks' must be [N, slots, H, W] with [N, slots] = "
                       f"{valid.shape}, got shape {masks.shape}")
    return masks_to_rle(masks, valid)
  if masks.shape != valid.shape:
    raise ValueError(f"detection eval: {what} 'masks' RLEs have shape {masks.shape}, expected {valid.shape}")
  missing = valid & np.equal(masks, None)
  if missing.any():
    raise ValueError(f"detection eval: {what} slot {tuple(int(v) for v in np.argwhere(missing)[0])} is valid but "
                     f"has no mask")
  return masks


def _valid_slots(d, what) -> np.ndarray:
  return _field(d, "valid", _boxes(d, what).shape[:2], bool, True)


def _rle_size(rles):
  """(H, W) of the masks: the size of the first RLE found, or None."""
  for rle in rles.flat:
    if rle is not None:
      return tuple(int(v) for v in rle["size"])
  return None


def _rle_areas(rles) -> np.ndarray:
  from pycocotools import mask as mask_utils
  return np.array([float(mask_utils.area(r)) if r is not None else 0.0 for r in rles.flat],
                  np.float64).reshape(rles.shape)


# --- COCO ----------------------------------------------------------------------------------------

def coco_ground_truth(ground_truth, num_classes: int, difficult_as_crowd: bool = True, verbose: bool = False):
  """pycocotools `COCO` object of the padded ground truth (image i -> id i + 1, class c -> category c + 1).

  With 'masks', each annotation carries its RLE as 'segmentation' (and its pixel count as 'area' unless
  'area' is given) and the images their height and width, for iouType 'segm'.
  """
  from pycocotools.coco import COCO
  rles = None
  if ground_truth.get("masks") is not None:
    rles = _mask_rles(ground_truth, _valid_slots(ground_truth, "ground truth"), "ground truth")
    if ground_truth.get("area") is None:
      ground_truth = {**ground_truth, "area": _rle_areas(rles)}
  gt = _ground_truth(ground_truth)
  _check_labels(gt["labels"], gt["valid"], num_classes, "ground truth")
  crowd = gt["crowd"] | (gt["difficult"] & difficult_as_crowd)
  annotations = []
  for i, j in zip(*np.nonzero(gt["valid"])):
    x1, y1, x2, y2 = (float(v) for v in gt["boxes"][i, j])
    annotations.append({"id": len(annotations) + 1, "image_id": int(i) + 1,
                        "category_id": int(gt["labels"][i, j]) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": float(gt["area"][i, j]), "iscrowd": int(crowd[i, j])})
    if rles is not None:
      annotations[-1]["segmentation"] = rles[i, j]
  images = [{"id": i + 1} for i in range(gt["boxes"].shape[0])]
  size = _rle_size(rles) if rles is not None else None
  if size is not None:
    images = [{**image, "height": size[0], "width": size[1]} for image in images]
  coco = COCO()
  coco.dataset = {"images": images,
                  "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)],
                  "annotations": annotations}
  with _quiet(verbose):
    coco.createIndex()
  return coco


def coco_results(detections, num_classes: int, iou_type: str = "bbox") -> list:
  """COCO's results list of the valid detections: (image_id, category_id, bbox xywh, score), or for iou_type
  'segm' (image_id, category_id, segmentation RLE, score)."""
  dt = _detections(detections)
  _check_labels(dt["labels"], dt["valid"], num_classes, "detection")
  rles = _mask_rles(detections, dt["valid"], "detection") if iou_type == "segm" else None
  results = []
  for i, j in zip(*np.nonzero(dt["valid"])):
    result = {"image_id": int(i) + 1, "category_id": int(dt["labels"][i, j]) + 1, "score": float(dt["scores"][i, j])}
    if rles is None:
      x1, y1, x2, y2 = (float(v) for v in dt["boxes"][i, j])
      result["bbox"] = [x1, y1, x2 - x1, y2 - y1]
    else:
      result["segmentation"] = rles[i, j]
    results.append(result)
  return results


@contextlib.contextmanager
def _quiet(verbose: bool):
  if verbose:
    yield
  else:
    with contextlib.redirect_stdout(io.StringIO()):
      yield


def coco_metrics(detections, ground_truth, num_classes: int, area_frame=None, difficult_as_crowd: bool = True,
                 all_stats: bool = False, verbose: bool = False, iou_type: str = "bbox") -> dict:
  """COCO bbox (or, with iou_type='segm', mask) metrics from pycocotools' COCOeval; see the module docstring.

  Returns floats {'map' (AP at IoU .50:.05:.95), 'map50', 'map75', 'map_small',
  'map_medium', 'map_large', 'mar_100'} (with `all_stats` all 12 of
  COCOeval.stats: also 'mar_1', 'mar_10', 'mar_small', 'mar_medium',
  'mar_large'); NaN where COCOeval gives -1. `area_frame` puts the boxes (and
  the 'area' given with them) into another frame for COCO's area ranges: the
  scale from the boxes' pixels to that frame, a float, [N] per image, or
  [N, 2] per image (sy, sx) (e.g. the original image's size over the model
  input's); IoUs do not change under such a scaling, areas scale by sy * sx
  (with masks: their pixel counts, the ground truth's and the detections').
  pycocotools' prints are swallowed unless `verbose` (which also prints
  COCOeval's summary table).
  """
  from pycocotools.cocoeval import COCOeval
  if iou_type not in IOU_TYPES:
    raise ValueError(f"detection eval: iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
  gt = dict(ground_truth)
  dt = dict(detections)
  n = np.asarray(gt["boxes"]).shape[0]
  _detections(dt, n)  # shape checks before any work
  if gt.get("masks") is not None:  # encoded once; the mask's pixel count is the object's area (COCO's)
    gt["masks"] = _mask_rles(gt, _valid_slots(gt, "ground truth"), "ground truth")
    if gt.get("area") is None:
      gt["area"] = _rle_areas(gt["masks"])
  if iou_type == "segm":
    dt["masks"] = _mask_rles(dt, _valid_slots(dt, "detections"), "detection")
    if gt.get("masks") is None:
      raise ValueError("detection eval: iou_type 'segm' needs ground truth 'masks'")
  frame = None
  if area_frame is not None:
    frame = np.asarray(area_frame, np.float64)
    frame = np.broadcast_to(frame[..., None] if frame.ndim < 2 else frame, (n, 2))  # (sy, sx) per image
    xyxy = np.stack([frame[:, 1], frame[:, 0], frame[:, 1], frame[:, 0]], -1)[:, None, :]
    gt["boxes"] = np.asarray(gt["boxes"], np.float64) * xyxy
    dt["boxes"] = np.asarray(dt["boxes"], np.float64) * xyxy
    if gt.get("area") is not None:
      gt["area"] = np.asarray(gt["area"], np.float64) * (frame[:, 0] * frame[:, 1])[:, None]
  coco_gt = coco_ground_truth(gt, num_classes, difficult_as_crowd, verbose)
  if iou_type == "segm" and "height" not in (coco_gt.dataset["images"] or [{}])[0]:
    size = _rle_size(dt["masks"])  # no ground-truth mask at all: the detections' frame
    coco_gt.dataset["images"] = [{**image, "height": size[0], "width": size[1]} if size else image
                                 for image in coco_gt.dataset["images"]]
    with _quiet(verbose):
      coco_gt.createIndex()
  results = coco_results(dt, num_classes, iou_type)
  with _quiet(verbose):
    if results:
      coco_dt = coco_gt.loadRes(results)
      if frame is not None and iou_type == "segm":  # loadRes measured the masks in the boxes' pixels
        for ann in coco_dt.dataset["annotations"]:
          sy, sx = frame[ann["image_id"] - 1]
          ann["area"] = float(ann["area"]) * sy * sx
    else:  # loadRes cannot take an empty list; an empty results object is what it would build
      from pycocotools.coco import COCO
      coco_dt = COCO()
      coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                         "categories": list(coco_gt.dataset["categories"]), "annotations": []}
      coco_dt.createIndex()
    evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  stats = [float(s) if s > -1 else float("nan") for s in evaluator.stats]
  out = dict(zip(COCO_STAT_NAMES, stats))
  return out if all_stats else {k: out[k] for k in COCO_KEYS}


# --- PASCAL VOC ----------------------------------------------------------------------------------

def _iou_one_to_many(box, boxes, plus_one: bool):
  extra = 1.0 if plus_one else 0.0
  iw = np.maximum(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + extra, 0.0)
  ih = np.maximum(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + extra, 0.0)
  inter = iw * ih
  union = ((box[2] - box[0] + extra) * (box[3] - box[1] + extra)
           + (boxes[:, 2] - boxes[:, 0] + extra) * (boxes[:, 3] - boxes[:, 1] + extra) - inter)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def voc_ap(recall, precision, use_07_metric: bool = False) -> float:
  """AP from a class's cumulative recall and precision (in decreasing-score order); see the module docstring."""
  recall = np.asarray(recall, np.float64)
  precision = np.asarray(precision, np.float64)
  if use_07_metric:
    points = [precision[recall >= t].max() if np.any(recall >= t) else 0.0 for t in np.arange(11) / 10.0]
    return float(np.sum(points) / 11.0)
  mrec = np.concatenate([[0.0], recall, [1.0]])
  mpre = np.concatenate([[0.0], precision, [0.0]])
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
  steps = np.flatnonzero(mrec[1:] != mrec[:-1])
  return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def voc_map(detections, ground_truth, iou_threshold: float = 0.5, use_07_metric: bool = False,
            num_classes: Optional[int] = None, plus_one: bool = False) -> Tuple[float, np.ndarray]:
  """PASCAL VOC mAP: (mean AP over classes with ground truth, [K] AP per class, NaN where none).

  See the module docstring for the rule. `num_classes` None takes one more than
  the largest valid label of either input.
  """
  gt = _ground_truth(ground_truth)
  dt = _detections(detections, gt["boxes"].shape[0])
  if num_classes is None:
    labels = np.concatenate([gt["labels"][gt["valid"]], dt["labels"][dt["valid"]]])
    num_classes = int(labels.max()) + 1 if labels.size else 0
  _check_labels(gt["labels"], gt["valid"], num_classes, "ground truth")
  _check_labels(dt["labels"], dt["valid"], num_classes, "detection")
  ignore = gt["difficult"] | gt["crowd"]
  ap = np.full(num_classes, np.nan)
  for c in range(num_classes):
    gt_c = gt["valid"] & (gt["labels"] == c)
    positives = int(np.sum(gt_c & ~ignore))
    if positives == 0:
      continue
    images, slots = np.nonzero(dt["valid"] & (dt["labels"] == c))
    order = np.argsort(-dt["scores"][images, slots], kind="stable")
    matched = np.zeros(gt_c.shape, bool)
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for k, d in enumerate(order):
      i = images[d]
      candidates = np.flatnonzero(gt_c[i])
      best_iou, best = -np.inf, -1
      if candidates.size:
        ious = _iou_one_to_many(dt["boxes"][i, slots[d]], gt["boxes"][i, candidates], plus_one)
        best = candidates[int(np.argmax(ious))]
        best_iou = ious.max()
      if best_iou > iou_threshold:
        if ignore[i, best]:
          continue
        if not matched[i, best]:
          tp[k] = 1.0
          matched[i, best] = True
        else:
          fp[k] = 1.0
      else:
        fp[k] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap[c] = voc_ap(recall, precision, use_07_metric)
  present = ~np.isnan(ap)
  return (float(ap[present].mean()) if present.any() else float("nan")), ap


# --- everything the detection task logs ----------------------------------------------------------

def evaluate_detections(detections, ground_truth, num_classes: int, area_frame=None,
                        verbose: bool = False) -> dict:
  """COCO's 7 headline metrics plus VOC's mAP at IoU 0.5 (area and 11-point), and mask AP with masks.

  {'map', 'map50', 'map75', 'map_small', 'map_medium', 'map_large', 'mar_100',
  'voc_map50', 'voc07_map50'}: floats, NaN where undefined (see the module
  docstring). The VOC numbers use continuous-box IoU (no +1). When both the
  detections and the ground truth have 'masks', also COCO's segm AP
  'mask_map', 'mask_map50', 'mask_map75'. With ground-truth masks (and no
  'area'), a ground-truth object's area is its mask's pixel count in the
  box evaluation too, as in COCO's annotations.
  """
  masks = detections.get("masks") is not None and ground_truth.get("masks") is not None
  if masks:  # encoded once for both evaluations
    ground_truth = {**ground_truth,
                    "masks": _mask_rles(ground_truth, _valid_slots(ground_truth, "ground truth"), "ground truth")}
    detections = {**detections, "masks": _mask_rles(detections, _valid_slots(detections, "detections"), "detection")}
  out = coco_metrics(detections, ground_truth, num_classes, area_frame=area_frame, verbose=verbose)
  out["voc_map50"] = voc_map(detections, ground_truth, 0.5, use_07_metric=False, num_classes=num_classes)[0]
  out["voc07_map50"] = voc_map(detections, ground_truth, 0.5, use_07_metric=True, num_classes=num_classes)[0]
  if masks:
    segm = coco_metrics(detections, ground_truth, num_classes, area_frame=area_frame, verbose=verbose,
                        iou_type="segm")
    out.update({f"mask_{k}": segm[k] for k in MASK_KEYS})
  return out


# --- pictures ------------------------------------------------------------------------------------

# Prediction colours by class (cycled); none is the ground truth's green.
BOX_COLORS = ((255, 0, 0), (0, 128, 255), (255, 160, 0), (255, 0, 255), (0, 255, 255),
              (255, 255, 0), (160, 32, 240), (255, 105, 180), (128, 64, 0), (255, 255, 255))
GT_COLOR = (0, 255, 0)


def _label_text(label: int, class_names) -> str:
  if class_names is not None and 0 <= label < len(class_names):
    return str(class_names[label])
  return str(label)


def _draw_boxes(draw, font, boxes, labels, scores, scale: int, colors, class_names, width: int):
  for k in range(len(boxes)):
    x1, y1, x2, y2 = (float(v) * scale for v in boxes[k])
    color = colors(int(labels[k]))
    draw.rectangle([round(x1), round(y1), max(round(x1), round(x2) - 1), max(round(y1), round(y2) - 1)],
                   outline=color, width=width)
    text = _label_text(int(labels[k]), class_names)
    if scores is not None:
      text += f" {float(scores[k]):.2f}"
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left, bottom - top
    tx, ty = round(x1), round(y1) - th - 2
    if ty < 0:  # no room above the box: write inside its top edge
      ty = round(y1) + width
    draw.rectangle([tx, ty, tx + tw + 2, ty + th + 2], fill=color)
    brightness = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((tx + 1 - left, ty + 1 - top), text, fill=(0, 0, 0) if brightness > 128 else (255, 255, 255),
              font=font)


def draw_detections(images, detections, class_names: Optional[Sequence[str]] = None,
                    score_threshold: float = 0.3, ground_truth=None, min_cell: int = 256,
                    value_range: Optional[Tuple[float, float]] = None, line_width: int = 2) -> np.ndarray:
  """[N, s*H, s*W, 3] uint8: each image enlarged (nearest, integer s, at least `min_cell` pixels tall)
  with its valid detections scoring >= `score_threshold` drawn as boxes coloured by class
  (`BOX_COLORS`) with "name score" above them, and the valid ground truth boxes in `GT_COLOR`
  with their names. Images as `jaxcnn.eval.segmentation.overlay` takes them.
  """
  from PIL import Image, ImageDraw, ImageFont

  from jaxcnn.eval.segmentation import _images_uint8
  rgb = _images_uint8(images, value_range)
  n, h, w = rgb.shape[:3]
  dt = _detections(detections, n)
  gt = _ground_truth(ground_truth) if ground_truth is not None else None
  if gt is not None and gt["boxes"].shape[0] != n:
    raise ValueError(f"draw_detections: {gt['boxes'].shape[0]} images of ground truth for {n} images")
  scale = max(1, -(-min_cell // h))
  font = ImageFont.load_default(size=max(11, h * scale // 18))  # FreeType's font; Pillow without it gives its bitmap font
  out = np.zeros((n, h * scale, w * scale, 3), np.uint8)
  for i in range(n):
    picture = Image.fromarray(rgb[i].repeat(scale, axis=0).repeat(scale, axis=1))
    draw = ImageDraw.Draw(picture)
    if gt is not None:
      keep = np.flatnonzero(gt["valid"][i])
      _draw_boxes(draw, font, gt["boxes"][i, keep], gt["labels"][i, keep], None, scale,
                  lambda c: GT_COLOR, class_names, line_width)
    keep = np.flatnonzero(dt["valid"][i] & (dt["scores"][i] >= score_threshold))
    keep = keep[np.argsort(dt["scores"][i, keep], kind="stable")]  # the best drawn last, on top
    _draw_boxes(draw, font, dt["boxes"][i, keep], dt["labels"][i, keep], dt["scores"][i, keep], scale,
                lambda c: BOX_COLORS[c % len(BOX_COLORS)], class_names, line_width)
    out[i] = np.asarray(picture)
  return out


def save_detection_grid(path: str, images, detections, class_names: Optional[Sequence[str]] = None,
                        score_threshold: float = 0.3, ground_truth=None, ncol: int = 8, min_cell: int = 256,
                        value_range: Optional[Tuple[float, float]] = None) -> str:
  """Writes a PNG grid (`ncol` images a row, 2-pixel white padding) of `draw_detections`. Returns `path`."""
  from PIL import Image

  from jaxcnn.eval.grids import grid
  cells = draw_detections(images, detections, class_names, score_threshold, ground_truth, min_cell, value_range)
  picture = grid(cells, ncol=ncol)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(picture).save(path)
  return path
