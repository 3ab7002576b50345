"""Object detection: each detector's own loss, post-processing inside the jitted eval step, COCO and VOC mAP.

Batches carry `image` [B, H, W, C] and the dataset's boxes field: `boxes` float32 [B, M, 4] (xyxy pixels
of the batch image, M = the dataset's padded box count, data.max_boxes), `boxes_valid` bool [B, M] and
`box_classes` int32 [B, M] (classes 0..K-1); `box_crowd` / `box_difficult` bool [B, M] where the dataset
has them (COCO's iscrowd, VOC's difficult: both are ignored by the evaluators, as the official ones do), and
instance masks uint8 [B, M, H, W] where the dataset has a field of kind 'box_mask' (digits_inst's
'box_masks'). Padded slots count nowhere; an image without boxes is a valid, all-background example.

Models follow the detection contract (`jaxcnn/models/retinanet.py` describes it): `__call__` returns the raw
head outputs, `detection_loss(outputs, targets, image_size, axis_name)` is the model's own loss as torchvision
computes it, `postprocess(outputs, image_size)` the fixed-size detections. Two-stage detectors, whose
second stage trains on proposals sampled against the ground truth, set `trains_with_targets = True`: their
training forward receives `targets=` and a 'sampling' rng (fixed-size random fg/bg sampling) and returns
what `detection_loss` needs; with instance masks in the batch the targets carry them as 'masks'
[B, M, H, W] (Mask R-CNN's mask loss needs them). A model with `uses_padding_mask = True` (DETR) gets
`mask=` (bool [B, H, W], True on the padding `data.resize=fit` added at the bottom/right) in training and
eval, its targets carry 'image_hw' (float32 [B, 2], each image's unpadded size, `geometry.fitted_size` of
the batch's `source_hw` in float32) and `postprocess` gets those sizes as `image_size`; since that size is
known only when the training augmentations keep the image's size before the fit, `scale`, `crop`,
`zoom_out` and `iou_crop` are refused with such a model (not with `data.resize=stretch`, which pads
nothing). Labels follow torchvision's
convention: the model is built with num_classes = K + 1 and dataset class c is model label c + 1 (0 is
background), so torchvision's 91-class COCO weights and heads line up.

Evaluation runs the model and its post-processing in the jitted eval step (score threshold, top-k,
batched NMS, `detections_per_img` padded outputs: no host round trip), collects the detections and
the ground truth of the whole split from every process, and scores them on the host with the official
COCO evaluator (pycocotools) and the PASCAL VOC rule (`jaxcnn.eval.detection`): eval/map (AP@[.5:.95],
the headline), eval/map50, eval/map75, eval/map_small/medium/large, eval/mar_100, eval/voc_map50 (area
under the curve, VOC2010+) and eval/voc07_map50 (VOC2007's 11 points); NaN where COCO cannot measure
(no box in an area range). Boxes are scored in the frame of the eval batch (the image fitted or
stretched into data.image_size); IoUs do not depend on that frame, and COCO's small/medium/large area
ranges are applied in each image's source frame (through the batch's `source_hw`), as torchvision's
references score boxes mapped back to the original image.

Instance segmentation: when the model's postprocess returns 'masks' (Mask R-CNN: probabilities
[B, D, H, W]), the eval step thresholds them inside the jitted step as torchvision's references do
(> 0.5; False in invalid detection slots), and the task's `host_batch` turns each eval batch's masks,
and the dataset's ground-truth masks, into COCO RLEs on the host before the split is concatenated
(never the whole split's pixels). `host_eval` then adds COCO's mask AP (COCOeval, iouType 'segm'):
eval/mask_map, eval/mask_map50, eval/mask_map75 (eval/map stays the headline: box AP). With
ground-truth masks, a ground-truth object's area for COCO's small/medium/large ranges is its mask's
pixel count (in the source frame), as in COCO's annotations, in the box and the mask evaluation.

Options (config section `detection`):
  pictures         eval images drawn with their detections in plots/ at every eval (0: none)
  picture_score    detections below this score are not drawn
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError
from jaxcnn.registry import create_model, list_models
from jaxcnn.tasks.base import Task, model_kwargs

BOX_FIELDS = ("boxes", "boxes_valid", "box_classes")
OPTIONAL_GT_FIELDS = {"box_crowd": "crowd", "box_difficult": "difficult"}


def default_config():
  import ml_collections
  return ml_collections.ConfigDict({"pictures": 8, "picture_score": 0.3})


def is_detector(model) -> bool:
  return all(callable(getattr(type(model), m, None)) for m in ("detection_loss", "postprocess"))


def detector_names():
  names = []
  for name in list_models():
    try:
      if is_detector(create_model(name)):
        names.append(name)
    except Exception:  # pylint: disable=broad-except
      continue  # a model that needs arguments to be built is not a detector with defaults
  return names


SIZE_CHANGING_AUGMENTS = ("scale", "crop", "zoom_out", "iou_crop")


def _check_padding_knowable(data):
  """A padding-mask model (DETR) learns each image's unpadded size from `source_hw`, which holds only while the
  training augmentations keep the image's size before `fit`."""
  if data.get("resize", "fit") == "stretch":
    return
  augment = data.get("augment", "") or ""
  names = [a.strip() for a in (augment.split(",") if isinstance(augment, str) else augment) if a.strip()]
  changing = [a for a in names if a in SIZE_CHANGING_AUGMENTS]
  if changing:
    raise UserError(f"data.augment '{','.join(names)}': {', '.join(changing)} changes the image size before "
                    "padding, so the padding mask this model takes is unknown; use size-keeping augmentations "
                    "(flip, photometric) or data.resize=stretch")


class Detection(Task):
  best_metric = ("eval/map", "max")

  def __init__(self, config, data_info, axis_name=None):
    super().__init__(config, axis_name)
    options = default_config()
    options.update(config.get("detection", {}))
    self.options = options
    kinds = dict(getattr(data_info, "field_kinds", {}) or {})
    if "boxes" not in kinds or kinds["boxes"] != "boxes":
      raise UserError(f"task 'detection' needs a dataset with a 'boxes' field (e.g. digits_det, voc0712_det, coco2017_det); "
                      f"'{data_info.name}' has fields {sorted(kinds) or ['image', 'label']}")
    try:
      import pycocotools  # noqa: F401  (checked now: eval must not fail after hours of training)
    except ImportError:
      raise UserError("task 'detection' scores with the official COCO evaluator: pip install 'jaxcnn[detection]' "
                      "(pycocotools)") from None
    self.mask_field = next((name for name, kind in kinds.items() if kind == "box_mask"), None)
    self.num_classes = int(data_info.num_classes)
    names = tuple(getattr(data_info, "class_names", ()) or ())
    self.class_names = names if len(names) == self.num_classes else None
    self.model = create_model(config.model.name, **model_kwargs(
        config.model, config.train, axis_name, num_classes=self.num_classes + 1))
    if not is_detector(self.model):
      raise UserError(f"model '{config.model.name}' is not a detector (task 'detection' needs one of: "
                      f"{', '.join(detector_names())})")
    if getattr(self.model, "uses_padding_mask", False):
      _check_padding_knowable(config.data)
    self._preview = None
    self._detect = jax.jit(self.detect)

  def describe(self):
    return {**super().describe(), "num_classes": self.num_classes}

  # --- training -------------------------------------------------------------------------------------------
  def init(self, rng, batch):
    params_rng, dropout_rng = jax.random.split(rng)
    return self.model.init({"params": params_rng, "dropout": dropout_rng}, batch["image"], train=False)

  @staticmethod
  def targets(batch, mask_field=None):
    """The model's targets: labels in torchvision's space (dataset class + 1; 0 is background), and
    'masks' (the batch's `mask_field`, uint8 [B, M, H, W]) when given and in the batch."""
    missing = [f for f in BOX_FIELDS if f not in batch]
    if missing:
      raise UserError(f"detection batches need fields {list(BOX_FIELDS)}; missing {missing}")
    targets = {"boxes": batch["boxes"].astype(jnp.float32), "labels": batch["box_classes"].astype(jnp.int32) + 1,
               "valid": batch["boxes_valid"].astype(bool)}
    if mask_field is not None and mask_field in batch:
      targets["masks"] = batch[mask_field]
    return targets

  def unpadded_hw(self, batch):
    """float32 [B, 2]: each batch image's (h, w) before `data.resize=fit` padded it (geometry.fitted_size of its
    `source_hw`, in float32), or None when the batch says nothing of padding ('stretch', no `source_hw`).
    Eval padding examples (source_hw 0) count as unpadded."""
    if "source_hw" not in batch or self.config.data.get("resize", "fit") == "stretch":
      return None
    out_hw = jnp.asarray(batch["image"].shape[1:3], jnp.float32)
    hw = jnp.asarray(batch["source_hw"], jnp.float32)
    real = jnp.all(hw > 0, axis=-1, keepdims=True)
    hw = jnp.where(real, hw, out_hw)
    factor = jnp.min(out_hw / hw, axis=-1, keepdims=True)
    shorter = float(self.config.data.get("resize_shorter", 0) or 0)
    if shorter:
      factor = jnp.minimum(factor, shorter / jnp.min(hw, axis=-1, keepdims=True))
    return jnp.clip(jnp.round(hw * factor), 1.0, out_hw)

  def padding(self, batch):
    """(pixel mask bool [B, H, W], True on padding; unpadded sizes [B, 2]) for models that take them (DETR's
    NestedTensor mask), else (None, None)."""
    hw = self.unpadded_hw(batch) if getattr(self.model, "uses_padding_mask", False) else None
    if hw is None:
      return None, None
    height, width = batch["image"].shape[1:3]
    rows = jnp.arange(height, dtype=jnp.float32)[None, :, None] >= hw[:, 0, None, None]
    cols = jnp.arange(width, dtype=jnp.float32)[None, None, :] >= hw[:, 1, None, None]
    return rows | cols, hw

  def loss(self, params, model_state, batch, rng):
    targets = self.targets(batch, self.mask_field)
    dropout_rng, sampling_rng = jax.random.split(rng)
    extra = {"targets": targets} if getattr(self.model, "trains_with_targets", False) else {}
    mask, hw = self.padding(batch)
    if mask is not None:
      extra["mask"], targets = mask, {**targets, "image_hw": hw}
    outputs, new_state = self.model.apply(
        {"params": params, **model_state}, batch["image"], train=True, **extra,
        rngs={"dropout": dropout_rng, "sampling": sampling_rng}, mutable=list(model_state))
    loss, metrics = self.model.detection_loss(outputs, targets, batch["image"].shape[1:3],
                                              axis_name=self.axis_name)
    metrics = {k: v for k, v in metrics.items() if k != "train/loss"}
    return loss, (new_state, {"train/loss": loss, **metrics})

  # --- evaluation -----------------------------------------------------------------------------------------
  def detect(self, variables, images, source_hw=None):
    """Fixed-size detections {'boxes', 'scores', 'labels' (dataset classes), 'valid'} of a batch, and
    'masks' bool [B, D, H, W] (probability > 0.5, valid slots only) when the model predicts masks.
    `source_hw` (the batch's) gives a padding-mask model its mask and each image's unpadded size."""
    batch = {"image": images} if source_hw is None else {"image": images, "source_hw": source_hw}
    mask, hw = self.padding(batch)
    extra = {} if mask is None else {"mask": mask}
    outputs = self.model.apply(variables, images, train=False, **extra)
    outputs = jax.tree.map(lambda x: x.astype(jnp.float32), outputs)
    detections = self.model.postprocess(outputs, images.shape[1:3] if hw is None else hw)
    valid = detections["valid"].astype(bool)
    out = {"boxes": detections["boxes"].astype(jnp.float32), "scores": detections["scores"].astype(jnp.float32),
           "labels": detections["labels"].astype(jnp.int32) - 1, "valid": valid}
    if "masks" in detections:
      out["masks"] = (detections["masks"] > 0.5) & valid[:, :, None, None]
    return out

  def eval_step(self, variables, batch):
    detections = self.detect(variables, batch["image"], batch.get("source_hw"))
    real = batch["mask"] > 0
    out = {"count": jnp.sum(real), "per_example/mask": batch["mask"]}
    out.update({f"per_example/{k}": v for k, v in detections.items()})
    out.update({"per_example/gt_boxes": batch["boxes"], "per_example/gt_labels": batch["box_classes"],
                "per_example/gt_valid": batch["boxes_valid"] & real[:, None]})
    for field, name in OPTIONAL_GT_FIELDS.items():
      if field in batch:
        out[f"per_example/gt_{name}"] = batch[field]
    if self.mask_field is not None and self.mask_field in batch:
      out["per_example/gt_masks"] = (batch[self.mask_field] > 0) & out["per_example/gt_valid"][:, :, None, None]
    if "source_hw" in batch:
      out["per_example/source_hw"] = batch["source_hw"]
    return out

  def eval_metrics(self, sums):
    return {}  # everything comes from host_eval

  def host_batch(self, outputs):
    """Each eval batch's predicted and ground-truth masks as COCO RLEs (object arrays [B, slots]): the
    split is held as RLEs, not pixels. Padding examples' masks are not encoded (they are dropped)."""
    if "masks" not in outputs and "gt_masks" not in outputs:
      return outputs
    from jaxcnn.eval import detection as det_eval
    real = np.asarray(outputs["mask"])[:, None] > 0
    out = dict(outputs)
    for masks, valid in (("masks", "valid"), ("gt_masks", "gt_valid")):
      if masks in out:
        out[masks] = det_eval.masks_to_rle(out[masks], np.asarray(out[valid], bool) & real)
    return out

  def host_eval(self, outputs):
    from jaxcnn.eval import detection as det_eval
    detections = {k: outputs[k] for k in ("boxes", "scores", "labels", "valid", "masks") if k in outputs}
    truth = {k[3:]: v for k, v in outputs.items() if k.startswith("gt_")}
    frame = self.source_frame(outputs["source_hw"]) if "source_hw" in outputs else None
    metrics = det_eval.evaluate_detections(detections, truth, self.num_classes, area_frame=frame)
    return {f"eval/{k}": float(v) for k, v in metrics.items()}

  def source_frame(self, source_hw):
    """[N, 2] (sy, sx): from the eval batch's pixels back to each source image's (the pipeline's resize)."""
    from jaxcnn.data import geometry, transforms
    data = self.config.data
    size = transforms.hw(data.image_size)
    frame = []
    for h, w in np.asarray(source_hw).tolist():
      if data.get("resize", "fit") == "stretch":
        fh, fw = size
      else:
        fh, fw = geometry.fitted_size((h, w), size, int(data.get("resize_shorter", 0) or 0))
      frame.append((h / fh, w / fw))
    return np.asarray(frame, np.float64)

  # --- pictures -------------------------------------------------------------------------------------------
  def on_eval(self, variables, step, workdir):
    n = int(self.options.pictures)
    if n <= 0:
      return {}
    from jaxcnn.eval import detection as det_eval
    if self._preview is None:
      self._preview = self._fixed_eval_examples(n)
    images, truth, source_hw = self._preview
    detections = jax.device_get(self._detect(variables, jnp.asarray(images), source_hw))
    if jax.process_index() == 0:
      det_eval.save_detection_grid(os.path.join(workdir, "plots", f"detections_step{step:07d}.png"), images,
                                   detections, class_names=self.class_names,
                                   score_threshold=float(self.options.picture_score), ground_truth=truth)
    return {}

  def _fixed_eval_examples(self, n):
    from jaxcnn import data as data_lib
    batch = next(iter(data_lib.eval_iterator(self.config.data, global_batch_size=n)))
    keep = np.asarray(batch["mask"]) > 0
    truth = {"boxes": np.asarray(batch["boxes"])[keep], "labels": np.asarray(batch["box_classes"])[keep],
             "valid": np.asarray(batch["boxes_valid"])[keep]}
    source_hw = np.asarray(batch["source_hw"])[keep] if "source_hw" in batch else None
    return np.asarray(batch["image"])[keep], truth, source_hw
