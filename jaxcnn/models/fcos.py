"""FCOS (Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection") as torchvision builds it.

The detection contract and the ResNet-FPN backbone are `jaxcnn.models.retinanet`'s (`FPNDetector`).
One "anchor" per location: a square of the level's stride (8, 16, 32, 64, 128), whose centre is the
FCOS point. Head (torchvision's FCOSHead): two towers of `head_convs` x (3x3 conv with bias,
GroupNorm(32), ReLU); `cls_logits` (prior 0.01), `bbox_regression` = ReLU(bbox_reg) (l, t, r, b
distances in units of the anchor size: BoxLinearCoder(normalize_by_size=True)), `bbox_ctrness`.

Matching (torchvision's FCOS.compute_loss, fixed shapes): a point matches a valid ground-truth box when
it lies inside it, within `center_sampling_radius` x its stride of the box centre (Chebyshev distance),
and its largest l/t/r/b distance is in (4 stride, 8 stride) (no lower bound on the first level, no upper
bound on the last); among several boxes the one with the smallest area wins (the first on float32 ties,
as torchvision's (1e8 - area) argmax). Loss, normalised by the number of foreground points of the
whole batch (psum over `axis_name` on the legacy pmap path, then scaled by the device count so the
trainer's mean over devices is the global loss): sigmoid focal loss summed over every point and class,
GIoU loss of the decoded boxes and BCE of the centerness (target sqrt(min(l, r) / max(l, r) *
min(t, b) / max(t, b))) summed over the foreground. Keys 'train/classification',
'train/bbox_regression', 'train/bbox_ctrness'.
Post-processing: score sqrt(sigmoid(cls) * sigmoid(ctrness)), score_thresh 0.2, topk 1000 per level,
batched NMS 0.6, 100 detections (torchvision's defaults).

Registered: fcos_resnet50_fpn (91 classes): 32,322,720 parameters (torchvision's with weights=None).
"""
from typing import Any, Dict, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv
from jaxcnn.layers.fpn import ConvNorm
from jaxcnn.losses import sigmoid_focal_loss
from jaxcnn.models.retinanet import FPNDetector, RetinaNetClassificationHead, _pad_targets, head_init
from jaxcnn.ops import clip_boxes_to_image, generalized_box_iou_loss
from jaxcnn.registry import register_model


def linear_decode(rel_codes, boxes):
  """torchvision's BoxLinearCoder(normalize_by_size=True).decode: (l, t, r, b) x size around the centre."""
  ctr_x = 0.5 * (boxes[..., 0] + boxes[..., 2])
  ctr_y = 0.5 * (boxes[..., 1] + boxes[..., 3])
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  return jnp.stack([ctr_x - rel_codes[..., 0] * w, ctr_y - rel_codes[..., 1] * h,
                    ctr_x + rel_codes[..., 2] * w, ctr_y + rel_codes[..., 3] * h], axis=-1)


def linear_encode(reference_boxes, proposals):
  """torchvision's BoxLinearCoder(normalize_by_size=True).encode(reference_boxes, proposals)."""
  ctr_x = 0.5 * (reference_boxes[..., 0] + reference_boxes[..., 2])
  ctr_y = 0.5 * (reference_boxes[..., 1] + reference_boxes[..., 3])
  w = reference_boxes[..., 2] - reference_boxes[..., 0]
  h = reference_boxes[..., 3] - reference_boxes[..., 1]
  return jnp.stack([(ctr_x - proposals[..., 0]) / w, (ctr_y - proposals[..., 1]) / h,
                    (proposals[..., 2] - ctr_x) / w, (proposals[..., 3] - ctr_y) / h], axis=-1)


class FCOSRegressionHead(nn.Module):
  """Tower, then ReLU(bbox_reg) [.., 4] and bbox_ctrness [.., 1] per location; shared over levels."""
  num_anchors: int = 1
  num_convs: int = 4
  channels: int = 256
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.conv = [ConvNorm(self.channels, 3, norm="group", use_bias=True, kernel_init=head_init, dtype=self.dtype,
                          param_dtype=self.param_dtype) for _ in range(self.num_convs)]
    conv = lambda n: Conv(n, (3, 3), padding=1, kernel_init=head_init, dtype=self.dtype, param_dtype=self.param_dtype)
    self.bbox_reg = conv(self.num_anchors * 4)
    self.bbox_ctrness = conv(self.num_anchors)

  def __call__(self, features, train: bool = False):
    regression, ctrness = [], []
    for f in features:
      for conv in self.conv:
        f = nn.relu(conv(f, train))
      r, c = nn.relu(self.bbox_reg(f)), self.bbox_ctrness(f)
      regression.append(r.reshape(r.shape[0], -1, 4))
      ctrness.append(c.reshape(c.shape[0], -1, 1))
    return jnp.concatenate(regression, axis=1), jnp.concatenate(ctrness, axis=1)


class FCOSHead(nn.Module):
  num_classes: int
  num_convs: int = 4
  channels: int = 256
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(num_convs=self.num_convs, channels=self.channels, dtype=self.dtype, param_dtype=self.param_dtype)
    self.classification_head = RetinaNetClassificationHead(1, self.num_classes, norm="group", conv_bias=True, **kw)
    self.regression_head = FCOSRegressionHead(1, **kw)

  def __call__(self, features, train: bool = False):
    regression, ctrness = self.regression_head(features, train)
    return {"cls_logits": self.classification_head(features, train), "bbox_regression": regression,
            "bbox_ctrness": ctrness}


class FCOS(FPNDetector):
  """FCOS on a ResNet-FPN (see module docstring)."""
  anchor_sizes: Sequence[Sequence[float]] = ((8,), (16,), (32,), (64,), (128,))
  aspect_ratios: Sequence[float] = (1.0,)
  center_sampling_radius: float = 1.5
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  score_thresh: float = 0.2
  nms_thresh: float = 0.6
  detections_per_img: int = 100
  topk_candidates: int = 1000

  def __post_init__(self):
    if len(self.aspect_ratios) != 1 or any(len(s) != 1 for s in self._anchor_sizes()):
      raise UserError("FCOS needs one anchor per location: one size per level and one aspect ratio")
    if self.fpn_channels % 32:
      raise UserError(f"FCOS's GroupNorm(32) head needs fpn_channels divisible by 32 (got {self.fpn_channels})")
    if self.detections_per_img < 1 or self.topk_candidates < 1:
      raise UserError("detections_per_img and topk_candidates must be >= 1")
    super().__post_init__()

  def setup(self):
    self.backbone = self._make_backbone()
    self.fpn = self._make_fpn()
    self.head = FCOSHead(self.num_classes, num_convs=self.head_convs, channels=self.fpn_channels,
                         **self._options())

  def __call__(self, x, train: bool = False) -> Dict[str, jax.Array]:
    return self.head(self._pyramid(x, train), train)

  def match(self, anchors, gt_boxes, gt_valid, level_sizes):
    """Matched ground-truth index per point [A] (-1: background), torchvision's FCOS rule."""
    centers = 0.5 * (anchors[:, :2] + anchors[:, 2:])
    sizes = anchors[:, 2] - anchors[:, 0]
    gt_centers = 0.5 * (gt_boxes[:, :2] + gt_boxes[:, 2:])
    match = jnp.max(jnp.abs(centers[:, None] - gt_centers[None]), axis=2) < self.center_sampling_radius * sizes[:, None]
    x, y = centers[:, 0:1], centers[:, 1:2]
    dist = jnp.stack([x - gt_boxes[None, :, 0], y - gt_boxes[None, :, 1],
                      gt_boxes[None, :, 2] - x, gt_boxes[None, :, 3] - y], axis=2)
    match &= jnp.min(dist, axis=2) > 0
    n = anchors.shape[0]
    position = jnp.arange(n)
    lower = jnp.where(position < level_sizes[0], 0.0, sizes * 4)
    upper = jnp.where(position >= n - level_sizes[-1], jnp.inf, sizes * 8)
    largest = jnp.max(dist, axis=2)
    match &= (largest > lower[:, None]) & (largest < upper[:, None]) & gt_valid[None, :]
    areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    quality = match.astype(jnp.float32) * (jnp.float32(1e8) - areas[None, :])
    best = jnp.max(quality, axis=1)
    return jnp.where(best < 1e-5, -1, jnp.argmax(quality, axis=1)).astype(jnp.int32)

  def detection_loss(self, outputs, targets, image_size, axis_name=None):
    """torchvision's FCOS loss (see module docstring)."""
    anchors = self.anchors(image_size)
    cls_logits = jnp.asarray(outputs["cls_logits"], jnp.float32)
    regression = jnp.asarray(outputs["bbox_regression"], jnp.float32)
    ctrness = jnp.asarray(outputs["bbox_ctrness"], jnp.float32)[..., 0]
    boxes, labels, valid = _pad_targets(targets)
    level_sizes = self.level_sizes(image_size)
    matches = jax.vmap(lambda b, v: self.match(anchors, b, v, level_sizes))(boxes, valid)
    fg = matches >= 0
    idx = jnp.maximum(matches, 0)
    gt_labels = jnp.take_along_axis(labels, idx, axis=1)
    gt_boxes = jnp.take_along_axis(boxes, idx[..., None], axis=1)
    num_fg = jnp.sum(fg).astype(jnp.float32)
    scale = 1.0
    if axis_name is not None:
      num_fg = jax.lax.psum(num_fg, axis_name)
      scale = jax.lax.psum(1.0, axis_name)
    norm = jnp.maximum(1.0, num_fg) / scale
    target = jax.nn.one_hot(gt_labels, cls_logits.shape[-1]) * fg[..., None]
    cls_loss = jnp.sum(sigmoid_focal_loss(cls_logits, target, self.focal_alpha, self.focal_gamma)) / norm
    # Background points get their own anchor as ground truth: every term stays finite before masking.
    safe_gt = jnp.where(fg[..., None], gt_boxes, anchors[None])
    giou = generalized_box_iou_loss(linear_decode(regression, anchors[None]), safe_gt)
    box_loss = jnp.sum(jnp.where(fg, giou, 0.0)) / norm
    ltrb = linear_encode(anchors[None], safe_gt)
    lr, tb = ltrb[..., 0::2], ltrb[..., 1::2]
    ratio = (jnp.min(lr, -1) / jnp.max(lr, -1)) * (jnp.min(tb, -1) / jnp.max(tb, -1))
    ctr_target = jnp.sqrt(jnp.where(fg, ratio, 1.0))
    bce = jnp.maximum(ctrness, 0) - ctrness * ctr_target + jnp.log1p(jnp.exp(-jnp.abs(ctrness)))
    ctr_loss = jnp.sum(jnp.where(fg, bce, 0.0)) / norm
    metrics = {"train/classification": cls_loss, "train/bbox_regression": box_loss, "train/bbox_ctrness": ctr_loss}
    return cls_loss + box_loss + ctr_loss, metrics

  def postprocess(self, outputs, image_size) -> Dict[str, jax.Array]:
    """torchvision's FCOS postprocess_detections with fixed shapes."""
    anchors = self.anchors(image_size)
    scores = jnp.sqrt(jax.nn.sigmoid(jnp.asarray(outputs["cls_logits"], jnp.float32))
                      * jax.nn.sigmoid(jnp.asarray(outputs["bbox_ctrness"], jnp.float32)))
    regression = jnp.asarray(outputs["bbox_regression"], jnp.float32)
    top, anchor_idx, labels, valid = self._select(scores, image_size)
    deltas = jnp.take_along_axis(regression, anchor_idx[..., None], axis=1)
    boxes = clip_boxes_to_image(linear_decode(deltas, anchors[anchor_idx]), tuple(image_size))
    return self._nms(boxes, top, labels, valid)


register_model("fcos_resnet50_fpn")(FCOS)
