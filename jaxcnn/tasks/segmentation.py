"""Semantic segmentation: per-pixel losses, a confusion matrix summed over the eval split, mIoU.

Batches carry `image` [B, H, W, C] and `segmentation` int32 [B, H, W] (class ids, or the
dataset's ignore label, 255 by default, for pixels that count nowhere: VOC's boundaries and
the padding of crops and eval images). Models follow the segmentation contract (`models/fcn.py`):
{'out': logits [B, H, W, K], 'aux': ...} at the input size.

Options (config section `segmentation`):
  loss          cross_entropy (softmax, ignore label, optional class_weights) for K classes;
                bce | dice | bce_dice for binary segmentation (a 1-logit model, sigmoid)
  binary        True: the dataset's classes are background (0) / foreground (1) and the model
                predicts one logit; eval thresholds the sigmoid at 0.5 and reports the
                foreground Dice and IoU besides mIoU
  class_weights per-class weights of the cross-entropy (torch's `weight=`), () for none
  aux_weight    torchvision's auxiliary loss weight (0.5) when the model has an 'aux' head
  overlays      eval images drawn with their predicted masks in plots/ at every eval
Logits that are not at the label size are resized bilinearly (align_corners=False, as
torchvision's `F.interpolate`); a U-Net with valid convolutions predicts the centre of its
input, so its labels are cropped to the centre instead.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import losses
from jaxcnn.errors import UserError, unknown
from jaxcnn.eval import segmentation as seg_eval
from jaxcnn.layers import resize_bilinear
from jaxcnn.registry import create_model
from jaxcnn.tasks.base import Task, model_kwargs

LOSSES = ("cross_entropy", "bce", "dice", "bce_dice")


def default_config():
  import ml_collections
  return ml_collections.ConfigDict({"loss": "cross_entropy", "binary": False, "class_weights": (),
                                    "aux_weight": 0.5, "overlays": 8})


class Segmentation(Task):
  best_metric = ("eval/miou", "max")

  def __init__(self, config, data_info, axis_name=None):
    super().__init__(config, axis_name)
    options = default_config()
    options.update(config.get("segmentation", {}))
    self.options = options
    self.num_classes = int(data_info.num_classes)
    self.ignore_label = int(getattr(data_info, "ignore_label", 255))
    self.class_names = tuple(getattr(data_info, "class_names", ()) or ()) or None
    if options.loss not in LOSSES:
      raise unknown("segmentation.loss", options.loss, LOSSES)
    self.binary = bool(options.binary)
    if self.binary and self.num_classes != 2:
      raise UserError(f"segmentation.binary=True needs a dataset of 2 classes (background, foreground); "
                      f"'{data_info.name}' has {self.num_classes}")
    if self.binary != (options.loss != "cross_entropy"):
      raise UserError(f"segmentation.loss='{options.loss}' goes with binary={not self.binary}: cross_entropy is "
                      "for K-class softmax models, bce / dice / bce_dice for binary (1-logit) ones")
    weights = tuple(float(w) for w in options.class_weights)
    if weights and (len(weights) != self.num_classes or min(weights) < 0):
      raise UserError(f"segmentation.class_weights needs {self.num_classes} non-negative numbers, got {weights}")
    self.class_weights = jnp.asarray(weights, jnp.float32) if weights else None
    if float(options.aux_weight) < 0:
      raise UserError(f"segmentation.aux_weight={options.aux_weight} must be >= 0 (torchvision: 0.5)")
    self.model = create_model(config.model.name, **model_kwargs(
        config.model, config.train, axis_name, num_classes=1 if self.binary else self.num_classes))
    self._preview = None
    self._apply_eval = jax.jit(lambda v, x: self.model.apply(v, x, train=False)["out"].astype(jnp.float32))

  def describe(self):
    return {**super().describe(), "num_classes": self.num_classes}

  # --- training -------------------------------------------------------------------------------------------
  def init(self, rng, batch):
    params_rng, dropout_rng = jax.random.split(rng)
    return self.model.init({"params": params_rng, "dropout": dropout_rng}, batch["image"], train=False)

  def pixel_loss(self, logits, labels):
    logits, labels = self.aligned(logits, labels)
    if not self.binary:
      return losses.segmentation_cross_entropy(logits, labels, self.ignore_label, self.class_weights)
    fn = {"bce": losses.binary_cross_entropy_with_logits, "dice": losses.dice_loss,
          "bce_dice": losses.bce_dice_loss}[self.options.loss]
    return fn(logits[..., 0], labels, self.ignore_label)

  def aligned(self, logits, labels):
    """Logits at the label size: resized bilinearly, or the labels centre-cropped to smaller logits
    (a valid-convolution U-Net predicts its input's centre)."""
    logits = logits.astype(jnp.float32)
    lh, lw = labels.shape[1:3]
    h, w = logits.shape[1:3]
    if getattr(self.model, "padding", "same") == "valid" and (h, w) != (lh, lw):
      top, left = (lh - h) // 2, (lw - w) // 2
      return logits, labels[:, top:top + h, left:left + w]
    return resize_bilinear(logits, (lh, lw)), labels

  def predictions(self, logits):
    if self.binary:
      return (logits[..., 0] > 0).astype(jnp.int32)  # sigmoid > 0.5
    return jnp.argmax(logits, -1).astype(jnp.int32)

  def loss(self, params, model_state, batch, rng):
    outputs, new_state = self.model.apply(
        {"params": params, **model_state}, batch["image"], train=True, rngs={"dropout": rng},
        mutable=list(model_state))
    labels = batch["segmentation"]
    main = self.pixel_loss(outputs["out"], labels)
    loss, metrics = main, {}
    if "aux" in outputs:
      aux = self.pixel_loss(outputs["aux"], labels)
      loss = main + float(self.options.aux_weight) * aux
      metrics = {"train/main_loss": main, "train/aux_loss": aux}
    logits, labels = self.aligned(outputs["out"], labels)
    valid = labels != self.ignore_label
    correct = jnp.sum((self.predictions(logits) == labels) & valid)
    metrics["train/pixel_accuracy"] = correct / jnp.maximum(jnp.sum(valid), 1)
    return loss, (new_state, {"train/loss": loss, **metrics})

  # --- evaluation -----------------------------------------------------------------------------------------
  def eval_step(self, variables, batch):
    logits, labels = self.aligned(self.model.apply(variables, batch["image"], train=False)["out"],
                                  batch["segmentation"])
    real = batch["mask"][:, None, None] > 0
    labels = jnp.where(real, labels, self.ignore_label)  # padding examples count nowhere
    k = 2 if self.binary else self.num_classes
    valid = labels != self.ignore_label
    pixels = jnp.sum(valid)
    per_pixel = self._per_pixel_loss(logits, labels)
    return {"confusion": seg_eval.confusion_matrix(labels, self.predictions(logits), k, self.ignore_label),
            "loss": jnp.sum(jnp.where(valid, per_pixel, 0.0)), "pixels": pixels}

  def _per_pixel_loss(self, logits, labels):
    """Unweighted per-pixel NLL (softmax CE, or BCE for binary models) for the eval loss."""
    safe = jnp.where(labels == self.ignore_label, 0, labels)
    if self.binary:
      x = logits[..., 0]
      return jnp.maximum(x, 0) - x * safe + jnp.log1p(jnp.exp(-jnp.abs(x)))
    logp = jax.nn.log_softmax(logits, -1)
    return -jnp.take_along_axis(logp, safe[..., None], -1)[..., 0]

  def eval_metrics(self, sums):
    cm = np.asarray(sums.pop("confusion"))
    names = self.class_names if self.class_names and len(self.class_names) == cm.shape[0] else None
    metrics = {f"eval/{k}": v for k, v in seg_eval.metrics_from_confusion(cm, names).items()}
    metrics["eval/loss"] = float(sums["loss"]) / max(float(sums["pixels"]), 1.0)
    return metrics

  # --- pictures -------------------------------------------------------------------------------------------
  def on_eval(self, variables, step, workdir):
    n = int(self.options.overlays)
    if n <= 0:
      return {}
    if self._preview is None:
      self._preview = self._fixed_eval_examples(n)
      if jax.process_index() == 0:
        images, labels = self._preview
        seg_eval.save_overlay_grid(os.path.join(workdir, "plots", "segmentation_truth.png"), images, labels,
                                   num_classes=2 if self.binary else self.num_classes)
    images, _ = self._preview
    logits = self._apply_eval(variables, images)
    if jax.process_index() == 0:
      preds = np.asarray(self.predictions(jnp.asarray(logits)))
      seg_eval.save_overlay_grid(os.path.join(workdir, "plots", f"segmentation_step{step:07d}.png"), images, preds,
                                 num_classes=2 if self.binary else self.num_classes)
    return {}

  def _fixed_eval_examples(self, n):
    from jaxcnn import data as data_lib
    batch = next(iter(data_lib.eval_iterator(self.config.data, global_batch_size=n)))
    keep = np.asarray(batch["mask"]) > 0
    return np.asarray(batch["image"])[keep], np.asarray(batch["segmentation"])[keep]
