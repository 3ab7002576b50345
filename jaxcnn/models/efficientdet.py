"""EfficientDet D0..D7 (Tan, Pang, Le 2020, "EfficientDet: Scalable and Efficient Object Detection") as the
official TF code (google/automl, efficientdet/) builds it, checked against Ross Wightman's port `effdet`
(0.4.1, `tf_efficientdet_d0`..`d7`: ports of the official checkpoints).

Network: the zoo's EfficientNet (`backbone`, the registered `efficientnet_b*` with `return_features=True`,
exactly its variables minus the 1x1 head conv and classifier, so ImageNet weights load into `backbone/`),
run with TF 'SAME' padding (`tf_same_padding`), TF's BatchNorm (momentum 0.99, epsilon 1e-3: not
variables) and the official backbone's stochastic depth (`backbone_drop_path_rate`: 0.2, none for D0's
B0; drawn from the 'dropout' rng, the one the detection task gives). Its stride-8/16/32 maps (stage3,
stage5, stage7) are P3..P5 of `jaxcnn.layers.bifpn.BiFPN` (`bifpn`: P6 = 1x1 conv + BN + 3x3/2 max pool
of C5, P7 = max pool of P6, `fpn_cells` cells of `fpn_channels` channels, fast normalised fusion,
depthwise-separable convs + BN, swish), then two heads shared over the levels (`class_net`, `box_net`):
`head_convs` x (depthwise-separable 3x3 conv with a bias, a BatchNorm per level as the official code,
swish), then a depthwise-separable 3x3 `predict` conv to anchors x outputs (class bias -log(99), prior
0.01).

Compound scaling (paper Table 1 / official hparams_config.py); parameter counts at 90 classes (the
official head, `num_classes=91` here) equal effdet's `tf_efficientdet_dN` exactly, and round to the
official README's table:
      backbone  image  W_bifpn  D_bifpn  D_class  fusion    anchor  parameters   official
  D0  B0         512    64       3        3        fastattn  4.0      3,880,067    3.9M
  D1  B1         640    88       4        3        fastattn  4.0      6,625,898    6.6M
  D2  B2         768   112       5        3        fastattn  4.0      8,097,039    8.1M
  D3  B3         896   160       6        4        fastattn  4.0     12,032,296   12.0M
  D4  B4        1024   224       7        4        fastattn  4.0     20,723,675   20.7M
  D5  B5        1280   288       7        4        fastattn  4.0     33,653,315   33.7M
  D6  B6        1280   384       8        5        sum       4.0     51,871,782   51.9M
  D7  B6        1536   384       8        5        sum       5.0     51,871,782   51.9M
(D6/D7 fuse by a plain sum, "for stability" in the official code, hence no edge weights; D7 differs
from D6 only in the image size and anchor scale.) The image size is the one trained on
(`COMPOUND_SCALING`); the model runs at any size (static per call).

Detection contract (`jaxcnn.models.retinanet` describes it):
  __call__ -> {'cls_logits' [B, A, num_classes - 1], 'bbox_regression' [B, A, 4]}, A over levels P3..P7,
      then rows, columns, anchors (effdet's / the official order), box deltas (ty, tx, th, tw) as the
      official FasterRcnnBoxCoder without scale factors.
  Labels: class 0 is background (torchvision's convention; the detection task builds num_classes =
      K + 1 and maps dataset class c to c + 1). EfficientDet has no background output: its K sigmoid
      outputs are labels 1..K, output j is label j + 1 (as effdet/official map COCO ids 1..90 to
      outputs 0..89). So the default num_classes=91 is the official 90-output head.
  anchors(image_size) -> [A, 4] xyxy: the official Anchors: per level l (3..7) a stride (H / H_l, W / W_l)
      with H_l the l-fold ceil-halving of H, centres stride/2 + i stride, 3 octave scales 2^(0, 1/3, 2/3) x
      aspect (w, h) multipliers (1, 1), (1.4, 0.7), (0.7, 1.4), size anchor_scale x stride x scale x
      multiplier, order (scale, aspect) per location. (Not `jaxcnn.ops.AnchorGenerator`: its sizes are
      pixels, not multiples of an image-dependent stride.)
  detection_loss: the official loss (efficientdet/det_model_fn.py `detection_loss`, effdet's
      `DetBenchTrain` + `loss_fn`, legacy_focal False, label_smoothing 0):
      matching: the official ArgMaxMatcher(0.5, 0.5, negatives_lower_than_unmatched, force_match_for_each_row):
        an anchor whose best IoU over the valid boxes is >= 0.5 matches that box (the first on ties),
        every other is background; then each valid box claims its best anchor (the first on ties),
        overriding, the lower box index winning an anchor claimed twice. No anchor is ignored.
      classification: focal loss (alpha 0.25, gamma 1.5) summed over every anchor and class;
      box: Huber (delta 0.1) between the deltas and the encoded matched box (FasterRcnnBoxCoder with
        eps 1e-7 added to the heights/widths), summed over the coordinates of matched anchors whose target
        is non-zero (the official mask `box_targets != 0`), / 4;
      both / (number of matched anchors in the batch + 1), loss = classification + 50 x box. The official
      regularisation (L2 weight decay 4e-5) is the optimiser's (`optim.weight_decay`), the IoU loss is
      off by default there (iou_loss_type None) and not implemented. Metrics 'train/classification' and
      'train/bbox_regression' (already x box_loss_weight, so they sum to the loss; effdet's 'box_loss' is
      this / 50). With `axis_name` (legacy pmap) the positives are psum'd and the loss scaled by the device
      count, so the trainer's mean over devices is the global loss. Padded boxes count nowhere; an image
      without boxes is all background.
  postprocess: effdet's DetBenchPredict / the official hard-NMS path: top `topk_candidates` (5000,
      MAX_DETECTION_POINTS) of the [anchors x classes] logits of all levels together, sigmoid, decode,
      clip to the image, `jaxcnn.ops.batched_nms` (nms_thresh 0.5) per class, `detections_per_img` (100),
      labels = output + 1. `score_thresh` (0: none, as effdet) drops lower scores first. The official
      evaluation default is soft-NMS (gaussian); hard NMS 0.5 is effdet's default and the brief's.

Initialisation as effdet's `_init_weight` (the official TF initialisers): BiFPN Glorot-uniform, heads
variance-scaling (fan-in, normal), biases 0 but the class prior.

Small-model fields for offline runs: `backbone_name` ('efficientnet_b0'..'efficientnet_b7'),
`fpn_channels`, `fpn_cells`, `head_convs`, `min_level` / `max_level` (levels 1..5 come from the backbone
at strides 2..32, higher ones from max pools), `anchor_scale`, `num_scales`, `aspect_ratios`,
`weight_method`. `tf_padding=False` pads every convolution and pool symmetrically (effdet's PyTorch-native
`efficientdet_d*` models) and `redundant_bias=False` drops the biases before BatchNorms (the official
convolutions keep them): both keep the registered models' outputs only when left at their defaults.
"""
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError, unknown
from jaxcnn.layers.bifpn import WEIGHT_METHODS, BiFPN, SeparableConv, depthwise_init
from jaxcnn.losses import sigmoid_focal_loss
from jaxcnn.models.retinanet import _pad_targets
from jaxcnn.ops import batched_nms, box_iou, clip_boxes_to_image
from jaxcnn.registry import create_model, register_model

BACKBONES = tuple(f"efficientnet_b{i}" for i in range(8))
# Backbone map of each pyramid level (stride 2^level).
LEVEL_STAGES = {1: "stage1", 2: "stage2", 3: "stage3", 4: "stage5", 5: "stage7"}
# variant: backbone, image size, W_bifpn, D_bifpn, D_class, fusion, anchor scale (official hparams_config.py).
COMPOUND_SCALING = {
    0: ("efficientnet_b0", 512, 64, 3, 3, "fastattn", 4.0),
    1: ("efficientnet_b1", 640, 88, 4, 3, "fastattn", 4.0),
    2: ("efficientnet_b2", 768, 112, 5, 3, "fastattn", 4.0),
    3: ("efficientnet_b3", 896, 160, 6, 4, "fastattn", 4.0),
    4: ("efficientnet_b4", 1024, 224, 7, 4, "fastattn", 4.0),
    5: ("efficientnet_b5", 1280, 288, 7, 4, "fastattn", 4.0),
    6: ("efficientnet_b6", 1280, 384, 8, 5, "sum", 4.0),
    7: ("efficientnet_b6", 1536, 384, 8, 5, "sum", 5.0),
}
BOX_EPS = 1e-7  # the official FasterRcnnBoxCoder's
head_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


def _ceil_half(n: int) -> int:
  return -(-n // 2)


def efficientdet_anchors(image_size, min_level: int, max_level: int, num_scales: int,
                         aspect_ratios: Sequence[Tuple[float, float]], anchor_scale: float) -> np.ndarray:
  """[A, 4] float32 xyxy anchors, the official `Anchors` (see module doc), in float64 then rounded."""
  h, w = int(image_size[0]), int(image_size[1])
  sizes = [(h, w)]
  for _ in range(max_level):
    sizes.append((_ceil_half(sizes[-1][0]), _ceil_half(sizes[-1][1])))
  levels = []
  for level in range(min_level, max_level + 1):
    fh, fw = sizes[level]
    sy, sx = h / float(fh), w / float(fw)
    y = sy / 2 + np.arange(fh, dtype=np.float64) * sy
    x = sx / 2 + np.arange(fw, dtype=np.float64) * sx
    xv, yv = np.meshgrid(x, y)
    xv, yv = xv.reshape(-1), yv.reshape(-1)
    per_anchor = []
    for octave in range(num_scales):
      scale = 2 ** (octave / float(num_scales))
      for ax, ay in aspect_ratios:
        half_x = anchor_scale * sx * scale * ax / 2.0
        half_y = anchor_scale * sy * scale * ay / 2.0
        per_anchor.append(np.stack([xv - half_x, yv - half_y, xv + half_x, yv + half_y], axis=1))
    levels.append(np.stack(per_anchor, axis=1).reshape(-1, 4))
  return np.concatenate(levels, axis=0).astype(np.float32)


def _center_size(boxes):
  """xyxy -> (ycenter, xcenter, height, width), the official BoxList order."""
  height, width = boxes[..., 3] - boxes[..., 1], boxes[..., 2] - boxes[..., 0]
  return boxes[..., 1] + height / 2.0, boxes[..., 0] + width / 2.0, height, width


def encode_boxes(boxes, anchors):
  """(ty, tx, th, tw) of xyxy `boxes` against xyxy `anchors`: FasterRcnnBoxCoder.encode, no scale factors."""
  yc_a, xc_a, ha, wa = _center_size(anchors)
  yc, xc, h, w = _center_size(boxes)
  ha, wa, h, w = ha + BOX_EPS, wa + BOX_EPS, h + BOX_EPS, w + BOX_EPS
  return jnp.stack([(yc - yc_a) / ha, (xc - xc_a) / wa, jnp.log(h / ha), jnp.log(w / wa)], axis=-1)


def decode_boxes(codes, anchors):
  """xyxy boxes from (ty, tx, th, tw) `codes` and xyxy `anchors` (effdet's decode_box_outputs)."""
  yc_a, xc_a = (anchors[..., 1] + anchors[..., 3]) / 2, (anchors[..., 0] + anchors[..., 2]) / 2
  ha, wa = anchors[..., 3] - anchors[..., 1], anchors[..., 2] - anchors[..., 0]
  ty, tx, th, tw = codes[..., 0], codes[..., 1], codes[..., 2], codes[..., 3]
  w, h = jnp.exp(tw) * wa, jnp.exp(th) * ha
  yc, xc = ty * ha + yc_a, tx * wa + xc_a
  return jnp.stack([xc - w / 2.0, yc - h / 2.0, xc + w / 2.0, yc + h / 2.0], axis=-1)


def argmax_match(iou, gt_valid, threshold: float = 0.5):
  """The official ArgMaxMatcher(threshold, threshold, force_match_for_each_row) on [M, A] IoUs: the matched
  box index per anchor, -1 for background (see module doc)."""
  quality = jnp.where(gt_valid[:, None], iou, -1.0)
  matched_vals, matches = jnp.max(quality, axis=0), jnp.argmax(quality, axis=0)
  matches = jnp.where(matched_vals >= threshold, matches, -1)
  best_anchor = jnp.argmax(quality, axis=1)
  claims = (best_anchor[:, None] == jnp.arange(iou.shape[1])[None, :]) & gt_valid[:, None]
  return jnp.where(jnp.any(claims, axis=0), jnp.argmax(claims, axis=0), matches).astype(jnp.int32)


class EfficientDetHead(nn.Module):
  """`head_convs` shared separable convs (`conv_rep_<r>`), a BN per repeat and level (`bn_rep_<r>_<level>`),
  swish, then the shared separable `predict` conv; [B, sum of H W anchors, num_outputs] over the levels."""
  num_outputs: int
  num_anchors: int
  num_convs: int
  channels: int
  redundant_bias: bool = True
  prior_bias: Optional[float] = None
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, train: bool = False):
    opts = dict(dtype=self.dtype, param_dtype=self.param_dtype, dw_init=depthwise_init(1.0, "normal"),
                pw_init=head_init)
    convs = [SeparableConv(self.channels, 3, use_bias=self.redundant_bias, norm=False, name=f"conv_rep_{r}", **opts)
             for r in range(self.num_convs)]
    bias = nn.initializers.zeros if self.prior_bias is None else nn.initializers.constant(self.prior_bias)
    predict = SeparableConv(self.num_anchors * self.num_outputs, 3, use_bias=True, norm=False, bias_init=bias,
                            name="predict", **opts)
    out = []
    for level, x in enumerate(features):
      for r, conv in enumerate(convs):
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                         axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype,
                         name=f"bn_rep_{r}_{level}")(conv(x))
        x = nn.silu(x)
      y = predict(x)
      out.append(y.reshape(y.shape[0], -1, self.num_outputs))
    return jnp.concatenate(out, axis=1)


class EfficientDet(nn.Module):
  """EfficientDet: EfficientNet + BiFPN + shared class/box nets, the official loss and post-processing."""
  num_classes: int = 91               # K + 1: K sigmoid outputs (label 0, background, has none)
  backbone_name: str = "efficientnet_b0"
  fpn_channels: int = 64
  fpn_cells: int = 3
  head_convs: int = 3
  weight_method: str = "fastattn"     # 'fastattn' | 'attn' | 'sum'
  min_level: int = 3
  max_level: int = 7
  num_scales: int = 3
  aspect_ratios: Sequence[Tuple[float, float]] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
  anchor_scale: float = 4.0
  backbone_drop_path_rate: float = 0.2   # official: 0.2 (survival_prob 0.8), none for B0 (D0)
  tf_padding: bool = True
  redundant_bias: bool = True
  match_threshold: float = 0.5
  focal_alpha: float = 0.25
  focal_gamma: float = 1.5
  huber_delta: float = 0.1
  box_loss_weight: float = 50.0
  score_thresh: float = 0.0
  nms_thresh: float = 0.5
  detections_per_img: int = 100
  topk_candidates: int = 5000
  bn_momentum: float = 0.99           # flax convention (torch 0.01), TF's
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    if self.backbone_name not in BACKBONES:
      raise unknown("backbone_name", self.backbone_name, BACKBONES)
    if self.weight_method not in WEIGHT_METHODS:
      raise unknown("weight_method", self.weight_method, WEIGHT_METHODS)
    if self.num_classes < 2:
      raise UserError(f"num_classes={self.num_classes} must be >= 2 (class 0 is the background)")
    if not 1 <= self.min_level <= 5 or self.max_level <= self.min_level:
      raise UserError(f"min_level={self.min_level} must be in 1..5 and max_level={self.max_level} above it")
    if self.fpn_channels < 1 or self.fpn_cells < 1 or self.head_convs < 0:
      raise UserError(f"fpn_channels={self.fpn_channels} and fpn_cells={self.fpn_cells} must be >= 1, "
                      f"head_convs={self.head_convs} >= 0")
    if self.num_scales < 1 or not self.aspect_ratios or any(len(r) != 2 or min(r) <= 0 for r in self.aspect_ratios):
      raise UserError(f"num_scales={self.num_scales} must be >= 1 and aspect_ratios={tuple(self.aspect_ratios)} "
                      "non-empty (width, height) multiplier pairs, e.g. ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))")
    if not 0.0 <= self.backbone_drop_path_rate < 1.0:
      raise UserError(f"backbone_drop_path_rate={self.backbone_drop_path_rate} must be in [0, 1)")
    if self.anchor_scale <= 0:
      raise UserError(f"anchor_scale={self.anchor_scale} must be positive")
    if self.detections_per_img < 1 or self.topk_candidates < 1:
      raise UserError("detections_per_img and topk_candidates must be >= 1")
    super().__post_init__()

  # --- static geometry ---------------------------------------------------------------------------------
  def num_anchors(self) -> int:
    return self.num_scales * len(self.aspect_ratios)

  def feature_shapes(self, image_size) -> Tuple[Tuple[int, int], ...]:
    h, w = int(image_size[0]), int(image_size[1])
    shapes = []
    for level in range(1, self.max_level + 1):
      h, w = _ceil_half(h), _ceil_half(w)
      if level >= self.min_level:
        shapes.append((h, w))
    return tuple(shapes)

  def anchors(self, image_size) -> jax.Array:
    """[A, 4] xyxy anchors of an image of `image_size` (H, W)."""
    return jnp.asarray(efficientdet_anchors(image_size, self.min_level, self.max_level, self.num_scales,
                                            tuple(tuple(r) for r in self.aspect_ratios), self.anchor_scale))

  # --- network -----------------------------------------------------------------------------------------
  def setup(self):
    bn = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, bn_axis_name=self.bn_axis_name,
              dtype=self.dtype, param_dtype=self.param_dtype)
    self.backbone = create_model(self.backbone_name, return_features=True, tf_same_padding=self.tf_padding,
                                 drop_path_rate=self.backbone_drop_path_rate, drop_path_rng="dropout", **bn)
    self.bifpn = BiFPN(self.fpn_channels, self.fpn_cells, self.max_level - self.min_level + 1,
                       weight_method=self.weight_method, tf_padding=self.tf_padding,
                       redundant_bias=self.redundant_bias, **bn)
    head = dict(num_anchors=self.num_anchors(), num_convs=self.head_convs, channels=self.fpn_channels,
                redundant_bias=self.redundant_bias, **bn)
    self.class_net = EfficientDetHead(self.num_classes - 1, prior_bias=-math.log((1 - 0.01) / 0.01), **head)
    self.box_net = EfficientDetHead(4, **head)

  def __call__(self, x, train: bool = False) -> Dict[str, jax.Array]:
    features = self.backbone(x, train=train)
    levels = range(self.min_level, min(self.max_level, 5) + 1)
    pyramid = self.bifpn([features[LEVEL_STAGES[level]] for level in levels], train)
    return {"cls_logits": self.class_net(pyramid, train), "bbox_regression": self.box_net(pyramid, train)}

  # --- loss --------------------------------------------------------------------------------------------
  def detection_loss(self, outputs, targets, image_size, axis_name=None):
    """The official EfficientDet loss (see module docstring)."""
    anchors = self.anchors(image_size)
    cls_logits = jnp.asarray(outputs["cls_logits"], jnp.float32)
    regression = jnp.asarray(outputs["bbox_regression"], jnp.float32)
    boxes, labels, valid = _pad_targets(targets)
    num_outputs = cls_logits.shape[-1]

    def per_image(logits, reg, gt_boxes, gt_labels, gt_valid):
      matches = argmax_match(box_iou(gt_boxes, anchors), gt_valid, self.match_threshold)
      fg = matches >= 0
      idx = jnp.maximum(matches, 0)
      target = jax.nn.one_hot(gt_labels[idx] - 1, num_outputs) * fg[:, None]
      cls_sum = jnp.sum(sigmoid_focal_loss(logits, target, self.focal_alpha, self.focal_gamma))
      box_target = jnp.where(fg[:, None], encode_boxes(jnp.where(fg[:, None], gt_boxes[idx], anchors), anchors), 0.0)
      err = jnp.abs(reg - box_target)
      quadratic = jnp.minimum(err, self.huber_delta)
      huber = 0.5 * quadratic ** 2 + self.huber_delta * (err - quadratic)
      box_sum = jnp.sum(jnp.where(box_target != 0.0, huber, 0.0))
      return cls_sum, box_sum, jnp.sum(fg).astype(jnp.float32)

    cls_sum, box_sum, num_fg = jax.vmap(per_image)(cls_logits, regression, boxes, labels, valid)
    num_fg, scale = jnp.sum(num_fg), 1.0
    if axis_name is not None:
      num_fg = jax.lax.psum(num_fg, axis_name)
      scale = jax.lax.psum(1.0, axis_name)
    norm = (num_fg + 1.0) / scale
    cls_loss = jnp.sum(cls_sum) / norm
    box_loss = self.box_loss_weight * jnp.sum(box_sum) / (4.0 * norm)
    return cls_loss + box_loss, {"train/classification": cls_loss, "train/bbox_regression": box_loss}

  # --- post-processing ---------------------------------------------------------------------------------
  def postprocess(self, outputs, image_size) -> Dict[str, jax.Array]:
    """effdet's / the official top-k, decode, clip, batched NMS (see module docstring)."""
    anchors = self.anchors(image_size)
    logits = jnp.asarray(outputs["cls_logits"], jnp.float32)
    regression = jnp.asarray(outputs["bbox_regression"], jnp.float32)
    batch, _, num_outputs = logits.shape
    flat = logits.reshape(batch, -1)
    top, idx = jax.lax.top_k(flat, min(self.topk_candidates, flat.shape[1]))
    anchor_idx, labels = idx // num_outputs, idx % num_outputs + 1
    scores = jax.nn.sigmoid(top)
    valid = scores > self.score_thresh if self.score_thresh > 0 else jnp.ones(scores.shape, bool)
    deltas = jnp.take_along_axis(regression, anchor_idx[..., None], axis=1)
    boxes = clip_boxes_to_image(decode_boxes(deltas, anchors[anchor_idx]), tuple(int(s) for s in image_size))

    def one(b, s, l, v):
      keep, _ = batched_nms(b, s, l, self.nms_thresh, max_output_size=self.detections_per_img, valid=v)
      ok = keep >= 0
      safe = jnp.maximum(keep, 0)
      return {"boxes": jnp.where(ok[:, None], b[safe], 0.0), "scores": jnp.where(ok, s[safe], 0.0),
              "labels": jnp.where(ok, l[safe], 0).astype(jnp.int32), "valid": ok}
    return jax.vmap(one)(boxes, jnp.where(valid, scores, 0.0), labels, valid)


for _d, (_backbone, _size, _width, _cells, _convs, _fusion, _anchor) in COMPOUND_SCALING.items():
  register_model(f"efficientdet_d{_d}", backbone_name=_backbone, fpn_channels=_width, fpn_cells=_cells,
                 head_convs=_convs, weight_method=_fusion, anchor_scale=_anchor,
                 backbone_drop_path_rate=0.0 if _d == 0 else 0.2)(EfficientDet)
