"""Mask R-CNN (He et al. 2017) as torchvision builds it: Faster R-CNN (`jaxcnn.models.rcnn`) plus a mask branch.

Registered: maskrcnn_resnet50_fpn (91 classes, 44,454,513 parameters: torchvision's with weights=None,
i.e. BatchNorm2d in the backbone): torchvision's fasterrcnn_resnet50_fpn (same fields and defaults) and
  mask_roi_pool      MultiScaleRoIAlign over the pyramid maps '0'..'3', 14x14, sampling_ratio 2
                     (`mask_roi_output_size`, `mask_roi_sampling_ratio`)
  mask_head          MaskRCNNHeads: `mask_layers` (256,) * 4 3x3 convs (with bias, `mask_dilation` 1) + ReLU;
                     submodules conv_i = torchvision's roi_heads.mask_head.i.0
  mask_predictor     MaskRCNNPredictor: conv5_mask (2x2 transposed conv, stride 2, `mask_dim_reduced` 256) +
                     ReLU + mask_fcn_logits (1x1 conv to num_classes): mask logits [.., 28, 28, num_classes]
                     (NHWC per RoI)
Initialisation as torchvision: kaiming_normal_(mode='fan_out', relu) kernels, zero biases.

Targets: the detection contract's {'boxes', 'labels', 'valid'} plus, for training, 'masks' [B, M, H, W]
(uint8 / bool / 0-1 floats; instance m of image b is masks[b, m], in the frame of the model input (H, W),
padded slots like the boxes'). Without 'masks' the model runs in eval only: training (`__call__` with
train=True, `detection_loss`) refuses with a UserError naming what it needs.

Training (`__call__(x, train=True, targets=...)` with a 'sampling' rng): Faster R-CNN's forward, then the
positive sampled RoIs (torchvision: labels > 0 among the box head's samples, the ground-truth boxes included)
are gathered into int(box_batch_size_per_image * box_positive_fraction) slots per image (the most the sampler
can draw; 128 by default), in the sampled RoIs' order, the rest marked invalid: 'mask_proposals' [B, P, 4],
'mask_matched_idxs' [B, P], 'mask_positive' [B, P], 'mask_logits' [B, P, 28, 28, K]. `detection_loss` adds
torchvision's loss_mask ('train/loss_mask'): the targets are each positive's matched ground-truth mask
cropped by roi_align onto it (`jaxcnn.ops.project_masks_on_boxes`; `mask_target_batch` RoIs at a time bound
the memory), BCE-with-logits on the matched class's channel, the mean over all positives of the batch and
their 28 x 28 cells (psum-ed over `axis_name` when given), 0 without positives.

Eval (`__call__(x)`): the box detections are computed inside the forward (`postprocess_boxes`: the mask head
runs on them, as torchvision's), returned as 'detection_boxes', 'detection_scores', 'detection_labels',
'detection_valid' [B, D], with 'mask_logits' [B, D, 28, 28, K] of every detection slot. `postprocess` returns
those detections and 'masks' float32 [B, D, H, W]: sigmoid of the predicted label's channel pasted into the
image (`jaxcnn.ops.paste_masks_in_image`: one cell of padding, the box scaled by 30 / 28 and truncated, a
bilinear resize), zero for padded slots: torchvision's maskrcnn output 'masks' (before any 0.5 threshold).
"""
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, ConvTranspose
from jaxcnn.models.rcnn import FasterRCNN, _pad_targets
from jaxcnn.ops import maskrcnn_inference, maskrcnn_loss, paste_masks_in_image
from jaxcnn.registry import register_model

mask_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # kaiming_normal_(fan_out, relu)


class MaskRCNNHeads(nn.Module):
  """torchvision's MaskRCNNHeads(in, layers, dilation) without norm: per width a 3x3 conv (bias) + ReLU."""
  layers: Sequence[int] = (256, 256, 256, 256)
  dilation: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = int(self.dilation)
    for i, features in enumerate(self.layers):
      x = Conv(features, (3, 3), padding=d, kernel_dilation=d, kernel_init=mask_init, dtype=self.dtype,
               param_dtype=self.param_dtype, name=f"conv_{i}")(x)
      x = nn.relu(x)
    return x


class MaskRCNNPredictor(nn.Module):
  """conv5_mask (2x2 transposed conv, stride 2) + ReLU + mask_fcn_logits (1x1 conv).

  [K, s, s, C] -> [K, 2s, 2s, num_classes].
  """
  num_classes: int
  dim_reduced: int = 256
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ConvTranspose(self.dim_reduced, (2, 2), strides=(2, 2), padding="VALID", kernel_init=mask_init,
                      dtype=self.dtype, param_dtype=self.param_dtype, name="conv5_mask")(x)
    x = nn.relu(x)
    return Conv(self.num_classes, (1, 1), kernel_init=mask_init, dtype=self.dtype, param_dtype=self.param_dtype,
                name="mask_fcn_logits")(x)


def _masks_of(targets, image_size, name: str):
  if targets is None or "masks" not in targets:
    raise UserError(f"{name} trains on instance masks: targets need 'masks' [B, M, H, W] (0/1, the image's frame, "
                    "slots as the boxes'); without them it runs in eval only")
  masks = jnp.asarray(targets["masks"])
  boxes = jnp.asarray(targets["boxes"])
  if masks.ndim != 4 or masks.shape[:2] != boxes.shape[:2] or tuple(masks.shape[2:]) != tuple(image_size):
    raise UserError(f"targets['masks'] must be [B, M, H, W] = {tuple(boxes.shape[:2]) + tuple(image_size)} "
                    f"(one per box slot, in the input's frame); got {tuple(masks.shape)}")
  if masks.shape[1] == 0:  # _pad_targets gives the boxes one invalid slot: the masks get one too
    masks = jnp.zeros(masks.shape[:1] + (1,) + masks.shape[2:], masks.dtype)
  return masks


class MaskRCNN(FasterRCNN):
  """Mask R-CNN: Faster R-CNN with torchvision's mask branch (see the module docstring)."""
  mask_layers: Sequence[int] = (256, 256, 256, 256)
  mask_dilation: int = 1
  mask_dim_reduced: int = 256
  mask_roi_output_size: int = 14
  mask_roi_sampling_ratio: int = 2
  mask_target_batch: Optional[int] = 32

  def __post_init__(self):
    if not self.mask_layers or min(self.mask_layers) < 1 or self.mask_dim_reduced < 1:
      raise UserError(f"mask_layers={tuple(self.mask_layers)} needs at least one width, widths and "
                      f"mask_dim_reduced={self.mask_dim_reduced} >= 1")
    if self.mask_dilation < 1 or self.mask_roi_output_size < 1:
      raise UserError("mask_dilation and mask_roi_output_size must be >= 1")
    if self.mask_target_batch is not None and self.mask_target_batch < 1:
      raise UserError(f"mask_target_batch={self.mask_target_batch} must be >= 1 or None (all RoIs at once)")
    super().__post_init__()

  def setup(self):
    super().setup()
    self.mask_head = MaskRCNNHeads(tuple(self.mask_layers), self.mask_dilation, **self._options())
    self.mask_predictor = MaskRCNNPredictor(self.num_classes, self.mask_dim_reduced, **self._options())

  def mask_positive_slots(self) -> int:
    """Mask slots per image in training: the most positives the RoI sampler can draw."""
    return max(1, min(int(self.box_batch_size_per_image * self.box_positive_fraction),
                      int(self.box_batch_size_per_image)))

  def mask_branch(self, features, boxes, image_size):
    """Mask logits [B, R, 2s, 2s, num_classes] of per-image boxes [B, R, 4] (gradient stops at the boxes)."""
    pooled = self.pool_rois(features, jax.lax.stop_gradient(boxes), image_size, self.mask_roi_output_size,
                            self.mask_roi_sampling_ratio)
    b, r = pooled.shape[:2]
    logits = self.mask_predictor(self.mask_head(pooled.reshape((b * r,) + pooled.shape[2:])))
    return logits.reshape((b, r) + logits.shape[1:])

  def extra_heads(self, features, outputs, image_size, train: bool, targets):
    if train:
      _masks_of(targets, image_size, type(self).__name__)
      positive = jnp.asarray(outputs["roi_positive"], bool)
      slots = min(self.mask_positive_slots(), positive.shape[1])

      def gather(pos, rois, matched):
        order = jnp.nonzero(pos, size=slots, fill_value=0)[0]
        ok = jnp.arange(slots) < jnp.sum(pos)
        return jnp.where(ok[:, None], rois[order], 0.0), jnp.where(ok, matched[order], 0), ok

      boxes, matched, ok = jax.vmap(gather)(positive, outputs["roi_proposals"], outputs["roi_matched_idxs"])
      return {**outputs, "mask_proposals": boxes, "mask_matched_idxs": matched.astype(jnp.int32),
              "mask_positive": ok, "mask_logits": self.mask_branch(features, boxes, image_size)}
    dets = self.postprocess_boxes(outputs, image_size)
    return {**outputs, "detection_boxes": dets["boxes"], "detection_scores": dets["scores"],
            "detection_labels": dets["labels"], "detection_valid": dets["valid"],
            "mask_logits": self.mask_branch(features, dets["boxes"], image_size)}

  def detection_loss(self, outputs, targets, image_size, axis_name=None):
    """Faster R-CNN's loss dict + loss_mask (module docstring); metrics 'train/loss_mask' too."""
    masks = _masks_of(targets, image_size, type(self).__name__)
    loss, metrics = super().detection_loss(outputs, targets, image_size, axis_name)
    _, labels, _ = _pad_targets(targets)
    loss_mask = maskrcnn_loss(outputs["mask_logits"], outputs["mask_proposals"], masks, labels,
                              outputs["mask_matched_idxs"], jnp.asarray(outputs["mask_positive"]) > 0, axis_name,
                              roi_batch=self.mask_target_batch)
    return loss + loss_mask, {**metrics, "train/loss_mask": loss_mask}

  def postprocess(self, outputs, image_size) -> Dict[str, jax.Array]:
    """The forward's detections + 'masks' [B, D, H, W] (probabilities pasted into the image, 0 for padding)."""
    if "detection_boxes" not in outputs:
      raise UserError("MaskRCNN.postprocess needs the eval-mode outputs of __call__(x) (train=False)")
    boxes = jnp.asarray(outputs["detection_boxes"], jnp.float32)
    labels = jnp.asarray(outputs["detection_labels"]).astype(jnp.int32)
    valid = jnp.asarray(outputs["detection_valid"]) > 0
    probs = maskrcnn_inference(outputs["mask_logits"], labels)
    size = tuple(int(s) for s in image_size)
    masks = jax.vmap(lambda p, b: paste_masks_in_image(p, b, size))(probs, boxes)
    return {"boxes": boxes, "scores": jnp.asarray(outputs["detection_scores"], jnp.float32), "labels": labels,
            "valid": valid, "masks": jnp.where(valid[:, :, None, None], masks, 0.0)}


register_model("maskrcnn_resnet50_fpn")(MaskRCNN)
