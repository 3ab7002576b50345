"""Two-stage detectors: Faster R-CNN (Ren et al. 2015) as torchvision builds it, and Fast R-CNN (Girshick 2015).

Contract (det_contract.md + det2_contract.md): `trains_with_targets = True`, so the detection task calls
`__call__(x, train=True, targets=..., rngs={'sampling': ...})`; the forward runs backbone -> FPN -> RPN ->
proposals -> (train: fixed-size fg/bg sampling against the targets) -> RoI heads and returns a dict of
fixed-shape arrays; `detection_loss(outputs, targets, image_size, axis_name)` is the sum of torchvision's
loss dict (loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg; metrics 'train/<key>');
`postprocess(outputs, image_size)` gives {'boxes', 'scores', 'labels', 'valid'} [B, D], D = detections_per_img.

Outputs of `__call__` (B images, A anchors over all levels, P = rpn post-NMS top-n, S = RoI samples):
  'objectness' [B, A], 'rpn_box_regression' [B, A, 4]      RPN head, torchvision's order (level, y, x, anchor)
  'proposals' [B, P, 4], 'proposal_scores' [B, P], 'proposal_valid' [B, P]   decreasing objectness, padding last
  eval:  'class_logits' [B, P, K], 'box_regression' [B, P, 4K]               box head on every proposal slot
  train: 'rpn_sampled_pos', 'rpn_sampled_neg' [B, A] (the sampled anchors), 'rpn_regression_targets' [B, A, 4],
         'roi_proposals' [B, S, 4] (sampled proposals in increasing candidate index, torchvision's order),
         'roi_labels' [B, S] (0 = background), 'roi_matched_idxs' [B, S] (gt index, 0 for background as
         torchvision's clamp), 'roi_positive' [B, S], 'roi_valid' [B, S], 'roi_regression_targets' [B, S, 4],
         'class_logits' [B, S, K], 'box_regression' [B, S, 4K].
Extension points (Mask R-CNN subclasses `FasterRCNN`): `extra_heads(features, outputs, image_size, train,
targets)` is called at the end of `__call__` with the pyramid (a list, finest first) and returns the outputs
(add mask logits there); `pool_rois(features, boxes, image_size, output_size, sampling_ratio)` is
torchvision's MultiScaleRoIAlign over the RoI levels; `postprocess_boxes(outputs, image_size)` is the
parameter-free box post-processing that `postprocess` returns (a subclass calls it inside `extra_heads` in
eval to get the detections its mask head runs on, and extends `postprocess`); `roi_loss` / `rpn_loss` are the
loss halves. Note the detection task casts eval outputs to float32 before `postprocess`, so boolean entries
arrive as 0/1 floats (they are compared with > 0 here).

Faster R-CNN (torchvision's `FasterRCNN`):
  RPN: RPNHead (`rpn_conv_depth` 3x3 conv+ReLU with bias, then 1x1 objectness (A) and 1x1 deltas (4A),
  N(0, 0.01) init), anchors `jaxcnn.ops.AnchorGenerator`, per level the top `rpn_pre_nms_top_n_{train,test}`
  logits, BoxCoder(1, 1, 1, 1) decode, clip, remove boxes smaller than 1e-3 and below `rpn_score_thresh`
  (as masks), batched NMS per level at `rpn_nms_thresh`, the best `rpn_post_nms_top_n_{train,test}` kept.
  Training: Matcher(0.7, 0.3, allow_low_quality_matches), BalancedPositiveNegativeSampler(256, 0.5), BCE
  over the sampled anchors (mean) and smooth L1 (beta 1/9) over the sampled positives, both / number sampled
  (over the batch, as torchvision's concatenation).
  RoI heads: MultiScaleRoIAlign over the first min(4, pyramid) levels (torchvision's featmap names
  '0'..'3'; never 'pool'), 7x7, sampling_ratio 2; TwoMLPHead (fc6, fc7, `representation_size`) or, v2,
  4 x (3x3 conv + BN + ReLU) + one FC (`box_head='conv'`); FastRCNNPredictor. Training: the valid gt boxes
  are appended to the proposals, Matcher(0.5, 0.5), sampler(512, 0.25), BoxCoder(10, 10, 5, 5), cross
  entropy over the sampled RoIs and smooth L1 (beta 1/9) of the positives' class-specific deltas, both /
  number sampled. Eval: softmax, per-class decode, clip, background dropped, score > 0.05, boxes smaller
  than 1e-2 removed, batched NMS 0.5 per class, 100 detections.
Fixed shapes: every set is a mask; proposals are `rpn_post_nms_top_n` padded slots; sampling draws uniform
keys from the 'sampling' rng and takes the top-k of the masked keys (a uniformly random subset of the
sampler's sizes, as torch's randperm); the sampled RoIs fill `box_batch_size_per_image` slots (fewer
when there are fewer candidates, the rest marked invalid; the v2 head's BatchNorm statistics skip them).
RoIAlign runs as gathers (`gather_roi_align`: each box reads the 4 neighbours of its sample points on its own
level; equal to `jaxcnn.ops.multiscale_roi_align`, whose separable matmuls touch every level and pixel).
Deviation: before the final NMS only the `box_candidates` (4096) best-scoring (proposal, class) pairs above
score_thresh are kept (torchvision keeps all; identical whenever fewer pairs pass the threshold).
Ties between equal scores may order differently from torchvision's CPU batched_nms (it re-sorts unstably).

Registered (91 classes, parameter counts equal torchvision's with weights=None):
  fasterrcnn_resnet50_fpn            41,808,406  ResNet-50 C2..C5 + FPN(256) + max-pool P6
  fasterrcnn_resnet50_fpn_v2         43,712,278  FPN with BatchNorm, RPN conv_depth 2, conv box head
  fasterrcnn_mobilenet_v3_large_fpn  19,410,754  MobileNetV3-Large taps (the output of the block opening
      the last stage, 160 ch, and the last 1x1 conv, 960 ch; both at stride 32, torchvision's
      `_mobilenet_extractor`), FPN(256) + max-pool, anchors (32..512) x (0.5, 1, 2) on each of the 3 levels,
      rpn_score_thresh 0.05, RoIs pooled from maps '0' and '1'.
  fasterrcnn_mobilenet_v3_large_320_fpn  19,410,754  the same with 150 proposals before / after NMS at test
      (torchvision's min_size=320 resize is the data pipeline's business)
Small-model knobs (torchvision's values by default): backbone_name (ResNet family or 'mobilenet_v3_large'),
returned_layers, fpn_channels, anchor_sizes, aspect_ratios, rpn_pre/post_nms_top_n_train/test,
rpn_batch_size_per_image, box_batch_size_per_image, representation_size, roi_output_size, frozen_bn.

Fast R-CNN (`fastrcnn_vgg16`, Girshick 2015), proposals supplied from outside (`proposals=` [B, R, 4] or
`targets['proposals']`, `targets['proposal_valid']`), so the R-CNN lineage can be run step by step:
  Faithful to the paper: VGG-16 conv5_3 (stride 16, pool5 replaced by RoI max pooling, `jaxcnn.ops.roi_pool`,
  7x7, spatial scale 1/16), fc6/fc7 (4096, ReLU, dropout 0.5), sibling (K+1)-way classifier and 4K box
  regressor; minibatches of 64 RoIs per image with 25% foreground (IoU >= 0.5) and background IoU in
  [0.1, 0.5); multi-task loss = log loss + [u >= 1] smooth L1 (beta 1, the paper's) on targets scaled by
  (10, 10, 5, 5) (the released code's normalisation), averaged over the RoIs; test: softmax, per-class
  regression, per-class NMS 0.3 (the released code's), at most 100 detections. The ground-truth boxes are
  added to the RoIs in training (as in the released code).
  Not reproduced: the image pyramid / scale jitter (single scale: the data pipeline's), SVD of fc layers,
  flipping (the data pipeline's), initialising fc6/fc7 from the ImageNet classifier (the backbone is the
  registered `vgg16` without its classifier; copy its fc1/fc2 into roi_box_head/fc6, fc7 by hand), freezing
  conv1-conv2 (use the trainer's `finetune.freeze` regex '^backbone/block[12]_').
  R-CNN (Girshick et al. 2014) differs by warping each proposal to 227x227 and running the whole CNN per
  proposal, then class-wise SVMs: that is this model with the CNN moved after the crop, which is not built
  here; Fast R-CNN's single shared conv pass is the step this file starts from. Faster R-CNN then replaces
  the external proposals by the RPN, sharing the convolutional features (above).
"""
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.errors import UserError, unknown
from jaxcnn.layers import Conv
from jaxcnn.layers.fpn import FeaturePyramidNetwork, LastLevelMaxPool
from jaxcnn.losses import smooth_l1_loss
from jaxcnn.models.retinanet import FPN_BACKBONES
from jaxcnn.ops import (AnchorGenerator, BoxCoder, Matcher, batched_nms, box_iou, clip_boxes_to_image, infer_scale,
                        multiscale_roi_align, remove_small_boxes, roi_level_mapper, roi_pool)
from jaxcnn.registry import create_model, register_model

MOBILENET_BACKBONES = ("mobilenet_v3_large", "mobilenet_v3_small")
BACKBONES = FPN_BACKBONES + MOBILENET_BACKBONES
BOX_HEADS = ("mlp", "conv")
FPN_NORMS = (None, "batch")
# torch.nn.Linear's default init: kaiming_uniform(a=sqrt(5)) = uniform(+-1/sqrt(fan_in))
linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# torchvision's FastRCNNConvFCHead convolutions: kaiming_normal(fan_out, relu)
conv_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _ceil_half(n: int) -> int:
  return -(-n // 2)


def _check(value, field, allowed):
  if value not in allowed:
    raise unknown(field, value, allowed)


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


def balanced_sample(key, positive, negative, batch_size: int, positive_fraction: float):
  """torchvision's BalancedPositiveNegativeSampler on one image with fixed shapes -> (pos mask, neg mask) [N].

  Takes min(#positive, int(batch_size * positive_fraction)) positives and min(#negative, batch_size - that)
  negatives, each a uniformly random subset: the candidates with the largest iid uniform keys.
  """
  n = positive.shape[0]
  max_pos = int(batch_size * positive_fraction)
  num_pos = jnp.minimum(jnp.sum(positive), max_pos)
  num_neg = jnp.minimum(jnp.sum(negative), batch_size - num_pos)
  key_pos, key_neg = jax.random.split(key)

  def pick(k, candidates, count, most):
    most = min(most, n)
    if most <= 0:
      return jnp.zeros((n,), bool)
    keys = jnp.where(candidates, jax.random.uniform(k, (n,)), -1.0)
    _, idx = jax.lax.top_k(keys, most)
    return jnp.zeros((n,), bool).at[idx].set(jnp.arange(most) < count)

  return pick(key_pos, positive, num_pos, max_pos), pick(key_neg, negative, num_neg, batch_size)


def _bce_with_logits(logits, targets):
  return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _final_nms(boxes, scores, labels, valid, iou_threshold, max_out):
  """Class-aware NMS per image of candidates [B, N] -> padded detections [B, max_out]."""
  def one(b, s, l, v):
    keep, _ = batched_nms(b, s, l, iou_threshold, max_output_size=max_out, valid=v)
    ok = keep >= 0
    safe = jnp.maximum(keep, 0)
    return {"boxes": jnp.where(ok[:, None], b[safe], 0.0), "scores": jnp.where(ok, s[safe], 0.0),
            "labels": jnp.where(ok, l[safe], 0).astype(jnp.int32), "valid": ok}
  return jax.vmap(one)(boxes, jnp.where(valid, scores, 0.0), labels, valid)


def _sample_axis(start, bin_size, out: int, ratio: int, length):
  """torchvision's roi_align sample points along one axis: indices and weights [..., out, ratio, 2] (low, high)."""
  p = jnp.arange(out, dtype=start.dtype)[:, None]
  i = jnp.arange(ratio, dtype=start.dtype)[None, :]
  b = bin_size[..., None, None]
  y = start[..., None, None] + p * b + (i + 0.5) * b / ratio
  length = length[..., None, None]
  use = ~((y < -1.0) | (y > length.astype(y.dtype)))
  y = jnp.maximum(y, 0.0)
  low = jnp.floor(y).astype(jnp.int32)
  at_end = low >= length - 1
  low = jnp.where(at_end, length - 1, low)
  high = jnp.where(at_end, length - 1, low + 1)
  frac = jnp.where(at_end, 0.0, y - low.astype(y.dtype))
  weights = jnp.stack([jnp.where(use, 1.0 - frac, 0.0), jnp.where(use, frac, 0.0)], -1)
  return jnp.stack([low, high], -1), weights


def gather_roi_align(features: Sequence[jax.Array], boxes, output_size: int, sampling_ratio: int,
                     image_size: Tuple[int, int], roi_chunk: int = 128) -> jax.Array:
  """`jaxcnn.ops.multiscale_roi_align` (torchvision's MultiScaleRoIAlign, aligned=False) for a fixed
  `sampling_ratio` > 0, as gathers: each box reads its own level only, at the 4 neighbours of its
  PH x PW x ratio^2 sample points. Per box that is O(PH PW ratio^2 C) instead of the separable matmuls'
  O(PH H W C) on every level, which dominates a training step at 512 RoIs per image.

  features: NHWC maps, finest first; boxes [B, R, 4] xyxy in image pixels -> [B, R, PH, PW, C].
  """
  scales = [infer_scale(f.shape[1], image_size[0]) for f in features]
  boxes = jnp.asarray(boxes, jnp.float32)
  if len(features) == 1:
    levels = jnp.zeros(boxes.shape[:2], jnp.int32)
  else:
    levels = roi_level_mapper(boxes, int(-math.log2(scales[0])), int(-math.log2(scales[-1])))
  heights = jnp.asarray([f.shape[1] for f in features], jnp.int32)[levels]
  widths = jnp.asarray([f.shape[2] for f in features], jnp.int32)[levels]
  offsets = jnp.asarray([0] + [int(f.shape[1] * f.shape[2]) for f in features[:-1]], jnp.int32)
  offsets = jnp.cumsum(offsets)[levels]
  scale = jnp.asarray(scales, jnp.float32)[levels]
  x1, y1, x2, y2 = (boxes[..., j] * scale for j in range(4))
  roi_h, roi_w = jnp.maximum(y2 - y1, 1.0), jnp.maximum(x2 - x1, 1.0)
  out, r = int(output_size), int(sampling_ratio)
  yi, wy = _sample_axis(y1, roi_h / out, out, r, heights)       # [B, R, out, r, 2]
  xi, wx = _sample_axis(x1, roi_w / out, out, r, widths)
  e = lambda a, axes: jnp.expand_dims(a, axes)
  idx = (e(offsets, (2, 3, 4, 5, 6, 7)) + e(yi, (3, 6, 7)) * e(widths, (2, 3, 4, 5, 6, 7)) + e(xi, (2, 4, 5)))
  w = e(wy, (3, 6, 7)) * e(wx, (2, 4, 5)) / float(r * r)     # [B, R, PH, PW, r, 2, r, 2]
  shape = boxes.shape[:2] + (out, out, 4 * r * r)
  idx, w = idx.transpose(0, 1, 2, 3, 4, 6, 5, 7).reshape(shape), w.transpose(0, 1, 2, 3, 4, 6, 5, 7).reshape(shape)
  flat = jnp.concatenate([f.reshape(f.shape[0], -1, f.shape[-1]) for f in features], 1)
  flat = flat.astype(jnp.promote_types(flat.dtype, jnp.float32))
  # one table for the batch (image b's rows start at b * N); RoIs in chunks bound the gathered values'
  # memory to roi_chunk x PH x PW x 4 ratio^2 x C
  b, n, c = flat.shape
  idx = idx + (jnp.arange(b, dtype=jnp.int32) * n)[:, None, None, None, None]
  table = flat.reshape(b * n, c)
  rows = lambda a: a.reshape((-1,) + a.shape[2:])
  pooled = jax.lax.map(lambda a: jnp.sum(a[1][..., None] * table[a[0]], axis=-2), (rows(idx), rows(w)),
                       batch_size=min(roi_chunk, b * boxes.shape[1]))
  return pooled.reshape(boxes.shape[:2] + pooled.shape[1:])


# --- modules ---------------------------------------------------------------------------------------------
class RPNHead(nn.Module):
  """torchvision's RPNHead: `conv_depth` 3x3 conv + ReLU, then 1x1 objectness (A) and box deltas (4A)."""
  num_anchors: int
  channels: int = 256
  conv_depth: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features):
    init = nn.initializers.normal(0.01)
    conv = lambda n, k, name: Conv(n, (k, k), padding=(k - 1) // 2, kernel_init=init, dtype=self.dtype,
                                   param_dtype=self.param_dtype, name=name)
    convs = [conv(self.channels, 3, f"conv_{i}") for i in range(self.conv_depth)]
    cls_logits, bbox_pred = conv(self.num_anchors, 1, "cls_logits"), conv(4 * self.num_anchors, 1, "bbox_pred")
    logits, deltas = [], []
    for f in features:
      for c in convs:
        f = nn.relu(c(f))
      logits.append(cls_logits(f).reshape(f.shape[0], -1))
      deltas.append(bbox_pred(f).reshape(f.shape[0], -1, 4))
    return jnp.concatenate(logits, 1), jnp.concatenate(deltas, 1)


class TwoMLPHead(nn.Module):
  """torchvision's TwoMLPHead: flatten, fc6, ReLU, fc7, ReLU (torch flattens C, H, W; the converter reorders)."""
  representation_size: int = 1024
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    del train, mask
    x = x.reshape(x.shape[:-3] + (-1,))
    for name in ("fc6", "fc7"):
      x = nn.relu(nn.Dense(self.representation_size, kernel_init=linear_init, dtype=self.dtype,
                           param_dtype=self.param_dtype, name=name)(x))
    return x


class ConvFCHead(nn.Module):
  """torchvision's FastRCNNConvFCHead (v2): 3x3 conv (no bias) + BN + ReLU per width, flatten, FC + ReLU.

  `mask` [...] marks the real RoIs: BatchNorm's batch statistics are taken over them only.
  """
  conv_widths: Sequence[int] = (256, 256, 256, 256)
  representation_size: int = 1024
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    lead = x.shape[:-3]
    x = x.reshape((-1,) + x.shape[-3:])
    m = None if mask is None else jnp.broadcast_to(jnp.asarray(mask, bool).reshape(-1, 1, 1, 1), x.shape[:-1] + (1,))
    for i, width in enumerate(self.conv_widths):
      x = Conv(width, (3, 3), padding=1, use_bias=False, kernel_init=conv_fan_out, dtype=self.dtype,
               param_dtype=self.param_dtype, name=f"conv_{i}")(x)
      bn = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=self.bn_axis_name,
                        dtype=self.dtype, param_dtype=self.param_dtype, name=f"bn_{i}")
      x = nn.relu(bn(x, mask=None if m is None else jnp.broadcast_to(m, x.shape)))
    x = x.reshape(lead + (-1,))
    return nn.relu(nn.Dense(self.representation_size, kernel_init=linear_init, dtype=self.dtype,
                            param_dtype=self.param_dtype, name="fc")(x))


class FastRCNNPredictor(nn.Module):
  """cls_score (num_classes) and bbox_pred (4 num_classes) linear layers."""
  num_classes: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = lambda n, name: nn.Dense(n, kernel_init=linear_init, dtype=self.dtype, param_dtype=self.param_dtype,
                                     name=name)
    return dense(self.num_classes, "cls_score")(x), dense(4 * self.num_classes, "bbox_pred")(x)


class VGGBoxHead(nn.Module):
  """Fast R-CNN's fc6 / fc7 (VGG-16's classifier layers): flatten, (fc, ReLU, dropout) x 2."""
  representation_size: int = 4096
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[:-3] + (-1,))
    for name in ("fc6", "fc7"):
      x = nn.relu(nn.Dense(self.representation_size, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype,
                           param_dtype=self.param_dtype, name=name)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return x


class _MobileNetTaps:
  """Records the output of the backbone block `name` during one call (torchvision's stage_indices[-2] tap)."""

  def __init__(self, name: str):
    self.name, self.value = name, None

  def __call__(self, next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.name == self.name and self.value is None:
      self.value = out[0] if isinstance(out, tuple) else out
    return out


class RoIHeadsMixin:
  """RoI sampling, box branch losses and box post-processing shared by Faster and Fast R-CNN."""

  def box_coder(self) -> BoxCoder:
    return BoxCoder(self.bbox_reg_weights)

  def negative_mask(self, matches, max_iou):
    """Background candidates: below the background threshold (Fast R-CNN adds a lower bound)."""
    del max_iou
    return matches == Matcher.BELOW_LOW_THRESHOLD

  def select_training_samples(self, proposals, proposal_valid, targets, key):
    """Appends the gt boxes to the proposals, matches, samples `box_batch_size_per_image` per image.

    Returns {'roi_proposals' [B, S, 4], 'roi_labels', 'roi_matched_idxs', 'roi_positive', 'roi_valid' [B, S],
    'roi_regression_targets' [B, S, 4]}; the sampled candidates in increasing index, as torchvision's where().
    """
    boxes, labels, valid = _pad_targets(targets)
    proposals = jax.lax.stop_gradient(jnp.asarray(proposals, jnp.float32))
    candidates = jnp.concatenate([proposals, boxes], 1)
    cand_valid = jnp.concatenate([jnp.asarray(proposal_valid) > 0, valid], 1)
    num = candidates.shape[1]
    slots = min(int(self.box_batch_size_per_image), num)
    matcher, coder = Matcher(self.box_fg_iou_thresh, self.box_bg_iou_thresh, False), self.box_coder()

    def per_image(k, cand, cvalid, gt_boxes, gt_labels, gt_valid):
      iou = box_iou(gt_boxes, cand)
      matches = matcher(iou, gt_valid)
      max_iou = jnp.max(jnp.where(gt_valid[:, None], iou, -1.0), axis=0)
      idx = jnp.maximum(matches, 0)
      positive = (matches >= 0) & cvalid
      negative = self.negative_mask(matches, max_iou) & cvalid
      sp, sn = balanced_sample(k, positive, negative, self.box_batch_size_per_image, self.box_positive_fraction)
      chosen = sp | sn
      order = jnp.nonzero(chosen, size=slots, fill_value=0)[0]
      ok = jnp.arange(slots) < jnp.sum(chosen)
      pos = ok & positive[order]
      rois = jnp.where(ok[:, None], cand[order], 0.0)
      lab = jnp.where(pos, gt_labels[idx[order]], 0).astype(jnp.int32)
      matched = jnp.where(ok, idx[order], 0).astype(jnp.int32)
      target_boxes = jnp.where(pos[:, None], gt_boxes[matched], jnp.array([0.0, 0.0, 1.0, 1.0]))
      reg = coder.encode(target_boxes, jnp.where(pos[:, None], rois, jnp.array([0.0, 0.0, 1.0, 1.0])))
      return {"roi_proposals": rois, "roi_labels": lab, "roi_matched_idxs": matched, "roi_positive": pos,
              "roi_valid": ok, "roi_regression_targets": jnp.where(pos[:, None], reg, 0.0)}

    keys = jax.random.split(key, candidates.shape[0])
    return jax.vmap(per_image)(keys, candidates, cand_valid, boxes, labels, valid)

  def roi_loss(self, outputs, axis_name=None) -> Dict[str, jax.Array]:
    """torchvision's fastrcnn_loss: CE over the sampled RoIs, smooth L1 of positives, both / number sampled."""
    logits = jnp.asarray(outputs["class_logits"], jnp.float32)
    deltas = jnp.asarray(outputs["box_regression"], jnp.float32)
    valid = jnp.asarray(outputs["roi_valid"], bool)
    labels = jnp.asarray(outputs["roi_labels"], jnp.int32)
    positive = jnp.asarray(outputs["roi_positive"], bool)
    count = jnp.maximum(_psum(jnp.sum(valid).astype(jnp.float32), axis_name), 1.0)
    ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, labels[..., None], -1)[..., 0]
    deltas = deltas.reshape(deltas.shape[:-1] + (-1, 4))
    picked = jnp.take_along_axis(deltas, labels[..., None, None], -2)[..., 0, :]
    box = smooth_l1_loss(picked, outputs["roi_regression_targets"], self.roi_smooth_l1_beta, reduction="none")
    return {"loss_classifier": jnp.sum(jnp.where(valid, ce, 0.0)) / count,
            "loss_box_reg": jnp.sum(jnp.where(positive[..., None], box, 0.0)) / count}

  def postprocess_boxes(self, outputs, image_size) -> Dict[str, jax.Array]:
    """torchvision's RoIHeads.postprocess_detections with fixed shapes (see the module docstring)."""
    logits = jnp.asarray(outputs["class_logits"], jnp.float32)
    deltas = jnp.asarray(outputs["box_regression"], jnp.float32)
    proposals = jnp.asarray(outputs["proposals"], jnp.float32)
    pvalid = jnp.asarray(outputs["proposal_valid"]) > 0
    b, p, k = logits.shape
    scores = jax.nn.softmax(logits, -1)[:, :, 1:]
    boxes = self.box_coder().decode(deltas, proposals).reshape(b, p, k, 4)[:, :, 1:]
    boxes = clip_boxes_to_image(boxes, tuple(image_size))
    labels = jnp.broadcast_to(jnp.arange(1, k, dtype=jnp.int32), (b, p, k - 1))
    valid = pvalid[:, :, None] & (scores > self.box_score_thresh) & remove_small_boxes(boxes, 1e-2)
    boxes, scores = boxes.reshape(b, -1, 4), scores.reshape(b, -1)
    labels, valid = labels.reshape(b, -1), valid.reshape(b, -1)
    if scores.shape[1] > self.box_candidates:
      top, idx = jax.lax.top_k(jnp.where(valid, scores, -jnp.inf), self.box_candidates)
      boxes = jnp.take_along_axis(boxes, idx[..., None], 1)
      labels = jnp.take_along_axis(labels, idx, 1)
      scores, valid = jnp.where(jnp.isfinite(top), top, 0.0), jnp.isfinite(top)
    return _final_nms(boxes, scores, labels, valid, self.box_nms_thresh, self.detections_per_img)

  def postprocess(self, outputs, image_size) -> Dict[str, jax.Array]:
    return self.postprocess_boxes(outputs, image_size)


class FasterRCNN(RoIHeadsMixin, nn.Module):
  """Faster R-CNN with an FPN backbone, torchvision's `FasterRCNN` (see the module docstring)."""
  trains_with_targets = True

  num_classes: int = 91
  backbone_name: str = "resnet50"
  returned_layers: Sequence[int] = (1, 2, 3, 4)
  fpn_channels: int = 256
  fpn_norm: Optional[str] = None          # None | 'batch' (v2)
  anchor_sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,))
  aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)
  frozen_bn: bool = False                 # backbone BNs always in inference mode (FrozenBatchNorm2d)
  # RPN
  rpn_conv_depth: int = 1
  rpn_pre_nms_top_n_train: int = 2000
  rpn_pre_nms_top_n_test: int = 1000
  rpn_post_nms_top_n_train: int = 2000
  rpn_post_nms_top_n_test: int = 1000
  rpn_nms_thresh: float = 0.7
  rpn_fg_iou_thresh: float = 0.7
  rpn_bg_iou_thresh: float = 0.3
  rpn_batch_size_per_image: int = 256
  rpn_positive_fraction: float = 0.5
  rpn_score_thresh: float = 0.0
  # RoI heads
  box_head: str = "mlp"                   # 'mlp' (TwoMLPHead) | 'conv' (v2's FastRCNNConvFCHead)
  representation_size: int = 1024
  box_head_convs: Sequence[int] = (256, 256, 256, 256)
  roi_output_size: int = 7
  roi_sampling_ratio: int = 2
  box_score_thresh: float = 0.05
  box_nms_thresh: float = 0.5
  detections_per_img: int = 100
  box_fg_iou_thresh: float = 0.5
  box_bg_iou_thresh: float = 0.5
  box_batch_size_per_image: int = 512
  box_positive_fraction: float = 0.25
  bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)
  box_candidates: int = 4096
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  rpn_smooth_l1_beta = 1.0 / 9
  roi_smooth_l1_beta = 1.0 / 9

  def __post_init__(self):
    _check(self.backbone_name, "backbone_name", BACKBONES)
    _check(self.box_head, "box_head", BOX_HEADS)
    _check(self.fpn_norm, "fpn_norm", FPN_NORMS)
    if self.num_classes < 2:
      raise UserError(f"num_classes={self.num_classes} must be >= 2 (class 0 is the background)")
    if not self._mobilenet():
      layers = tuple(self.returned_layers)
      if not layers or list(layers) != sorted(set(layers)) or not set(layers) <= {1, 2, 3, 4}:
        raise UserError(f"returned_layers={layers} must be increasing stage numbers in 1..4, e.g. (1, 2, 3, 4)")
    if self.fpn_channels < 1 or self.representation_size < 1 or self.roi_output_size < 1:
      raise UserError("fpn_channels, representation_size and roi_output_size must be >= 1")
    sizes = self._anchor_sizes()
    if len(sizes) != self.num_levels():
      raise UserError(f"anchor_sizes has {len(sizes)} levels but the pyramid has {self.num_levels()}")
    if len({len(s) for s in sizes}) != 1 or not self.aspect_ratios or min(self.aspect_ratios) <= 0:
      raise UserError(f"anchor_sizes={sizes} must give every level the same number of sizes and "
                      f"aspect_ratios={tuple(self.aspect_ratios)} positive numbers (one RPN head serves all levels)")
    for name in ("rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
                 "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_batch_size_per_image",
                 "detections_per_img", "box_candidates"):
      if int(getattr(self, name)) < 1:
        raise UserError(f"{name}={getattr(self, name)} must be >= 1")
    for name in ("rpn_positive_fraction", "box_positive_fraction"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise UserError(f"{name}={getattr(self, name)} must be in [0, 1]")
    if self.rpn_bg_iou_thresh > self.rpn_fg_iou_thresh or self.box_bg_iou_thresh > self.box_fg_iou_thresh:
      raise UserError("the background IoU thresholds must be <= the foreground ones")
    super().__post_init__()

  # --- static geometry -------------------------------------------------------------------------------------
  def _mobilenet(self) -> bool:
    return self.backbone_name in MOBILENET_BACKBONES

  def num_levels(self) -> int:
    return (2 if self._mobilenet() else len(self.returned_layers)) + 1

  def roi_levels(self) -> int:
    """Pyramid maps MultiScaleRoIAlign pools from: torchvision's featmap names '0'..'3' that exist."""
    return min(4, self.num_levels() - 1)

  def _anchor_sizes(self) -> Tuple[Tuple[float, ...], ...]:
    return tuple(tuple(s) if isinstance(s, (list, tuple)) else (s,) for s in self.anchor_sizes)

  def anchor_generator(self) -> AnchorGenerator:
    sizes = self._anchor_sizes()
    return AnchorGenerator(sizes, (tuple(self.aspect_ratios),) * len(sizes))

  def feature_shapes(self, image_size) -> Tuple[Tuple[int, int], ...]:
    """(H_l, W_l) of each pyramid level (every stride-2 layer rounds up; the max-pool level too)."""
    h, w = int(image_size[0]), int(image_size[1])
    if self._mobilenet():
      for _ in range(5):
        h, w = _ceil_half(h), _ceil_half(w)
      shapes = [(h, w), (h, w)]
    else:
      h, w = _ceil_half(_ceil_half(h)), _ceil_half(_ceil_half(w))
      shapes = []
      for stage in range(1, 5):
        if stage > 1:
          h, w = _ceil_half(h), _ceil_half(w)
        if stage in self.returned_layers:
          shapes.append((h, w))
    last = shapes[-1]
    return tuple(shapes) + ((_ceil_half(last[0]), _ceil_half(last[1])),)

  def anchors(self, image_size) -> jax.Array:
    """[A, 4] xyxy anchors of an image of `image_size` (H, W)."""
    return self.anchor_generator()(tuple(int(s) for s in image_size), self.feature_shapes(image_size))

  def level_sizes(self, image_size) -> Tuple[int, ...]:
    per_location = self.anchor_generator().num_anchors_per_location()
    return tuple(h * w * a for (h, w), a in zip(self.feature_shapes(image_size), per_location))

  # --- modules -------------------------------------------------------------------------------------------
  def _options(self) -> dict:
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)

  def setup(self):
    # torchvision builds its detection MobileNets with plain BatchNorm2d (eps 1e-5, momentum 0.1)
    extra = dict(bn_epsilon=1e-5, bn_momentum=0.9) if self._mobilenet() else {}
    self.backbone = create_model(self.backbone_name, return_features=True, bn_axis_name=self.bn_axis_name,
                                 **extra, **self._options())
    self.fpn = FeaturePyramidNetwork(self.fpn_channels, norm=self.fpn_norm, extra_blocks=LastLevelMaxPool(),
                                     bn_axis_name=self.bn_axis_name, **self._options())
    self.rpn_head = RPNHead(self.anchor_generator().num_anchors_per_location()[0], self.fpn_channels,
                            self.rpn_conv_depth, **self._options())
    if self.box_head == "mlp":
      self.roi_box_head = TwoMLPHead(self.representation_size, **self._options())
    else:
      self.roi_box_head = ConvFCHead(tuple(self.box_head_convs), self.representation_size,
                                     bn_axis_name=self.bn_axis_name, **self._options())
    self.box_predictor = FastRCNNPredictor(self.num_classes, **self._options())

  def _backbone_maps(self, x, train: bool):
    train = train and not self.frozen_bn
    if not self._mobilenet():
      features = self.backbone(x, train=train)
      return [features[f"stage{i}"] for i in self.returned_layers]
    blocks = self.backbone.blocks()
    tap = _MobileNetTaps(f"block{max(i for i, b in enumerate(blocks, start=1) if b[5] == 2)}")
    with nn.intercept_methods(tap):
      features = self.backbone(x, train=train)
    return [tap.value, features["high"]]

  def pyramid(self, x, train: bool = False):
    return self.fpn(self._backbone_maps(x, train), train)

  def pool_rois(self, features, boxes, image_size, output_size=None, sampling_ratio=None):
    """MultiScaleRoIAlign(['0'..'3'], output_size, sampling_ratio) of per-image boxes [B, R, 4] -> [B, R, s, s, C]."""
    ratio = self.roi_sampling_ratio if sampling_ratio is None else sampling_ratio
    args = (list(features[:self.roi_levels()]), boxes, output_size or self.roi_output_size, ratio,
            tuple(int(s) for s in image_size))
    return gather_roi_align(*args) if ratio > 0 else multiscale_roi_align(*args)

  def box_branch(self, features, boxes, image_size, train: bool, mask=None):
    pooled = self.pool_rois(features, jax.lax.stop_gradient(boxes), image_size)
    return self.box_predictor(self.roi_box_head(pooled, train, mask))

  # --- forward -------------------------------------------------------------------------------------------
  def __call__(self, x, train: bool = False, targets=None) -> Dict[str, jax.Array]:
    if train and targets is None:
      raise UserError(f"{type(self).__name__} trains on targets: call it with train=True, targets={{'boxes', "
                      "'labels', 'valid'}} and a 'sampling' rng")
    image_size = tuple(x.shape[1:3])
    features = self.pyramid(x, train)
    objectness, deltas = self.rpn_head(features)
    outputs = {"objectness": objectness, "rpn_box_regression": deltas}
    outputs.update(self.filter_proposals(objectness, deltas, image_size, train))
    if train:
      rpn_key, roi_key = jax.random.split(self.make_rng("sampling"))
      outputs.update(self.rpn_targets(targets, image_size, rpn_key))
      outputs.update(self.select_training_samples(outputs["proposals"], outputs["proposal_valid"], targets,
                                                  roi_key))
      logits, regression = self.box_branch(features, outputs["roi_proposals"], image_size, True,
                                           outputs["roi_valid"])
    else:
      logits, regression = self.box_branch(features, outputs["proposals"], image_size, False,
                                           outputs["proposal_valid"])
    outputs.update(class_logits=logits, box_regression=regression)
    return self.extra_heads(features, outputs, image_size, train, targets)

  def extra_heads(self, features, outputs, image_size, train: bool, targets):
    """Hook for further RoI branches (Mask R-CNN): gets the pyramid and the outputs, returns the outputs."""
    del features, image_size, train, targets
    return outputs

  # --- RPN -----------------------------------------------------------------------------------------------
  def filter_proposals(self, objectness, deltas, image_size, train: bool) -> Dict[str, jax.Array]:
    """torchvision's RegionProposalNetwork.filter_proposals with fixed shapes (module docstring)."""
    pre = self.rpn_pre_nms_top_n_train if train else self.rpn_pre_nms_top_n_test
    post = self.rpn_post_nms_top_n_train if train else self.rpn_post_nms_top_n_test
    objectness = jax.lax.stop_gradient(jnp.asarray(objectness, jnp.float32))
    deltas = jax.lax.stop_gradient(jnp.asarray(deltas, jnp.float32))
    anchors = self.anchors(image_size)
    tops, idxs, levels, start = [], [], [], 0
    for level, size in enumerate(self.level_sizes(image_size)):
      top, idx = jax.lax.top_k(objectness[:, start:start + size], min(pre, size))
      tops.append(top)
      idxs.append(idx + start)
      levels.append(jnp.full(idx.shape, level, jnp.int32))
      start += size
    top, idx, level = (jnp.concatenate(v, 1) for v in (tops, idxs, levels))
    boxes = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(jnp.take_along_axis(deltas, idx[..., None], 1), anchors[idx])
    boxes = clip_boxes_to_image(boxes, image_size)
    prob = jax.nn.sigmoid(top)
    valid = remove_small_boxes(boxes, 1e-3) & (prob >= self.rpn_score_thresh)
    post = min(post, boxes.shape[1])
    dets = _final_nms(boxes, prob, level, valid, self.rpn_nms_thresh, post)
    return {"proposals": dets["boxes"], "proposal_scores": dets["scores"], "proposal_valid": dets["valid"]}

  def rpn_targets(self, targets, image_size, key) -> Dict[str, jax.Array]:
    """Anchor labels (Matcher 0.7 / 0.3 + low-quality matches), the sampled anchors and regression targets."""
    anchors = self.anchors(image_size)
    boxes, _, valid = _pad_targets(targets)
    matcher, coder = Matcher(self.rpn_fg_iou_thresh, self.rpn_bg_iou_thresh, True), BoxCoder((1.0, 1.0, 1.0, 1.0))

    def per_image(k, gt_boxes, gt_valid):
      matches = matcher(box_iou(gt_boxes, anchors), gt_valid)
      positive = matches >= 0
      sp, sn = balanced_sample(k, positive, matches == Matcher.BELOW_LOW_THRESHOLD, self.rpn_batch_size_per_image,
                               self.rpn_positive_fraction)
      matched = jnp.where(positive[:, None], gt_boxes[jnp.maximum(matches, 0)], anchors)
      return sp, sn, jnp.where(sp[:, None], coder.encode(matched, anchors), 0.0)

    sp, sn, reg = jax.vmap(per_image)(jax.random.split(key, boxes.shape[0]), boxes, valid)
    return {"rpn_sampled_pos": sp, "rpn_sampled_neg": sn, "rpn_regression_targets": reg}

  def rpn_loss(self, outputs, axis_name=None) -> Dict[str, jax.Array]:
    """torchvision's RPN compute_loss: BCE over the sampled anchors, smooth L1 of positives, / number sampled."""
    pos = jnp.asarray(outputs["rpn_sampled_pos"], bool)
    sampled = pos | jnp.asarray(outputs["rpn_sampled_neg"], bool)
    count = jnp.maximum(_psum(jnp.sum(sampled).astype(jnp.float32), axis_name), 1.0)
    bce = _bce_with_logits(jnp.asarray(outputs["objectness"], jnp.float32), pos.astype(jnp.float32))
    box = smooth_l1_loss(outputs["rpn_box_regression"], outputs["rpn_regression_targets"], self.rpn_smooth_l1_beta,
                         reduction="none")
    return {"loss_objectness": jnp.sum(jnp.where(sampled, bce, 0.0)) / count,
            "loss_rpn_box_reg": jnp.sum(jnp.where(pos[..., None], box, 0.0)) / count}

  def detection_loss(self, outputs, targets, image_size, axis_name=None):
    """Sum of torchvision's loss dict; the sample counts are global over `axis_name` when given."""
    del targets, image_size
    losses = {**self.rpn_loss(outputs, axis_name), **self.roi_loss(outputs, axis_name)}
    return sum(losses.values()), {f"train/{k}": v for k, v in losses.items()}


class FastRCNN(RoIHeadsMixin, nn.Module):
  """Fast R-CNN (Girshick 2015) on external proposals: VGG-16 conv5_3, RoI max pooling, fc6/fc7, two heads."""
  trains_with_targets = True

  num_classes: int = 21
  backbone_name: str = "vgg16"
  roi_output_size: int = 7
  representation_size: int = 4096
  dropout_rate: float = 0.5
  box_score_thresh: float = 0.05
  box_nms_thresh: float = 0.3
  detections_per_img: int = 100
  box_fg_iou_thresh: float = 0.5
  box_bg_iou_thresh: float = 0.5
  box_bg_iou_lo: float = 0.1
  box_batch_size_per_image: int = 64
  box_positive_fraction: float = 0.25
  bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)
  box_candidates: int = 4096
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  roi_smooth_l1_beta = 1.0

  def __post_init__(self):
    _check(self.backbone_name, "backbone_name", ("vgg11", "vgg13", "vgg16", "vgg19"))
    if self.num_classes < 2:
      raise UserError(f"num_classes={self.num_classes} must be >= 2 (class 0 is the background)")
    if not 0.0 <= self.box_bg_iou_lo <= self.box_bg_iou_thresh <= self.box_fg_iou_thresh:
      raise UserError("need 0 <= box_bg_iou_lo <= box_bg_iou_thresh <= box_fg_iou_thresh")
    super().__post_init__()

  def setup(self):
    self.backbone = create_model(self.backbone_name, return_features=True, dtype=self.dtype,
                                 param_dtype=self.param_dtype)
    self.roi_box_head = VGGBoxHead(self.representation_size, self.dropout_rate, self.dtype, self.param_dtype)
    self.box_predictor = FastRCNNPredictor(self.num_classes, **dict(dtype=self.dtype, param_dtype=self.param_dtype))

  def negative_mask(self, matches, max_iou):
    return (matches == Matcher.BELOW_LOW_THRESHOLD) & (max_iou >= self.box_bg_iou_lo)

  def __call__(self, x, train: bool = False, targets=None, proposals=None, proposal_valid=None):
    if proposals is None and targets is not None and "proposals" in targets:
      proposals, proposal_valid = targets["proposals"], targets.get("proposal_valid")
    if proposals is None:
      raise UserError("fastrcnn_vgg16 runs on external proposals: pass proposals=[B, R, 4] xyxy pixels "
                      "(or targets['proposals'], targets['proposal_valid'])")
    if train and targets is None:
      raise UserError("FastRCNN trains on targets: call it with train=True, targets={'boxes', 'labels', 'valid'}")
    proposals = jnp.asarray(proposals, jnp.float32)
    if proposal_valid is None:
      proposal_valid = jnp.ones(proposals.shape[:2], bool)
    fmap = self.backbone(x, train=train)["stage5"]
    outputs = {"proposals": proposals, "proposal_valid": jnp.asarray(proposal_valid) > 0}
    if train:
      outputs.update(self.select_training_samples(proposals, proposal_valid, targets, self.make_rng("sampling")))
      rois = outputs["roi_proposals"]
    else:
      rois = proposals
    pooled = roi_pool(fmap, rois, self.roi_output_size, 1.0 / 16)
    h = self.roi_box_head(pooled, train)
    outputs["class_logits"], outputs["box_regression"] = self.box_predictor(h)
    return outputs

  def detection_loss(self, outputs, targets, image_size, axis_name=None):
    """Fast R-CNN's multi-task loss: log loss + smooth L1 (beta 1) of the foreground RoIs, / number of RoIs."""
    del targets, image_size
    losses = self.roi_loss(outputs, axis_name)
    return sum(losses.values()), {f"train/{k}": v for k, v in losses.items()}


register_model("fasterrcnn_resnet50_fpn")(FasterRCNN)
register_model("fasterrcnn_resnet50_fpn_v2", fpn_norm="batch", rpn_conv_depth=2, box_head="conv")(FasterRCNN)
register_model("fasterrcnn_mobilenet_v3_large_fpn", backbone_name="mobilenet_v3_large",
               anchor_sizes=((32, 64, 128, 256, 512),) * 3, rpn_score_thresh=0.05)(FasterRCNN)
# torchvision's 320 variant differs only in its transform (min_size 320: the data pipeline's) and test top-n
register_model("fasterrcnn_mobilenet_v3_large_320_fpn", backbone_name="mobilenet_v3_large",
               anchor_sizes=((32, 64, 128, 256, 512),) * 3, rpn_score_thresh=0.05, rpn_pre_nms_top_n_test=150,
               rpn_post_nms_top_n_test=150)(FasterRCNN)
register_model("fastrcnn_vgg16")(FastRCNN)
