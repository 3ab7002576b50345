"""YOLO detectors: YOLOv1 (Redmon et al. 2016) and YOLOX (Ge et al. 2021), on the detection contract.

Both take the task's labels as the contract gives them (1..num_classes-1, 0 = background, dataset class c ->
c + 1) and, having no background class, predict C = num_classes - 1 classes internally: label l is class l - 1,
and `postprocess` returns class + 1. So `num_classes` = 21 is VOC's 20 classes, 81 is COCO's 80.

YOLOv1 (`yolov1`; Redmon, Divvala, Girshick, Farhadi, "You Only Look Once: Unified, Real-Time Object
Detection", CVPR 2016):
  Network: the paper's Figure 3, 24 convolutions (7x7/2 64, maxpool, 3x3 192, maxpool, 1x1 128, 3x3 256,
  1x1 256, 3x3 512, maxpool, 4 x (1x1 256, 3x3 512), 1x1 512, 3x3 1024, maxpool, 2 x (1x1 512, 3x3 1024),
  3x3 1024, 3x3/2 1024, 3x3 1024, 3x3 1024; "same" padding, with biases, no BatchNorm, leaky ReLU 0.1) in
  the submodule `backbone`, then `fc1` (4096, leaky ReLU, dropout 0.5) and `fc2` (linear) giving the
  S x S x (B * 5 + C) tensor: 7 x 7 x 30 at 448 x 448 with S=7, B=2, C=20; 271,703,550 parameters.
  Output {'pred': [N, S, S, B * 5 + C]}: per cell, B blocks (x, y, sqrt(w), sqrt(h), confidence) then C
  class probabilities Pr(class | object), all linear (the paper's last layer has no activation). x, y are
  the box centre's offset in the cell (0..1), w, h the box size relative to the image.
  Loss (the paper's eq. 3, sum-squared): lambda_coord = 5 on (x, y) and (sqrt w, sqrt h) of the responsible
  predictor, (C - IoU)^2 for it (the target confidence is the IoU of its current box with the truth, as
  the paper defines confidence; `rescore=False` uses 1), lambda_noobj = 0.5 on C^2 for every other
  predictor (including the non-responsible one of a cell with an object), and the class probabilities'
  squared error in cells that contain an object. An object belongs to the cell holding its centre; the
  responsible predictor is the one of that cell whose current box has the highest IoU with it (ties: the
  first). A cell holds one object: when several centres fall in one cell the first valid slot wins (as
  darknet's label filling, which keeps the first box it writes). The loss is summed over cells and
  predictors and averaged over the images of the batch (darknet sums per image and divides the step by
  the batch size).
  Postprocess: class-specific score Pr(class | object) * confidence for every (box, class) pair, the
  `topk_candidates` best, `score_thresh`, `batched_nms` per class, `detections_per_img`.
  Not as the paper: no ImageNet pretraining (the paper trains the first 20 convolutions at 224 with an
  average-pool and FC head for a week, then adds 4 convolutions and the 2 FCs at random); no classifier is
  registered for that; weights are initialised He-normal (convolutions) and as torch.nn.Linear (FCs), not
  darknet's. Small runs: `width` scales every convolution's channels, `fc_features` the first FC, `grid_size`
  is S and any input size works (the FC takes the flattened final map whatever its size; 448 gives 7 x 7).

YOLOX (`yolox_nano`, `yolox_tiny`, `yolox_s`, `yolox_m`, `yolox_l`, `yolox_x`; Ge, Liu, Wang, Li, Sun,
"YOLOX: Exceeding YOLO Series in 2021", arXiv 2107.08430), laid out as Megvii's reference code (YOLOX
0.3): CSPDarknet (Focus stem, CSP layers, SPP 5/9/13 in the last stage) and a PAFPN with depth/width
multipliers, BatchNorm (eps 1e-3, torch momentum 0.03) and SiLU, depthwise convolutions for nano; the
decoupled head per level (1x1 stem to 256 * width, two 3x3 convs for classification, two for regression
with the objectness on the regression branch), strides 8/16/32, one anchor-free prediction per location.
Parameter counts at 81 classes (COCO's 80; the code's, which the paper's table rounds): nano 912,159
(0.91M), tiny 5,055,855 (5.06M), s 8,968,255 (9.0M).
  Output {'bbox_regression': [N, A, 4] raw (tx, ty, tw, th), 'bbox_objectness': [N, A, 1] logits,
  'cls_logits': [N, A, C] logits}, A = all locations, level-major then (y, x) as the reference flattens
  them. The box is cx = (tx + x) * s, cy = (ty + y) * s, w = exp(tw) * s, h = exp(th) * s.
  Assignment: SimOTA as the reference code's `get_assignments`: candidate locations are those whose centre
  ((x + 0.5) s, (y + 0.5) s) lies within 1.5 strides of some object's centre; cost = BCE(sqrt(sigmoid(cls)
  sigmoid(obj)), one-hot) + 3 (-log(IoU + 1e-8)) + 1e6 for a location outside this object's own centre
  region; each object takes its dynamic_k = max(1, int(sum of its 10 highest candidate IoUs)) cheapest
  candidates; a location taken by several objects keeps the cheapest. Fixed shapes: the per-object choice
  is `lax.top_k` of 10 masked by rank < dynamic_k (dynamic_k never exceeds 10), padded objects have
  infinite cost, nothing is indexed by a boolean.
  Loss: 5 * sum(1 - IoU^2) over foreground + BCE(obj, foreground) over every location + BCE(cls, one-hot x
  IoU of the matched prediction) over foreground, all divided by the number of foreground locations of the
  batch (psum over `axis_name` when given); `use_l1=True` adds the L1 loss on the raw regression that the
  reference switches on for its last 15 epochs.
  Postprocess as the reference: score = obj * max class probability, label = that class, `score_thresh`
  (0.01), the `topk_candidates` best, `batched_nms` per class at `nms_thresh` (0.65), `detections_per_img`.
  `backbone` holds CSPDarknet and the PAFPN (the reference's `backbone` is also the YOLOPAFPN); no
  ImageNet classifier is registered for it, as the paper trains YOLOX from scratch on COCO. Small runs:
  set `depth`/`width` freely (e.g. width 0.125); the input's height and width must be multiples of 32.
  Checked once against the reference modules (nano, tiny, m; random weights, randomised BN statistics,
  64 x 96 inputs, weights mapped by name): raw outputs within 1.3e-7, the training loss of a 3-image batch
  (one without objects, with and without L1) within 3e-5 relative, per term. The reference code is not a
  test dependency, so the tests check counts, the assignment on hand-built cases and the loss's terms.
"""
import functools
import math
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, max_pool
from jaxcnn.ops import batched_nms, box_convert, box_iou, clip_boxes_to_image
from jaxcnn.registry import register_model

# torch.nn.Linear / Conv2d default init: uniform(+-1/sqrt(fan_in)) for the weight.
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _bias_uniform(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _check_num_classes(num_classes):
  if num_classes < 2:
    raise UserError(f"num_classes={num_classes} must be >= 2 (background + at least one class; "
                    "the contract maps dataset class c to c + 1)")


def _select_detections(boxes, scores, labels, valid, nms_thresh, topk, detections_per_img):
  """Top-k candidates, batched NMS per label, the first `detections_per_img` kept, for one image.

  boxes [K, 4], scores [K], labels [K] int32, valid [K] bool -> the contract's per-image dict.
  """
  k = min(topk, scores.shape[0])
  scores = jnp.where(valid, scores, -jnp.inf)
  top_scores, idx = jax.lax.top_k(scores, k)
  top_boxes, top_labels, top_valid = boxes[idx], labels[idx], valid[idx]
  keep, count = batched_nms(top_boxes, top_scores, top_labels, nms_thresh,
                            max_output_size=detections_per_img, valid=top_valid)
  d = detections_per_img
  if keep.shape[0] < d:
    keep = jnp.pad(keep, (0, d - keep.shape[0]), constant_values=-1)
  keep = keep[:d]
  ok = jnp.arange(d) < count
  safe = jnp.where(ok, keep, 0)
  return {"boxes": jnp.where(ok[:, None], top_boxes[safe], 0.0).astype(jnp.float32),
          "scores": jnp.where(ok, top_scores[safe], 0.0).astype(jnp.float32),
          "labels": jnp.where(ok, top_labels[safe], 0).astype(jnp.int32),
          "valid": ok}


# ----------------------------------------------------------------------------------------------------------
# YOLOv1

# The paper's Figure 3: (kernel, filters, stride) per convolution, "M" a 2x2/2 max-pool.
YOLOV1_LAYERS = (
    (7, 64, 2), "M",
    (3, 192, 1), "M",
    (1, 128, 1), (3, 256, 1), (1, 256, 1), (3, 512, 1), "M",
    *((1, 256, 1), (3, 512, 1)) * 4, (1, 512, 1), (3, 1024, 1), "M",
    *((1, 512, 1), (3, 1024, 1)) * 2, (3, 1024, 1), (3, 1024, 2),
    (3, 1024, 1), (3, 1024, 1),
)


def leaky_relu(x):
  return nn.leaky_relu(x, negative_slope=0.1)


class YOLOv1Backbone(nn.Module):
  """The 24 convolutions of the paper's Figure 3 (channels times `width`), leaky ReLU 0.1 after each."""
  width: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    index = 0
    for layer in YOLOV1_LAYERS:
      if layer == "M":
        x = max_pool(x, 2, 2)
        continue
      k, filters, stride = layer
      index += 1
      x = Conv(max(1, int(round(filters * self.width))), (k, k), stride, padding=(k - 1) // 2,
               kernel_init=he_normal, dtype=self.dtype, param_dtype=self.param_dtype, name=f"conv{index}")(x)
      x = leaky_relu(x)
    return x


class YOLOv1(nn.Module):
  """YOLOv1 (Redmon et al. 2016): 24 convolutions + 2 FCs -> S x S x (B * 5 + C); see the module doc."""
  num_classes: int = 21            # contract labels: 0 background + VOC's 20 -> C = 20
  grid_size: int = 7               # S
  boxes_per_cell: int = 2          # B
  width: float = 1.0               # channel multiplier of the convolutions (small offline runs)
  fc_features: int = 4096
  dropout_rate: float = 0.5
  lambda_coord: float = 5.0
  lambda_noobj: float = 0.5
  rescore: bool = True             # confidence target = IoU of the responsible box (paper); False: 1
  score_thresh: float = 0.005
  nms_thresh: float = 0.5
  topk_candidates: int = 1000
  detections_per_img: int = 100
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    _check_num_classes(self.num_classes)
    if self.grid_size < 1 or self.boxes_per_cell < 1:
      raise UserError(f"grid_size={self.grid_size} and boxes_per_cell={self.boxes_per_cell} must be >= 1")
    if not self.width > 0 or self.fc_features < 1:
      raise UserError(f"width={self.width} must be > 0 and fc_features={self.fc_features} >= 1")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f"dropout_rate={self.dropout_rate} must be in [0, 1)")
    super().__post_init__()

  @property
  def num_fg_classes(self) -> int:
    return self.num_classes - 1

  @property
  def cell_channels(self) -> int:
    return self.boxes_per_cell * 5 + self.num_fg_classes

  @nn.compact
  def __call__(self, x, train: bool = False) -> Dict[str, jax.Array]:
    x = YOLOv1Backbone(self.width, self.dtype, self.param_dtype, name="backbone")(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.fc_features, kernel_init=torch_default_init, bias_init=_bias_uniform(x.shape[-1]),
                 dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(leaky_relu(x))
    s = self.grid_size
    x = nn.Dense(s * s * self.cell_channels, kernel_init=torch_default_init,
                 bias_init=_bias_uniform(self.fc_features), dtype=self.dtype, param_dtype=self.param_dtype,
                 name="fc2")(x)
    return {"pred": x.reshape(x.shape[0], s, s, self.cell_channels)}

  def _split(self, pred):
    """pred [N, S, S, B*5+C] -> boxes [N, S, S, B, 4] (x, y, sqrt w, sqrt h), conf [N, S, S, B], probs."""
    nb = self.boxes_per_cell
    pred = pred.astype(jnp.float32)
    per_box = pred[..., :nb * 5].reshape(pred.shape[:-1] + (nb, 5))
    return per_box[..., :4], per_box[..., 4], pred[..., nb * 5:]

  def _cell_boxes_xyxy(self, boxes):
    """(x, y, sqrt w, sqrt h) per cell -> xyxy in units of the image (0..1)."""
    s = self.grid_size
    col = jnp.arange(s, dtype=jnp.float32)[None, :, None]
    row = jnp.arange(s, dtype=jnp.float32)[:, None, None]
    cx = (boxes[..., 0] + col) / s
    cy = (boxes[..., 1] + row) / s
    w, h = boxes[..., 2] ** 2, boxes[..., 3] ** 2
    return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)

  def build_targets(self, gt_boxes, gt_labels, gt_valid, image_size):
    """One image's truths on the S x S grid: which cell holds which object (first valid slot wins).

    gt_boxes [M, 4] xyxy pixels -> {'obj': bool [S, S], 'box': [S, S, 4] (x, y, sqrt w, sqrt h),
    'xyxy': [S, S, 4] image units, 'cls': int32 [S, S] class 0..C-1}.
    """
    s = self.grid_size
    height, width = image_size
    scale = jnp.array([width, height, width, height], jnp.float32)
    xyxy = gt_boxes.astype(jnp.float32) / scale
    cx, cy = (xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2
    col = jnp.clip(jnp.floor(cx * s), 0, s - 1).astype(jnp.int32)
    row = jnp.clip(jnp.floor(cy * s), 0, s - 1).astype(jnp.int32)
    cell = row * s + col
    here = (cell[None, :] == jnp.arange(s * s)[:, None]) & gt_valid[None, :]   # [S*S, M]
    first = jnp.argmax(here, axis=1)
    obj = jnp.any(here, axis=1)
    w, h = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
    box = jnp.stack([cx * s - col, cy * s - row, jnp.sqrt(jnp.maximum(w, 0.0)), jnp.sqrt(jnp.maximum(h, 0.0))], -1)
    return {"obj": obj.reshape(s, s), "box": box[first].reshape(s, s, 4), "xyxy": xyxy[first].reshape(s, s, 4),
            "cls": (gt_labels[first] - 1).astype(jnp.int32).reshape(s, s)}

  def responsible(self, pred, targets_xyxy):
    """IoU [.., S, S, B] of each predicted box with its cell's truth and the responsible mask (argmax)."""
    boxes, _, _ = self._split(pred)
    pred_xyxy = self._cell_boxes_xyxy(boxes)                                   # [..., S, S, B, 4]
    ious = box_iou(pred_xyxy, targets_xyxy[..., None, :])[..., 0]             # [..., S, S, B]
    ious = jnp.nan_to_num(ious, nan=0.0)
    best = jax.nn.one_hot(jnp.argmax(ious, axis=-1), self.boxes_per_cell, dtype=bool)
    return jax.lax.stop_gradient(ious), best

  def detection_loss(self, outputs, targets, image_size, axis_name: Optional[str] = None):
    """The paper's sum-squared loss (eq. 3), summed per image, averaged over the batch; see the module doc."""
    del axis_name  # normalised per image: the mean over the global batch is the trainer's average
    pred = outputs["pred"]
    boxes, conf, probs = self._split(pred)
    t = jax.vmap(lambda b, l, v: self.build_targets(b, l, v, image_size))(
        targets["boxes"], targets["labels"], targets["valid"])
    ious, best = self.responsible(pred, t["xyxy"])
    obj_ij = best & t["obj"][..., None]                                        # [N, S, S, B]
    tb = t["box"][..., None, :]
    coord = jnp.sum(obj_ij * ((boxes[..., 0] - tb[..., 0]) ** 2 + (boxes[..., 1] - tb[..., 1]) ** 2))
    size = jnp.sum(obj_ij * ((boxes[..., 2] - tb[..., 2]) ** 2 + (boxes[..., 3] - tb[..., 3]) ** 2))
    conf_target = ious if self.rescore else jnp.ones_like(ious)
    obj = jnp.sum(obj_ij * (conf - conf_target) ** 2)
    noobj = jnp.sum(~obj_ij * conf ** 2)
    onehot = jax.nn.one_hot(t["cls"], self.num_fg_classes)
    cls = jnp.sum(t["obj"][..., None] * (probs - onehot) ** 2)
    n = pred.shape[0]
    parts = {"train/coord": self.lambda_coord * (coord + size) / n, "train/obj": obj / n,
             "train/noobj": self.lambda_noobj * noobj / n, "train/class": cls / n}
    return sum(parts.values()), parts

  def postprocess(self, outputs, image_size):
    """Class-specific scores, threshold, top-k, per-class NMS: the contract's fixed-size detections."""
    boxes, conf, probs = self._split(outputs["pred"])
    height, width = image_size
    xyxy = self._cell_boxes_xyxy(boxes) * jnp.array([width, height, width, height], jnp.float32)
    xyxy = clip_boxes_to_image(xyxy, (height, width))
    n, c = boxes.shape[0], self.num_fg_classes
    scores = (conf[..., :, None] * probs[..., None, :]).reshape(n, -1)          # [N, S*S*B*C]
    all_boxes = jnp.broadcast_to(xyxy[..., None, :], xyxy.shape[:-1] + (c, 4)).reshape(n, -1, 4)
    labels = jnp.broadcast_to(jnp.tile(jnp.arange(1, c + 1, dtype=jnp.int32), scores.shape[1] // c), scores.shape)
    valid = scores > self.score_thresh
    fn = functools.partial(_select_detections, nms_thresh=self.nms_thresh, topk=self.topk_candidates,
                           detections_per_img=self.detections_per_img)
    return jax.vmap(fn)(all_boxes, scores, labels, valid)


register_model("yolov1")(YOLOv1)


# ----------------------------------------------------------------------------------------------------------
# YOLOX

class BaseConv(nn.Module):
  """The reference's BaseConv: conv (no bias) -> BN (eps 1e-3, torch momentum 0.03) -> SiLU."""
  features: int
  kernel_size: int = 1
  strides: int = 1
  groups: int = 1
  train: bool = False
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    x = Conv(self.features, (k, k), self.strides, padding=(k - 1) // 2, feature_group_count=self.groups,
             use_bias=False, kernel_init=torch_default_init, dtype=self.dtype, param_dtype=self.param_dtype,
             name="conv")(x)
    x = nn.BatchNorm(use_running_average=not self.train, momentum=0.97, epsilon=1e-3, axis_name=self.bn_axis_name,
                     dtype=self.dtype, param_dtype=self.param_dtype, name="bn")(x)
    return nn.silu(x)


class DWConv(nn.Module):
  """The reference's DWConv: a depthwise BaseConv `dconv` then a 1x1 BaseConv `pconv`."""
  features: int
  kernel_size: int = 1
  strides: int = 1
  train: bool = False
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(train=self.train, bn_axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype)
    x = BaseConv(x.shape[-1], self.kernel_size, self.strides, groups=x.shape[-1], name="dconv", **kw)(x)
    return BaseConv(self.features, 1, name="pconv", **kw)(x)


def _conv_factory(depthwise: bool, train: bool, bn_axis_name, dtype, param_dtype):
  """(plain, maybe_depthwise): BaseConv, and the reference's `Conv = DWConv if depthwise else BaseConv`."""
  kw = dict(train=train, bn_axis_name=bn_axis_name, dtype=dtype, param_dtype=param_dtype)
  plain = functools.partial(BaseConv, **kw)
  spatial = functools.partial(DWConv if depthwise else BaseConv, **kw)
  return plain, spatial


class CSPLayer(nn.Module):
  """conv1 -> n bottlenecks, conv2, concat, conv3 (hidden = out * 0.5; bottlenecks 1x1 then 3x3)."""
  features: int
  n: int = 1
  shortcut: bool = True
  depthwise: bool = False
  train: bool = False
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv, spatial = _conv_factory(self.depthwise, self.train, self.bn_axis_name, self.dtype,
                                  self.param_dtype)
    hidden = int(self.features * 0.5)
    x1 = conv(hidden, 1, name="conv1")(x)
    x2 = conv(hidden, 1, name="conv2")(x)
    for i in range(self.n):
      y = conv(hidden, 1, name=f"m{i}_conv1")(x1)
      y = spatial(hidden, 3, name=f"m{i}_conv2")(y)
      x1 = y + x1 if self.shortcut else y
    return conv(self.features, 1, name="conv3")(jnp.concatenate([x1, x2], axis=-1))


class CSPDarknetPAFPN(nn.Module):
  """CSPDarknet (Focus stem, dark2..dark5 with SPP) and the PAFPN: maps at strides 8, 16, 32."""
  depth: float = 0.33
  width: float = 0.5
  depthwise: bool = False
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv, spatial = _conv_factory(self.depthwise, train, self.bn_axis_name, self.dtype, self.param_dtype)
    csp = functools.partial(CSPLayer, depthwise=self.depthwise, train=train, bn_axis_name=self.bn_axis_name,
                            dtype=self.dtype, param_dtype=self.param_dtype)
    down = functools.partial(spatial, kernel_size=3, strides=2)
    base = int(self.width * 64)
    n = max(round(self.depth * 3), 1)
    # Focus: space-to-depth in the reference's channel order (top-left, bottom-left, top-right, bottom-right).
    x = jnp.concatenate([x[:, ::2, ::2], x[:, 1::2, ::2], x[:, ::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    x = conv(base, 3, name="stem")(x)
    x = csp(base * 2, n, name="dark2_csp")(down(base * 2, name="dark2_conv")(x))
    c3 = csp(base * 4, n * 3, name="dark3_csp")(down(base * 4, name="dark3_conv")(x))
    c4 = csp(base * 8, n * 3, name="dark4_csp")(down(base * 8, name="dark4_conv")(c3))
    x = down(base * 16, name="dark5_conv")(c4)
    x = conv(base * 8, 1, name="dark5_spp_conv1")(x)
    x = jnp.concatenate([x] + [max_pool(x, k, 1, k // 2) for k in (5, 9, 13)], axis=-1)
    x = conv(base * 16, 1, name="dark5_spp_conv2")(x)
    c5 = csp(base * 16, n, shortcut=False, name="dark5_csp")(x)

    ch = [int(256 * self.width), int(512 * self.width), int(1024 * self.width)]
    m = round(3 * self.depth)
    up = lambda t: jnp.repeat(jnp.repeat(t, 2, axis=1), 2, axis=2)
    fpn_out0 = conv(ch[1], 1, name="lateral_conv0")(c5)
    f_out0 = csp(ch[1], m, shortcut=False, name="C3_p4")(jnp.concatenate([up(fpn_out0), c4], axis=-1))
    fpn_out1 = conv(ch[0], 1, name="reduce_conv1")(f_out0)
    pan_out2 = csp(ch[0], m, shortcut=False, name="C3_p3")(jnp.concatenate([up(fpn_out1), c3], axis=-1))
    p_out1 = down(ch[0], name="bu_conv2")(pan_out2)
    pan_out1 = csp(ch[1], m, shortcut=False, name="C3_n3")(jnp.concatenate([p_out1, fpn_out1], axis=-1))
    p_out0 = down(ch[1], name="bu_conv1")(pan_out1)
    pan_out0 = csp(ch[2], m, shortcut=False, name="C3_n4")(jnp.concatenate([p_out0, fpn_out0], axis=-1))
    return pan_out2, pan_out1, pan_out0


def _yolox_iou(a, b, eps: float):
  """Element-wise IoU of cxcywh boxes, as the reference's IOUloss / bboxes_iou(xyxy=False)."""
  tl = jnp.maximum(a[..., :2] - a[..., 2:] / 2, b[..., :2] - b[..., 2:] / 2)
  br = jnp.minimum(a[..., :2] + a[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2)
  en = jnp.all(tl < br, axis=-1)
  inter = jnp.where(en, jnp.prod(br - tl, axis=-1), 0.0)
  union = jnp.prod(a[..., 2:], axis=-1) + jnp.prod(b[..., 2:], axis=-1) - inter
  return inter / (union + eps)


def _bce_logits(logits, targets):
  """BCEWithLogits; written with log_sigmoid so that the gradient at a logit of exactly 0 is 1/2 - target
  (max(x, 0) + log1p(exp(-|x|)) has a zero derivative there in JAX)."""
  return -(targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits))


class YOLOX(nn.Module):
  """YOLOX (Ge et al. 2021): CSPDarknet + PAFPN, decoupled anchor-free head, SimOTA; see the module doc."""
  num_classes: int = 81            # contract labels: 0 background + COCO's 80 -> C = 80
  depth: float = 0.33
  width: float = 0.5
  depthwise: bool = False
  strides: Tuple[int, ...] = (8, 16, 32)
  center_radius: float = 1.5
  candidate_topk: int = 10         # n_candidate_k of dynamic-k
  reg_weight: float = 5.0
  use_l1: bool = False
  prior_prob: float = 0.01
  score_thresh: float = 0.01
  nms_thresh: float = 0.65
  topk_candidates: int = 1000
  detections_per_img: int = 100
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    _check_num_classes(self.num_classes)
    if not self.width > 0 or not self.depth > 0 or int(self.width * 64) < 1:
      raise UserError(f"depth={self.depth} and width={self.width} must be > 0 with width * 64 >= 1")
    if tuple(self.strides) != (8, 16, 32):
      raise UserError(f"strides={tuple(self.strides)}: YOLOX's PAFPN gives maps at strides (8, 16, 32) only")
    super().__post_init__()

  @property
  def num_fg_classes(self) -> int:
    return self.num_classes - 1

  @nn.compact
  def __call__(self, x, train: bool = False) -> Dict[str, jax.Array]:
    if x.shape[1] % 32 or x.shape[2] % 32:
      raise UserError(f"YOLOX needs an input height and width divisible by 32, got {x.shape[1]}x{x.shape[2]}")
    feats = CSPDarknetPAFPN(self.depth, self.width, self.depthwise, self.bn_axis_name, self.dtype,
                            self.param_dtype, name="backbone")(x, train)
    conv, spatial = _conv_factory(self.depthwise, train, self.bn_axis_name, self.dtype, self.param_dtype)
    hidden = int(256 * self.width)
    prior = -math.log((1 - self.prior_prob) / self.prior_prob)
    pred = functools.partial(Conv, kernel_size=(1, 1), kernel_init=torch_default_init, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    regs, objs, clss = [], [], []
    for k, f in enumerate(feats):
      f = conv(hidden, 1, name=f"stems_{k}")(f)
      c = spatial(hidden, 3, name=f"cls_convs_{k}_0")(f)
      c = spatial(hidden, 3, name=f"cls_convs_{k}_1")(c)
      r = spatial(hidden, 3, name=f"reg_convs_{k}_0")(f)
      r = spatial(hidden, 3, name=f"reg_convs_{k}_1")(r)
      cls = pred(self.num_fg_classes, bias_init=nn.initializers.constant(prior), name=f"cls_preds_{k}")(c)
      reg = pred(4, bias_init=_bias_uniform(hidden), name=f"reg_preds_{k}")(r)
      obj = pred(1, bias_init=nn.initializers.constant(prior), name=f"obj_preds_{k}")(r)
      n = f.shape[0]
      regs.append(reg.reshape(n, -1, 4))
      objs.append(obj.reshape(n, -1, 1))
      clss.append(cls.reshape(n, -1, self.num_fg_classes))
    return {"bbox_regression": jnp.concatenate(regs, 1), "bbox_objectness": jnp.concatenate(objs, 1),
            "cls_logits": jnp.concatenate(clss, 1)}

  def grid(self, image_size) -> Tuple[np.ndarray, np.ndarray]:
    """Per location (level-major, then y, x): its grid (x, y) [A, 2] and stride [A] (static, NumPy)."""
    height, width = image_size
    xy, strides = [], []
    for s in self.strides:
      ys, xs = np.meshgrid(np.arange(height // s), np.arange(width // s), indexing="ij")
      xy.append(np.stack([xs.ravel(), ys.ravel()], -1))
      strides.append(np.full(xs.size, s))
    return np.concatenate(xy).astype(np.float32), np.concatenate(strides).astype(np.float32)

  def decode(self, bbox_regression, image_size) -> jax.Array:
    """Raw (tx, ty, tw, th) [..., A, 4] -> cxcywh boxes in pixels."""
    xy, strides = self.grid(image_size)
    reg = bbox_regression.astype(jnp.float32)
    return jnp.concatenate([(reg[..., :2] + xy) * strides[:, None], jnp.exp(reg[..., 2:]) * strides[:, None]], -1)

  def simota(self, pred_boxes, cls_logits, obj_logits, gt_boxes, gt_labels, gt_valid, image_size):
    """SimOTA for one image (fixed shapes); see the module doc.

    pred_boxes [A, 4] cxcywh pixels, cls_logits [A, C], obj_logits [A] (or [A, 1]), gt_boxes [M, 4] xyxy
    pixels, gt_labels [M] in 1..C, gt_valid [M] -> {'fg': bool [A], 'gt': int32 [A] matched object,
    'iou': [A] IoU of the prediction with it, 'dynamic_k': int32 [M], 'matching': bool [M, A]}.
    """
    pred_boxes, cls_logits, obj_logits = jax.lax.stop_gradient(
        (pred_boxes.astype(jnp.float32), cls_logits.astype(jnp.float32), obj_logits.astype(jnp.float32)))
    obj_logits = obj_logits.reshape(-1)
    num_anchors, num_gt = pred_boxes.shape[0], gt_boxes.shape[0]
    xy, strides = self.grid(image_size)
    centers = (xy + 0.5) * strides[:, None]
    gt = box_convert(gt_boxes.astype(jnp.float32), "xyxy", "cxcywh")
    radius = self.center_radius * strides
    in_center = (jnp.all(jnp.abs(centers[None, :, :] - gt[:, None, :2]) < radius[None, :, None], axis=-1)
                 & gt_valid[:, None])                                                  # [M, A]
    candidate = jnp.any(in_center, axis=0)                                             # [A]
    ious = _yolox_iou(gt[:, None, :], pred_boxes[None, :, :], 0.0)                     # [M, A]
    ious = jnp.where(candidate[None, :] & gt_valid[:, None], jnp.nan_to_num(ious), 0.0)
    p = jnp.sqrt(jax.nn.sigmoid(cls_logits) * jax.nn.sigmoid(obj_logits)[:, None])     # [A, C]
    # F.binary_cross_entropy clamps each log at -100.
    log_p, log_1mp = jnp.maximum(jnp.log(p), -100.0), jnp.maximum(jnp.log1p(-p), -100.0)
    cls_index = jnp.clip(gt_labels - 1, 0, cls_logits.shape[-1] - 1)
    cls_cost = (-jnp.sum(log_1mp, axis=-1)[None, :] + log_1mp.T[cls_index] - log_p.T[cls_index])   # [M, A]
    cost = cls_cost + 3.0 * -jnp.log(ious + 1e-8) + 1e6 * (~in_center)
    cost = jnp.where(candidate[None, :] & gt_valid[:, None], cost, jnp.inf)
    kmax = min(self.candidate_topk, num_anchors)
    top_ious, _ = jax.lax.top_k(ious, kmax)
    dynamic_k = jnp.maximum(jnp.sum(top_ious, axis=-1).astype(jnp.int32), 1)           # trunc, as .int()
    neg_cost, order = jax.lax.top_k(-cost, kmax)                                       # cheapest first
    chosen = (jnp.arange(kmax)[None, :] < dynamic_k[:, None]) & jnp.isfinite(neg_cost)
    matching = jnp.zeros((num_gt, num_anchors), jnp.int32).at[jnp.arange(num_gt)[:, None], order].max(
        chosen.astype(jnp.int32)) > 0
    count = jnp.sum(matching, axis=0)
    cheapest = jnp.argmin(cost, axis=0)
    matching = jnp.where(count[None, :] > 1, jnp.arange(num_gt)[:, None] == cheapest[None, :], matching)
    fg = count > 0
    gt_index = jnp.argmax(matching, axis=0).astype(jnp.int32)
    iou = jnp.take_along_axis(ious, gt_index[None, :], axis=0)[0]
    return {"fg": fg, "gt": gt_index, "iou": jnp.where(fg, iou, 0.0), "dynamic_k": dynamic_k,
            "matching": matching}

  def detection_loss(self, outputs, targets, image_size, axis_name: Optional[str] = None):
    """5 IoU loss + BCE obj + BCE cls (+ L1), over the batch's foreground count; see the module doc."""
    reg = outputs["bbox_regression"].astype(jnp.float32)
    obj = outputs["bbox_objectness"].astype(jnp.float32)[..., 0]
    cls = outputs["cls_logits"].astype(jnp.float32)
    boxes = self.decode(reg, image_size)
    assign = jax.vmap(lambda b, c, o, gb, gl, gv: self.simota(b, c, o, gb, gl, gv, image_size))(
        boxes, cls, obj, targets["boxes"], targets["labels"], targets["valid"])
    fg = assign["fg"]
    gt_xyxy = jnp.take_along_axis(targets["boxes"].astype(jnp.float32), assign["gt"][..., None], axis=1)
    gt_labels = jnp.take_along_axis(targets["labels"], assign["gt"], axis=1)
    gt = box_convert(gt_xyxy, "xyxy", "cxcywh")
    num_fg = jnp.sum(fg).astype(jnp.float32)
    if axis_name is not None:
      num_fg = jax.lax.psum(num_fg, axis_name)
    num_fg = jnp.maximum(num_fg, 1.0)
    iou_loss = jnp.sum(fg * (1.0 - _yolox_iou(boxes, gt, 1e-16) ** 2)) / num_fg
    obj_loss = jnp.sum(_bce_logits(obj, fg.astype(jnp.float32))) / num_fg
    cls_target = jax.nn.one_hot(gt_labels - 1, self.num_fg_classes) * assign["iou"][..., None]
    cls_loss = jnp.sum(fg[..., None] * _bce_logits(cls, cls_target)) / num_fg
    parts = {"train/iou": self.reg_weight * iou_loss, "train/objectness": obj_loss,
             "train/classification": cls_loss}
    if self.use_l1:
      xy, strides = self.grid(image_size)
      l1_target = jnp.concatenate([gt[..., :2] / strides[:, None] - xy,
                                   jnp.log(gt[..., 2:] / strides[:, None] + 1e-8)], -1)
      parts["train/l1"] = jnp.sum(fg[..., None] * jnp.abs(reg - l1_target)) / num_fg
    return sum(parts.values()), parts

  def postprocess(self, outputs, image_size):
    """score = obj * max class probability, threshold, top-k, per-class NMS (the contract's format)."""
    height, width = image_size
    boxes = box_convert(self.decode(outputs["bbox_regression"], image_size), "cxcywh", "xyxy")
    boxes = clip_boxes_to_image(boxes, (height, width))
    probs = jax.nn.sigmoid(outputs["cls_logits"].astype(jnp.float32))
    obj = jax.nn.sigmoid(outputs["bbox_objectness"].astype(jnp.float32))[..., 0]
    scores = obj * jnp.max(probs, axis=-1)
    labels = jnp.argmax(probs, axis=-1).astype(jnp.int32) + 1
    fn = functools.partial(_select_detections, nms_thresh=self.nms_thresh, topk=self.topk_candidates,
                           detections_per_img=self.detections_per_img)
    return jax.vmap(fn)(boxes, scores, labels, scores > self.score_thresh)


_YOLOX_VARIANTS = {
    "yolox_nano": dict(depth=0.33, width=0.25, depthwise=True),
    "yolox_tiny": dict(depth=0.33, width=0.375),
    "yolox_s": dict(depth=0.33, width=0.50),
    "yolox_m": dict(depth=0.67, width=0.75),
    "yolox_l": dict(depth=1.0, width=1.0),
    "yolox_x": dict(depth=1.33, width=1.25),
}
for _name, _kwargs in _YOLOX_VARIANTS.items():
  register_model(_name, **_kwargs)(YOLOX)
