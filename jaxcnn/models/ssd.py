"""SSD (Liu et al. 2016) and SSDLite (Sandler et al. 2018; Howard et al. 2019) as torchvision builds them.

Detectors of the `detection` task's contract: `apply(variables, x, train)` with
x [B, H, W, 3] (normalised by the data pipeline) returns the raw head outputs
{'cls_logits': [B, A, num_classes], 'bbox_regression': [B, A, 4]}, anchors
level-major, then row-major locations, then the boxes of a location, as
torchvision concatenates them. `anchors(image_size)` gives the [A, 4] xyxy
default boxes (`jaxcnn.ops.DefaultBoxGenerator`); `detection_loss` and
`postprocess` are torchvision's `SSD.compute_loss` and
`SSD.postprocess_detections` with fixed shapes (both use no parameters).

`ssd300_vgg16` (35,641,826 parameters at 91 classes, torchvision's): VGG-16's
convolutions (`backbone`, the tree of the zoo's `vgg16` minus its
classifier, so ImageNet weights load unchanged) with a ceil-mode third pool;
conv4_3 L2-normalised over channels and multiplied by a learned per-channel
`scale_weight` (initially 20) is the first map (38x38 at 300x300); then
pool5 as a 3x3/1 max-pool, `fc6` (3x3, dilation 6, 1024 channels), `fc7`
(1x1, 1024), the second map (19x19), and four extra blocks (1x1 reduce, 3x3
conv: strided 512 and 256 channels, then two unpadded 256s) for 10, 5, 3, 1.
Heads: one 3x3 convolution per map for the classes and one for the box
deltas; 4, 6, 6, 6, 4, 4 default boxes per location (8732 at 300x300).
Extras and heads start Xavier-uniform with zero biases, as torchvision's.
The input must be at least 268 pixels high and wide (the unpadded extras);
torchvision feeds 300x300, 0-255 pixels minus the mean (0.48235, 0.45882,
0.40784) x 255, which the data pipeline is to reproduce.

`ssdlite320_mobilenet_v3_large` (3,440,060 parameters at 91 classes, torchvision's
from-scratch layout): MobileNetV3-Large with the half-width last stage
(`reduced_tail`, torchvision's choice without ImageNet weights) as `backbone`;
its maps are the 1x1 expansion of the block that opens the last stage (672
channels, stride 16; `tail_expand`) and the last 1x1 conv (480 channels,
stride 32), then four extra blocks (1x1 conv to d/2, 3x3/2 depthwise, 1x1 to
d; d = 512, 256, 256, 128; conv-BN-ReLU6 units). Heads: per map a 3x3
depthwise conv-BN-ReLU6 and a 1x1 convolution (with bias); 6 default boxes
per location (min_ratio 0.2, max_ratio 0.95, ratios 2 and 3; 3234 at
320x320). Every BN (backbone included) has eps 1e-3 and torch momentum 0.03,
every convolution starts N(0, 0.03) with zero biases, as torchvision builds it
without pretrained weights. Any input of at least 1x1 per map works
(64x64 included); torchvision feeds 320x320 scaled to [-1, 1].

Post-processing defaults are torchvision's per model: ssd300_vgg16
score_thresh 0.01, nms_thresh 0.45, detections_per_img 200, topk_candidates
400; ssdlite 0.001, 0.55, 300, 300. Training: SSDMatcher at `iou_thresh` 0.5,
BoxCoder weights (10, 10, 5, 5), smooth L1 (beta 1) summed over positive
anchors, softmax cross-entropy over the positives plus the highest-loss
negatives (3 per positive, `positive_fraction` 0.25), both divided by the
number of positive anchors of the whole batch (at least 1).

Knobs for small runs (defaults are torchvision's): ssd300_vgg16
`aspect_ratios`, `anchor_scales`, `anchor_steps`; ssdlite `width_mult`
(backbone), `reduced_tail`, `extra_width_mult` (extra blocks' depths,
max(16, int(d * m)) as torchvision's `SSDLiteFeatureExtractorMobileNet`),
`num_extra_blocks` (0..4; fewer maps, fewer anchors), `min_ratio`,
`max_ratio`, `aspect_ratios` (None: (2, 3) on every map).

Parameter names: `backbone/...` (the classification model's), SSD300
`scale_weight`, `fc6`, `fc7`, `extra{1..4}/{conv1,conv2}`; SSDLite
`extra{1..4}/{reduce,depthwise,expand}/{conv,bn}`; heads
`{classification,regression}_head/level{k}` (SSDLite: `.../level{k}/{depthwise/{conv,bn},pointwise}`).
`jaxcnn.convert.torch_to_flax(name, state_dict)` converts torchvision's weights.
"""
import functools
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxcnn.errors import UserError
from jaxcnn.layers import Conv, max_pool
from jaxcnn.layers.conv_norm import ConvBNAct
from jaxcnn.losses import smooth_l1_loss
from jaxcnn.models.mobilenet import MobileNetV3
from jaxcnn.models.vgg import CONFIGS, VGG
from jaxcnn.ops import BoxCoder, DefaultBoxGenerator, SSDMatcher, batched_nms, box_iou, clip_boxes_to_image
from jaxcnn.registry import register_model

xavier_init = nn.initializers.xavier_uniform()
ssdlite_init = nn.initializers.normal(0.03)

SSD300_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
SSD300_SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
SSD300_STEPS = (8, 16, 32, 64, 100, 300)
# (reduce channels, output channels, kernel, stride, padding) of SSD300's extra blocks (conv8_2 .. conv11_2)
SSD300_EXTRAS = ((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 1, 0), (128, 256, 3, 1, 0))
SSDLITE_EXTRA_DEPTHS = (512, 256, 256, 128)


def _halve(size: int) -> int:
  """Output size of a 3x3/2 (or 5x5/2) convolution with 'same' padding."""
  return (size - 1) // 2 + 1


class _SSDMixin:
  """Anchors, loss and post-processing shared by the SSD detectors (no parameters involved); a detector
  defines `anchor_generator()` and `feature_shapes(image_size)`."""

  def _check_detector_fields(self):
    if self.num_classes < 2:
      raise UserError(f"num_classes={self.num_classes} must be >= 2 (class 0 is the background)")
    if not 0.0 < self.positive_fraction < 1.0:
      raise UserError(f"positive_fraction={self.positive_fraction} must be in (0, 1)")
    if self.detections_per_img < 1 or self.topk_candidates < 1:
      raise UserError(f"detections_per_img={self.detections_per_img} and topk_candidates="
                      f"{self.topk_candidates} must be >= 1")

  def anchors(self, image_size: Tuple[int, int]) -> jax.Array:
    """Default boxes [A, 4] (xyxy pixels) for inputs of (height, width) `image_size`."""
    image_size = tuple(int(s) for s in image_size)
    return self.anchor_generator()(image_size, self.feature_shapes(image_size))

  def detection_loss(self, outputs: Dict[str, jax.Array], targets: Dict[str, jax.Array],
                     image_size: Tuple[int, int], axis_name: Optional[str] = None):
    """torchvision's SSD loss (sum of 'bbox_regression' and 'classification') and its parts as metrics."""
    anchors = self.anchors(image_size)
    logits = jnp.asarray(outputs["cls_logits"], jnp.float32)
    regression = jnp.asarray(outputs["bbox_regression"], jnp.float32)
    boxes = jnp.asarray(targets["boxes"], jnp.float32)
    labels = jnp.asarray(targets["labels"], jnp.int32)
    valid = jnp.asarray(targets["valid"], bool)
    matcher = SSDMatcher(self.iou_thresh)
    matches = jax.vmap(lambda b, v: matcher(box_iou(b, anchors), v))(boxes, valid)  # [B, A]
    foreground = matches >= 0
    index = jnp.maximum(matches, 0)
    matched_boxes = jnp.take_along_axis(boxes, index[..., None], axis=1)
    # background anchors encode against themselves (zero deltas), so padded boxes never reach a log
    matched_boxes = jnp.where(foreground[..., None], matched_boxes, anchors[None])
    target_deltas = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(matched_boxes, anchors[None])
    box_loss = jnp.sum(jnp.where(foreground[..., None],
                                 smooth_l1_loss(regression, target_deltas, beta=1.0, reduction="none"), 0.0))

    cls_targets = jnp.where(foreground, jnp.take_along_axis(labels, index, axis=1), 0)
    cls_loss = optax.softmax_cross_entropy_with_integer_labels(logits, cls_targets)  # [B, A]
    positive = cls_targets > 0
    num_negative = (1.0 - self.positive_fraction) / self.positive_fraction * jnp.sum(positive, axis=1,
                                                                                     keepdims=True)
    # hard negative mining: rank anchors by loss (positives last), keep the top num_negative
    negative_loss = jnp.where(positive, -jnp.inf, lax.stop_gradient(cls_loss))
    order = jnp.argsort(-negative_loss, axis=1, stable=True)
    rank = jnp.argsort(order, axis=1)
    negative = rank < num_negative
    num_foreground = jnp.sum(foreground).astype(jnp.float32)
    if axis_name is not None:
      num_foreground = lax.psum(num_foreground, axis_name)
    normaliser = jnp.maximum(num_foreground, 1.0)
    bbox_regression = box_loss / normaliser
    classification = (jnp.sum(jnp.where(positive, cls_loss, 0.0))
                      + jnp.sum(jnp.where(negative, cls_loss, 0.0))) / normaliser
    return bbox_regression + classification, {"train/bbox_regression": bbox_regression,
                                              "train/classification": classification}

  def postprocess(self, outputs: Dict[str, jax.Array], image_size: Tuple[int, int]) -> Dict[str, jax.Array]:
    """torchvision's postprocess_detections: per class score > score_thresh, its top `topk_candidates`,
    batched NMS, the best `detections_per_img`; padded to that many with valid False."""
    image_size = tuple(int(s) for s in image_size)
    anchors = self.anchors(image_size)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    num_out = self.detections_per_img

    def one(regression, logits):
      boxes = clip_boxes_to_image(coder.decode(regression, anchors), image_size)
      scores = jax.nn.softmax(logits, axis=-1)[:, 1:].T  # [K - 1, A]
      k = min(self.topk_candidates, scores.shape[1])
      top, index = lax.top_k(jnp.where(scores > self.score_thresh, scores, -jnp.inf), k)
      ok = top > self.score_thresh
      cand_boxes = boxes[index].reshape(-1, 4)
      cand_scores = jnp.where(ok, top, 0.0).reshape(-1)
      cand_labels = jnp.broadcast_to(jnp.arange(1, scores.shape[0] + 1)[:, None], top.shape).reshape(-1)
      keep, count = batched_nms(cand_boxes, cand_scores, cand_labels, self.nms_thresh,
                                max_output_size=num_out, valid=ok.reshape(-1))
      found = jnp.arange(num_out) < count
      safe = jnp.where(found, keep, 0)
      return {"boxes": jnp.where(found[:, None], cand_boxes[safe], 0.0),
              "scores": jnp.where(found, cand_scores[safe], 0.0),
              "labels": jnp.where(found, cand_labels[safe], 0).astype(jnp.int32),
              "valid": found}

    return jax.vmap(one)(jnp.asarray(outputs["bbox_regression"], jnp.float32),
                         jnp.asarray(outputs["cls_logits"], jnp.float32))


def _flatten(maps, columns):
  """[B, H, W, anchors * columns] maps -> [B, sum H W anchors, columns] (torchvision's order)."""
  return jnp.concatenate([m.reshape(m.shape[0], -1, columns) for m in maps], axis=1).astype(jnp.float32)


class SSDHead(nn.Module):
  """One 3x3 convolution per map to anchors x columns channels (SSD)."""
  num_columns: int
  num_anchors: Sequence[int]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features):
    return _flatten([Conv(a * self.num_columns, (3, 3), padding=1, kernel_init=xavier_init, dtype=self.dtype,
                          param_dtype=self.param_dtype, name=f"level{k}")(x)
                     for k, (x, a) in enumerate(zip(features, self.num_anchors))], self.num_columns)


class SSDLitePrediction(nn.Module):
  """3x3 depthwise conv-BN-ReLU6, then a 1x1 convolution with bias (SSDLite's prediction block)."""
  features: int
  unit: Any

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.unit(x.shape[-1], 3, groups=x.shape[-1], name="depthwise")(x, train)
    return Conv(self.features, (1, 1), kernel_init=ssdlite_init, dtype=self.unit.keywords["dtype"],
                param_dtype=self.unit.keywords["param_dtype"], name="pointwise")(x)


class SSDLiteHead(nn.Module):
  num_columns: int
  num_anchors: Sequence[int]
  unit: Any

  @nn.compact
  def __call__(self, features, train: bool = False):
    return _flatten([SSDLitePrediction(a * self.num_columns, self.unit, name=f"level{k}")(x, train)
                     for k, (x, a) in enumerate(zip(features, self.num_anchors))], self.num_columns)


class VGGExtra(nn.Module):
  """1x1 conv-ReLU to `reduce` channels, then a k x k conv-ReLU (stride, padding) to `features`."""
  reduce: int
  features: int
  kernel_size: int
  strides: int
  padding: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(Conv, kernel_init=xavier_init, dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.relu(conv(self.reduce, (1, 1), name="conv1")(x))
    k = self.kernel_size
    return nn.relu(conv(self.features, (k, k), self.strides, padding=self.padding, name="conv2")(x))


class SSDLiteExtra(nn.Module):
  """1x1 conv to features / 2, 3x3/2 depthwise, 1x1 conv to features (conv-BN-ReLU6 units)."""
  features: int
  unit: Any

  @nn.compact
  def __call__(self, x, train: bool = False):
    mid = self.features // 2
    x = self.unit(mid, 1, name="reduce")(x, train)
    x = self.unit(mid, 3, 2, groups=mid, name="depthwise")(x, train)
    return self.unit(self.features, 1, name="expand")(x, train)


class SSD300VGG16(_SSDMixin, nn.Module):
  """torchvision's ssd300_vgg16 (see module doc)."""
  num_classes: int = 91
  score_thresh: float = 0.01
  nms_thresh: float = 0.45
  detections_per_img: int = 200
  topk_candidates: int = 400
  iou_thresh: float = 0.5
  positive_fraction: float = 0.25
  aspect_ratios: Sequence[Sequence[float]] = SSD300_ASPECT_RATIOS
  anchor_scales: Sequence[float] = SSD300_SCALES
  anchor_steps: Optional[Sequence[int]] = SSD300_STEPS
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    self._check_detector_fields()
    levels = 2 + len(SSD300_EXTRAS)
    if len(self.aspect_ratios) != levels or (self.anchor_steps is not None and len(self.anchor_steps) != levels):
      raise UserError(f"ssd300_vgg16 has {levels} maps: aspect_ratios and anchor_steps need {levels} entries, "
                      f"got {len(self.aspect_ratios)} and {len(self.anchor_steps or ())}")
    if len(self.anchor_scales) != levels + 1:
      raise UserError(f"anchor_scales needs {levels + 1} values for {levels} maps, got {len(self.anchor_scales)}")
    super().__post_init__()

  def anchor_generator(self) -> DefaultBoxGenerator:
    return DefaultBoxGenerator(self.aspect_ratios, scales=self.anchor_scales, steps=self.anchor_steps)

  def feature_shapes(self, image_size):
    """(height, width) of the six maps for an input of `image_size`."""
    shapes = []
    for size in image_size:
      size = -(-(size // 4) // 2)  # pools 1, 2 (floor) and the ceil-mode pool 3: conv4_3
      sizes = [size, size // 2]  # pool 4: fc7 (pool 5 is 3x3/1)
      for _, _, k, s, p in SSD300_EXTRAS:
        sizes.append((sizes[-1] + 2 * p - k) // s + 1)
      shapes.append(sizes)
    if min(min(s) for s in shapes) < 1:
      raise UserError(f"ssd300_vgg16 needs inputs of at least 268x268 pixels (its unpadded extra layers), "
                      f"got {image_size[0]}x{image_size[1]}")
    return list(zip(*shapes))

  @nn.compact
  def __call__(self, x, train: bool = False) -> Dict[str, jax.Array]:
    self.feature_shapes(x.shape[1:3])
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    trunk = VGG(stage_sizes=CONFIGS[16], ceil_mode_blocks=(3,), return_features=True, name="backbone",
                **dtypes)(x, train)
    conv4_3 = trunk["stage4"]
    norm = jnp.sqrt(jnp.sum(jnp.square(conv4_3.astype(jnp.float32)), axis=-1, keepdims=True))
    scale = self.param("scale_weight", nn.initializers.constant(20.0), (conv4_3.shape[-1],), self.param_dtype)
    features = [(scale * conv4_3 / jnp.maximum(norm, 1e-12)).astype(self.dtype)]
    y = max_pool(trunk["stage5"], 3, 1, padding=1)
    y = nn.relu(Conv(1024, (3, 3), padding=6, kernel_dilation=6, kernel_init=xavier_init, name="fc6", **dtypes)(y))
    y = nn.relu(Conv(1024, (1, 1), kernel_init=xavier_init, name="fc7", **dtypes)(y))
    features.append(y)
    for i, spec in enumerate(SSD300_EXTRAS, start=1):
      y = VGGExtra(*spec, name=f"extra{i}", **dtypes)(y)
      features.append(y)
    num_anchors = self.anchor_generator().num_anchors_per_location()
    return {"cls_logits": SSDHead(self.num_classes, num_anchors, name="classification_head", **dtypes)(features),
            "bbox_regression": SSDHead(4, num_anchors, name="regression_head", **dtypes)(features)}


class SSDLite320MobileNetV3(_SSDMixin, nn.Module):
  """torchvision's ssdlite320_mobilenet_v3_large (see module doc)."""
  num_classes: int = 91
  score_thresh: float = 0.001
  nms_thresh: float = 0.55
  detections_per_img: int = 300
  topk_candidates: int = 300
  iou_thresh: float = 0.5
  positive_fraction: float = 0.25
  width_mult: float = 1.0
  reduced_tail: bool = True
  extra_width_mult: float = 1.0
  num_extra_blocks: int = 4
  min_ratio: float = 0.2
  max_ratio: float = 0.95
  aspect_ratios: Optional[Sequence[Sequence[float]]] = None  # None: (2, 3) on every map
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    self._check_detector_fields()
    if self.num_extra_blocks not in range(len(SSDLITE_EXTRA_DEPTHS) + 1):
      raise UserError(f"num_extra_blocks={self.num_extra_blocks} must be in 0..{len(SSDLITE_EXTRA_DEPTHS)}")
    if not self.extra_width_mult > 0:
      raise UserError(f"extra_width_mult={self.extra_width_mult} must be positive")
    if self.aspect_ratios is not None and len(self.aspect_ratios) != 2 + self.num_extra_blocks:
      raise UserError(f"aspect_ratios needs one tuple per map ({2 + self.num_extra_blocks}), "
                      f"got {len(self.aspect_ratios)}")
    if not 0.0 < self.min_ratio <= self.max_ratio:
      raise UserError(f"min_ratio={self.min_ratio} and max_ratio={self.max_ratio} need 0 < min_ratio <= max_ratio")
    super().__post_init__()

  def anchor_generator(self) -> DefaultBoxGenerator:
    ratios = self.aspect_ratios or ((2, 3),) * (2 + self.num_extra_blocks)
    return DefaultBoxGenerator(ratios, min_ratio=self.min_ratio, max_ratio=self.max_ratio)

  def feature_shapes(self, image_size):
    """(height, width) of the maps: strides 16 and 32, then one halving per extra block."""
    shapes = []
    for size in image_size:
      for _ in range(4):
        size = _halve(size)
      sizes = [size]
      for _ in range(1 + self.num_extra_blocks):
        sizes.append(_halve(sizes[-1]))
      shapes.append(sizes)
    return list(zip(*shapes))

  @nn.compact
  def __call__(self, x, train: bool = False) -> Dict[str, jax.Array]:
    unit = functools.partial(ConvBNAct, activation=nn.relu6, bn_momentum=0.97, bn_epsilon=1e-3,
                             bn_axis_name=self.bn_axis_name, kernel_init=ssdlite_init, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    trunk = MobileNetV3(arch="large", width_mult=self.width_mult, reduced_tail=self.reduced_tail,
                        bn_momentum=0.97, kernel_init=ssdlite_init, return_features=True,
                        bn_axis_name=self.bn_axis_name, dtype=self.dtype, param_dtype=self.param_dtype,
                        name="backbone")(x, train)
    features = [trunk["tail_expand"], trunk["high"]]
    y = trunk["high"]
    for i, depth in enumerate(SSDLITE_EXTRA_DEPTHS[:self.num_extra_blocks], start=1):
      depth = max(16, int(depth * self.extra_width_mult))
      y = SSDLiteExtra(depth, unit, name=f"extra{i}")(y, train)
      features.append(y)
    num_anchors = self.anchor_generator().num_anchors_per_location()
    return {"cls_logits": SSDLiteHead(self.num_classes, num_anchors, unit, name="classification_head")(features,
                                                                                                       train),
            "bbox_regression": SSDLiteHead(4, num_anchors, unit, name="regression_head")(features, train)}


register_model("ssd300_vgg16")(SSD300VGG16)
register_model("ssdlite320_mobilenet_v3_large")(SSDLite320MobileNetV3)
