"""RetinaNet (Lin et al. 2017, "Focal Loss for Dense Object Detection") as torchvision builds it, and the
detection-model contract shared with `fcos.py`.

Detection contract (what the `detection` task relies on):
  __call__(x [B, H, W, C], train) -> raw head outputs with static shapes, torchvision's order
      (levels, then rows, columns, anchors): {'cls_logits' [B, A, num_classes], 'bbox_regression' [B, A, 4]}
      (+ 'bbox_ctrness' [B, A, 1] for FCOS).
  anchors(image_size) -> [A, 4] xyxy pixels (`jaxcnn.ops.AnchorGenerator`, static).
  detection_loss(outputs, targets, image_size, axis_name=None) -> (loss, {'train/<torchvision key>': value}):
      targets {'boxes' [B, M, 4] xyxy pixels, 'labels' int [B, M] in 1..num_classes-1, 'valid' bool [B, M]};
      padded slots count nowhere, an image without boxes is all background. The value is the sum of
      torchvision's train-mode loss dict on the same batch.
  postprocess(outputs, image_size) -> {'boxes' [B, D, 4], 'scores' [B, D], 'labels' int32 [B, D],
      'valid' bool [B, D]}, D = detections_per_img, decreasing score, padding last: torchvision's
      `postprocess_detections` (sigmoid, score_thresh, topk_candidates per level, decode, clip, batched NMS).
  These three use no parameters: call them on the unbound module. All are jit-able (fixed shapes).

Labels: class 0 is background (torchvision's convention), the task maps dataset class c to c + 1.
torchvision's postprocess also scores the background column, which training always pushes to 0;
`keep_background_class=False` (default) never outputs label 0, True reproduces torchvision exactly.

Backbone (`FPNDetector`, torchvision's `_resnet_fpn_extractor`): the registered ResNet `backbone_name`
with `return_features=True` as submodule `backbone` (exactly the classification model's variables minus
`fc`, so ImageNet weights load into `backbone/`), its stages `returned_layers` (default 2-4: C3..C5)
into `jaxcnn.layers.FeaturePyramidNetwork` (`fpn`, `fpn_channels`) with `LastLevelP6P7`
(`extra_blocks='p6p7'`, from P5 or C5 by `p6p7_from`), or 'maxpool', or 'none'. Feature-map sizes are
ceil-halvings of (H, W), so the anchors follow statically from the image size.

Frozen BatchNorm and frozen layers: torchvision uses FrozenBatchNorm2d (BN with constant statistics and
affine parameters) when pretrained weights are loaded, BatchNorm2d otherwise, and trains only the last
`trainable_backbone_layers` (default 3) backbone stages. Here `frozen_bn=True` runs the backbone's BNs in
inference mode always (statistics never updated); which parameters are trained is the trainer's
`finetune.freeze` regex, and `backbone_freeze_pattern(trainable_layers, frozen_bn)` writes torchvision's
rule as one (e.g. 3 layers + frozen BN: conv1, bn1, layer1, every backbone BN affine fixed). Defaults
(trainable BN, nothing frozen) are torchvision's model built without weights, what the parity tests use.

Registered (91 classes; parameter counts equal torchvision's with weights=None, i.e. BatchNorm2d):
  retinanet_resnet50_fpn     34,068,119: heads without norm, P6/P7 from P5, smooth L1 (beta 0 = L1)
                             box loss, score_thresh 0.05, nms 0.5, 300 detections, topk 1000
  retinanet_resnet50_fpn_v2  38,198,935: GroupNorm(32) in the head towers, P6/P7 from C5
                             (torchvision's LastLevelP6P7(2048, 256)), GIoU box loss
Loss: Matcher(0.5, 0.4, allow_low_quality_matches), focal loss (alpha 0.25, gamma 2) summed over the
anchors not between the thresholds / max(1, foreground) per image, box loss summed over the foreground
/ max(1, foreground) per image, both averaged over the images.

Small-model fields for offline runs: `backbone_name` ('resnet18', 'resnet34', ... ResNet-family models
with the ImageNet stem), `returned_layers`, `fpn_channels`, `extra_blocks`, `anchor_sizes` (one tuple per
level; default torchvision's (32, 40, 50) ... (512, 645, 812)), `aspect_ratios`, `head_convs`.

Adaptive NMS (Liu et al. 2019, "Adaptive NMS: Refining Pedestrian Detection in a Crowd"), optional:
`density_head=True` adds a density sub-network `head/density_head` (off by default: the parameters, the
outputs and the torchvision parity above are then exactly as without it). It is a tower of `head_convs`
3x3 conv(-GN)-ReLU (the norm of the other heads) and a 3x3 conv with one output per anchor (kernels
N(0, 0.01), bias 0), shared over the levels like the other heads; `__call__` then also returns
'density' [B, A, 1], raw: the predicted density is its sigmoid, in [0, 1]. Faithful to the paper: the
target of an anchor matched to ground truth i is d_i = max over the image's other valid ground truths j
of IoU(b_i, b_j) (0 for a lone object), learnt with a smooth L1 loss (beta 1) between sigmoid(density)
and d_i on the foreground anchors, and at inference each kept box M suppresses with threshold
max(nms_thresh, d_M) (`jaxcnn.ops.adaptive_nms`, class-aware with the labels as `idxs`, as
`batched_nms` is; the candidates' own predicted densities). Simplified: the paper's subnet (a 1x1 conv
on the features concatenated with the detection outputs, then a large 5x5 conv) is a tower on the
pyramid features like the other heads, and the foreground is RetinaNet's matcher. The loss term is
normalised like the box loss (per image by max(1, foreground), averaged over images), times
`density_weight` (1.0), and reported (weighted, so the metrics still sum to the loss) as 'train/density'.
"""
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.errors import UserError, unknown
from jaxcnn.layers import Conv
from jaxcnn.layers.fpn import ConvNorm, FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7
from jaxcnn.losses import sigmoid_focal_loss, smooth_l1_loss
from jaxcnn.ops import (AnchorGenerator, BoxCoder, Matcher, adaptive_nms, batched_nms, box_iou,
                        clip_boxes_to_image, generalized_box_iou_loss, retinanet_anchor_sizes)
from jaxcnn.registry import create_model, register_model

FPN_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                 "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
EXTRA_BLOCKS = ("p6p7", "maxpool", "none")
HEAD_NORMS = (None, "group")
BOX_LOSSES = ("l1", "smooth_l1", "giou")
# torchvision: layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:n] (+ "bn1" at 5)
_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")
head_init = nn.initializers.normal(0.01)


def _ceil_half(n: int) -> int:
  return -(-n // 2)


def _check(value, field, allowed):
  if value not in allowed:
    raise unknown(field, value, allowed)


class FPNDetector(nn.Module):
  """A ResNet + FPN backbone (torchvision's resnet_fpn_backbone) under a detection head (subclasses)."""
  num_classes: int = 91
  backbone_name: str = "resnet50"
  returned_layers: Sequence[int] = (2, 3, 4)
  fpn_channels: int = 256
  extra_blocks: str = "p6p7"          # 'p6p7' | 'maxpool' | 'none'
  p6p7_from: str = "p5"               # 'p5' | 'c5' (torchvision: use_P5 = in_channels == out_channels)
  anchor_sizes: Optional[Sequence[Sequence[float]]] = None
  aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)
  head_convs: int = 4
  frozen_bn: bool = False             # backbone BNs always in inference mode (torchvision's FrozenBatchNorm2d)
  keep_background_class: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    _check(self.backbone_name, "backbone_name", FPN_BACKBONES)
    _check(self.extra_blocks, "extra_blocks", EXTRA_BLOCKS)
    _check(self.p6p7_from, "p6p7_from", ("p5", "c5"))
    layers = tuple(self.returned_layers)
    if not layers or list(layers) != sorted(set(layers)) or not set(layers) <= {1, 2, 3, 4}:
      raise UserError(f"returned_layers={layers} must be increasing stage numbers in 1..4, e.g. (2, 3, 4)")
    if self.num_classes < 2:
      raise UserError(f"num_classes={self.num_classes} must be >= 2 (class 0 is the background)")
    if self.fpn_channels < 1 or self.head_convs < 0:
      raise UserError(f"fpn_channels={self.fpn_channels} must be >= 1 and head_convs={self.head_convs} >= 0")
    if len(self._anchor_sizes()) != self.num_levels():
      raise UserError(f"anchor_sizes has {len(self._anchor_sizes())} levels but the pyramid has "
                      f"{self.num_levels()} (returned_layers {layers} + extra_blocks {self.extra_blocks!r})")
    if not self.aspect_ratios or min(self.aspect_ratios) <= 0:
      raise UserError(f"aspect_ratios={tuple(self.aspect_ratios)} must be positive numbers (height / width)")
    if len({len(s) for s in self._anchor_sizes()}) != 1:
      raise UserError(f"anchor_sizes={self._anchor_sizes()} must give every level the same number of sizes "
                      "(one head serves all levels)")
    super().__post_init__()

  # --- static geometry ---------------------------------------------------------------------------------
  def num_levels(self) -> int:
    return len(self.returned_layers) + {"p6p7": 2, "maxpool": 1, "none": 0}[self.extra_blocks]

  def _anchor_sizes(self) -> Tuple[Tuple[float, ...], ...]:
    if self.anchor_sizes is None:
      return retinanet_anchor_sizes()
    return tuple(tuple(s) if isinstance(s, (list, tuple)) else (s,) for s in self.anchor_sizes)

  def anchor_generator(self) -> AnchorGenerator:
    sizes = self._anchor_sizes()
    return AnchorGenerator(sizes, (tuple(self.aspect_ratios),) * len(sizes))

  def feature_shapes(self, image_size) -> Tuple[Tuple[int, int], ...]:
    """(H_l, W_l) of each pyramid level: the stem, max-pool and every stride-2 layer round up."""
    h, w = _ceil_half(_ceil_half(int(image_size[0]))), _ceil_half(_ceil_half(int(image_size[1])))
    shapes = []
    for stage in range(1, 5):
      if stage > 1:
        h, w = _ceil_half(h), _ceil_half(w)
      if stage in self.returned_layers:
        shapes.append((h, w))
    for _ in range(self.num_levels() - len(self.returned_layers)):
      h, w = _ceil_half(h), _ceil_half(w)
      shapes.append((h, w))
    return tuple(shapes)

  def anchors(self, image_size) -> jax.Array:
    """[A, 4] xyxy anchors of an image of `image_size` (H, W)."""
    return self.anchor_generator()(tuple(int(s) for s in image_size), self.feature_shapes(image_size))

  def level_sizes(self, image_size) -> Tuple[int, ...]:
    """Number of rows of the outputs (anchors) per level."""
    per_location = self.anchor_generator().num_anchors_per_location()
    return tuple(h * w * a for (h, w), a in zip(self.feature_shapes(image_size), per_location))

  # --- modules -----------------------------------------------------------------------------------------
  def _options(self) -> dict:
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)

  def _make_backbone(self):
    return create_model(self.backbone_name, return_features=True, bn_axis_name=self.bn_axis_name,
                        **self._options())

  def _make_fpn(self):
    extra = None
    if self.extra_blocks == "p6p7":
      extra = LastLevelP6P7(self.fpn_channels, use_p5=self.p6p7_from == "p5", **self._options())
    elif self.extra_blocks == "maxpool":
      extra = LastLevelMaxPool()
    return FeaturePyramidNetwork(self.fpn_channels, extra_blocks=extra, **self._options())

  def _pyramid(self, x, train: bool):
    features = self.backbone(x, train=train and not self.frozen_bn)
    return self.fpn([features[f"stage{i}"] for i in self.returned_layers], train)

  # --- shared post-processing --------------------------------------------------------------------------
  def _select(self, scores, image_size):
    """Per level: top `topk_candidates` of the flattened [anchors x classes] scores above score_thresh.

    scores [B, A, K] -> (scores, anchor indices, labels, valid), each [B, N] over the levels.
    """
    if not self.keep_background_class:
      scores = scores.at[..., 0].set(-1.0)
    k_classes = scores.shape[-1]
    out, start = [], 0
    for size in self.level_sizes(image_size):
      flat = scores[:, start:start + size].reshape(scores.shape[0], -1)
      flat = jnp.where(flat > self.score_thresh, flat, -jnp.inf)
      top, idx = jax.lax.top_k(flat, min(self.topk_candidates, flat.shape[1]))
      out.append((top, idx // k_classes + start, idx % k_classes, jnp.isfinite(top)))
      start += size
    return [jnp.concatenate(parts, axis=1) for parts in zip(*out)]

  def _nms(self, boxes, scores, labels, valid, densities=None) -> Dict[str, jax.Array]:
    """Class-aware NMS per image; with `densities` [B, N] (predicted, in [0, 1]) Adaptive NMS instead."""
    def one(b, s, l, v, d):
      if d is None:
        keep, _ = batched_nms(b, s, l, self.nms_thresh, max_output_size=self.detections_per_img, valid=v)
      else:
        keep, _ = adaptive_nms(b, s, d, self.nms_thresh, max_output_size=self.detections_per_img, idxs=l,
                               valid=v)
      ok = keep >= 0
      safe = jnp.maximum(keep, 0)
      return {"boxes": jnp.where(ok[:, None], b[safe], 0.0), "scores": jnp.where(ok, s[safe], 0.0),
              "labels": jnp.where(ok, l[safe], 0).astype(jnp.int32), "valid": ok}
    return jax.vmap(one)(boxes, jnp.where(valid, scores, 0.0), labels, valid, densities)


def backbone_freeze_pattern(trainable_layers: int = 3, frozen_bn: bool = True) -> str:
  """A `finetune.freeze` regex for torchvision's `_resnet_fpn_extractor(trainable_layers)` (+ FrozenBatchNorm2d).

  torchvision trains the backbone parameters under ["layer4", "layer3", "layer2", "layer1",
  "conv1"][:trainable_layers] (and bn1 at 5); FrozenBatchNorm2d's affine parameters are never trained.
  '' when nothing is frozen.
  """
  if not 0 <= trainable_layers <= 5:
    raise UserError(f"trainable_layers={trainable_layers} must be in 0..5")
  frozen = [f"{layer}_\\d+" if layer.startswith("layer") else layer for layer in _TRAINABLE_ORDER[trainable_layers:]]
  if trainable_layers < 5:
    frozen.append("bn1")
  parts = [f"^backbone/({'|'.join(frozen)})/"] if frozen else []
  if frozen_bn:
    parts.append(r"^backbone/(.+/)?(bn\d+|downsample_bn)/")
  return "|".join(parts)


def _pad_targets(targets):
  """float32 boxes, int32 labels, bool valid with at least one (invalid) slot, so gathers have a row."""
  boxes = jnp.asarray(targets["boxes"], jnp.float32)
  labels = jnp.asarray(targets["labels"], jnp.int32)
  valid = jnp.asarray(targets["valid"], bool)
  if boxes.shape[1] == 0:
    boxes = jnp.zeros(boxes.shape[:1] + (1, 4), jnp.float32)
    labels = jnp.zeros(labels.shape[:1] + (1,), jnp.int32)
    valid = jnp.zeros(valid.shape[:1] + (1,), bool)
  return boxes, labels, valid


class RetinaNetClassificationHead(nn.Module):
  """Tower of `num_convs` 3x3 conv(-GN)-ReLU, then cls_logits (bias -log((1 - p) / p)); shared over levels."""
  num_anchors: int
  num_classes: int
  norm: Optional[str] = None
  num_convs: int = 4
  channels: int = 256
  prior_probability: float = 0.01
  conv_bias: Optional[bool] = None    # None: a bias only without a norm (FCOS: always)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.conv = [ConvNorm(self.channels, 3, norm=self.norm, use_bias=self.conv_bias, kernel_init=head_init,
                          dtype=self.dtype, param_dtype=self.param_dtype) for _ in range(self.num_convs)]
    bias = -math.log((1 - self.prior_probability) / self.prior_probability)
    self.cls_logits = Conv(self.num_anchors * self.num_classes, (3, 3), padding=1, kernel_init=head_init,
                           bias_init=nn.initializers.constant(bias), dtype=self.dtype, param_dtype=self.param_dtype)

  def __call__(self, features, train: bool = False):
    out = []
    for f in features:
      for conv in self.conv:
        f = nn.relu(conv(f, train))
      y = self.cls_logits(f)
      out.append(y.reshape(y.shape[0], -1, self.num_classes))
    return jnp.concatenate(out, axis=1)


class RetinaNetRegressionHead(nn.Module):
  """Tower of `num_convs` 3x3 conv(-GN)-ReLU, then bbox_reg (4 deltas per anchor); shared over levels."""
  num_anchors: int
  norm: Optional[str] = None
  num_convs: int = 4
  channels: int = 256
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.conv = [ConvNorm(self.channels, 3, norm=self.norm, kernel_init=head_init, dtype=self.dtype,
                          param_dtype=self.param_dtype) for _ in range(self.num_convs)]
    self.bbox_reg = Conv(self.num_anchors * 4, (3, 3), padding=1, kernel_init=head_init,
                         dtype=self.dtype, param_dtype=self.param_dtype)

  def __call__(self, features, train: bool = False):
    out = []
    for f in features:
      for conv in self.conv:
        f = nn.relu(conv(f, train))
      y = self.bbox_reg(f)
      out.append(y.reshape(y.shape[0], -1, 4))
    return jnp.concatenate(out, axis=1)


class DensityHead(nn.Module):
  """Adaptive NMS density subnet: tower of `num_convs` 3x3 conv(-GN)-ReLU, then one raw density per anchor."""
  num_anchors: int
  norm: Optional[str] = None
  num_convs: int = 4
  channels: int = 256
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.conv = [ConvNorm(self.channels, 3, norm=self.norm, kernel_init=head_init, dtype=self.dtype,
                          param_dtype=self.param_dtype) for _ in range(self.num_convs)]
    self.density = Conv(self.num_anchors, (3, 3), padding=1, kernel_init=head_init, dtype=self.dtype,
                        param_dtype=self.param_dtype)

  def __call__(self, features, train: bool = False):
    out = []
    for f in features:
      for conv in self.conv:
        f = nn.relu(conv(f, train))
      y = self.density(f)
      out.append(y.reshape(y.shape[0], -1, 1))
    return jnp.concatenate(out, axis=1)


class RetinaNetHead(nn.Module):
  num_anchors: int
  num_classes: int
  norm: Optional[str] = None
  num_convs: int = 4
  channels: int = 256
  density: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(norm=self.norm, num_convs=self.num_convs, channels=self.channels, dtype=self.dtype,
              param_dtype=self.param_dtype)
    self.classification_head = RetinaNetClassificationHead(self.num_anchors, self.num_classes, **kw)
    self.regression_head = RetinaNetRegressionHead(self.num_anchors, **kw)
    if self.density:
      self.density_head = DensityHead(self.num_anchors, **kw)

  def __call__(self, features, train: bool = False):
    out = {"cls_logits": self.classification_head(features, train),
           "bbox_regression": self.regression_head(features, train)}
    if self.density:
      out["density"] = self.density_head(features, train)
    return out


def density_targets(gt_boxes, gt_valid):
  """Adaptive NMS density of each ground truth [M]: its largest IoU with another valid one of the image (0 alone)."""
  iou = box_iou(gt_boxes, gt_boxes)
  other = gt_valid[None, :] & ~jnp.eye(gt_boxes.shape[0], dtype=bool)
  return jnp.max(jnp.where(other, iou, 0.0), axis=1, initial=0.0)


class RetinaNet(FPNDetector):
  """RetinaNet: FPN backbone, classification and box-regression heads, focal loss (see module docstring)."""
  head_norm: Optional[str] = None     # None | 'group' (v2)
  bbox_reg_loss: str = "l1"           # 'l1' (v1) | 'smooth_l1' (beta 1) | 'giou' (v2)
  box_coder_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)
  fg_iou_thresh: float = 0.5
  bg_iou_thresh: float = 0.4
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  score_thresh: float = 0.05
  nms_thresh: float = 0.5
  detections_per_img: int = 300
  topk_candidates: int = 1000
  density_head: bool = False          # Adaptive NMS density subnet + loss + adaptive_nms (module docstring)
  density_weight: float = 1.0

  def __post_init__(self):
    _check(self.head_norm, "head_norm", HEAD_NORMS)
    _check(self.bbox_reg_loss, "bbox_reg_loss", BOX_LOSSES)
    if self.head_norm == "group" and self.fpn_channels % 32:
      raise UserError(f"head_norm='group' needs fpn_channels divisible by 32 (got {self.fpn_channels})")
    if self.bg_iou_thresh > self.fg_iou_thresh:
      raise UserError(f"bg_iou_thresh={self.bg_iou_thresh} must be <= fg_iou_thresh={self.fg_iou_thresh}")
    if self.detections_per_img < 1 or self.topk_candidates < 1:
      raise UserError("detections_per_img and topk_candidates must be >= 1")
    if self.density_weight < 0:
      raise UserError(f"density_weight={self.density_weight} must be >= 0")
    super().__post_init__()

  def setup(self):
    self.backbone = self._make_backbone()
    self.fpn = self._make_fpn()
    self.head = RetinaNetHead(self.anchor_generator().num_anchors_per_location()[0], self.num_classes,
                              norm=self.head_norm, num_convs=self.head_convs, channels=self.fpn_channels,
                              density=self.density_head, **self._options())

  def __call__(self, x, train: bool = False) -> Dict[str, jax.Array]:
    return self.head(self._pyramid(x, train), train)

  def box_coder(self) -> BoxCoder:
    return BoxCoder(self.box_coder_weights)

  def detection_loss(self, outputs, targets, image_size, axis_name=None):
    """torchvision's RetinaNet loss; `axis_name` is not needed (every term is normalised per image)."""
    del axis_name
    anchors = self.anchors(image_size)
    cls_logits = jnp.asarray(outputs["cls_logits"], jnp.float32)
    regression = jnp.asarray(outputs["bbox_regression"], jnp.float32)
    boxes, labels, valid = _pad_targets(targets)
    matcher, coder = Matcher(self.fg_iou_thresh, self.bg_iou_thresh, True), self.box_coder()
    num_classes = cls_logits.shape[-1]

    use_density = self.density_head
    density = (jnp.asarray(outputs["density"], jnp.float32)[..., 0] if use_density
               else jnp.zeros(cls_logits.shape[:2], jnp.float32))

    def per_image(logits, reg, dens, gt_boxes, gt_labels, gt_valid):
      matches = matcher(box_iou(gt_boxes, anchors), gt_valid)
      fg = matches >= 0
      idx = jnp.maximum(matches, 0)
      norm = jnp.maximum(1.0, jnp.sum(fg).astype(jnp.float32))
      target = jax.nn.one_hot(gt_labels[idx], num_classes) * fg[:, None]
      care = (matches != Matcher.BETWEEN_THRESHOLDS)[:, None]
      focal = sigmoid_focal_loss(logits, target, self.focal_alpha, self.focal_gamma)
      cls_loss = jnp.sum(jnp.where(care, focal, 0.0)) / norm
      # Background rows regress onto their own anchor: finite, and masked out below.
      matched = jnp.where(fg[:, None], gt_boxes[idx], anchors)
      if self.bbox_reg_loss == "giou":
        per_anchor = generalized_box_iou_loss(coder.decode(reg, anchors), matched)
      else:
        beta = 0.0 if self.bbox_reg_loss == "l1" else 1.0
        per_anchor = jnp.sum(smooth_l1_loss(reg, coder.encode(matched, anchors), beta, reduction="none"), -1)
      box_loss = jnp.sum(jnp.where(fg, per_anchor, 0.0)) / norm
      if not use_density:
        return cls_loss, box_loss, jnp.float32(0.0)
      target_density = density_targets(gt_boxes, gt_valid)[idx]
      dens_loss = smooth_l1_loss(jax.nn.sigmoid(dens), target_density, 1.0, reduction="none")
      return cls_loss, box_loss, jnp.sum(jnp.where(fg, dens_loss, 0.0)) / norm

    cls_loss, box_loss, dens_loss = jax.vmap(per_image)(cls_logits, regression, density, boxes, labels, valid)
    cls_loss, box_loss = jnp.mean(cls_loss), jnp.mean(box_loss)
    metrics = {"train/classification": cls_loss, "train/bbox_regression": box_loss}
    if not use_density:
      return cls_loss + box_loss, metrics
    metrics["train/density"] = self.density_weight * jnp.mean(dens_loss)
    return cls_loss + box_loss + metrics["train/density"], metrics

  def postprocess(self, outputs, image_size) -> Dict[str, jax.Array]:
    """torchvision's postprocess_detections with fixed shapes (see module docstring)."""
    anchors = self.anchors(image_size)
    scores = jax.nn.sigmoid(jnp.asarray(outputs["cls_logits"], jnp.float32))
    regression = jnp.asarray(outputs["bbox_regression"], jnp.float32)
    top, anchor_idx, labels, valid = self._select(scores, image_size)
    deltas = jnp.take_along_axis(regression, anchor_idx[..., None], axis=1)
    boxes = clip_boxes_to_image(self.box_coder().decode(deltas, anchors[anchor_idx]), tuple(image_size))
    if not self.density_head:
      return self._nms(boxes, top, labels, valid)
    density = jax.nn.sigmoid(jnp.asarray(outputs["density"], jnp.float32)[..., 0])
    return self._nms(boxes, top, labels, valid, jnp.take_along_axis(density, anchor_idx, axis=1))


register_model("retinanet_resnet50_fpn")(RetinaNet)
register_model("retinanet_resnet50_fpn_v2", head_norm="group", p6p7_from="c5", bbox_reg_loss="giou")(RetinaNet)
