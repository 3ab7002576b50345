"""DETR (Carion et al. 2020, "End-to-End Object Detection with Transformers") as facebookresearch/detr builds it.

Model (official `models/detr.py`, `transformer.py`, `position_encoding.py`, `backbone.py`):
  backbone     the registered ResNet `backbone_name` with `return_features=True` (exactly the classification
               model's variables minus `fc`, so ImageNet weights load into `backbone/`); its last stage
               (stride 32; 16 with `dilation=True`, the official DC5) feeds the transformer. The official
               backbone uses FrozenBatchNorm2d: `frozen_bn=True` (default) runs every backbone BN in
               inference mode, also in training (statistics never updated).
  input_proj   1x1 conv from the backbone's channels to `d_model` (256).
  position     sine encoding of the feature map (normalize=True, scale 2 pi, temperature 10000,
               d_model / 2 features for y then x), computed from the padding mask (cumulative sums of
               the unpadded pixels), static when no mask is given.
  transformer  post-norm encoder (6 layers) and decoder (6 layers): 8 heads, FFN 2048 with ReLU, dropout
               0.1 (attention weights and the three residual branches), LayerNorm eps 1e-5; the
               position encoding is added to the queries and keys of every attention (not the values),
               the learned query embedding (`num_queries` 100) to the decoder's queries; the decoder
               starts from zeros, its final LayerNorm is applied to every layer's output
               (return_intermediate). No final encoder LayerNorm (the official post-norm model has none).
  heads        `class_embed` Linear(d_model, num_classes + 1) (the last column is "no object"),
               `bbox_embed` 3-layer MLP (ReLU) to 4 numbers, sigmoid: (cx, cy, w, h) in [0, 1] of the
               image. Both on every decoder layer.
`__call__(x, train=False, mask=None)` returns {'pred_logits' [B, Q, num_classes + 1], 'pred_boxes' [B, Q, 4]}
from the last decoder layer and, with `aux_loss=True` (default, the official training setting),
'aux_outputs': a list of num_decoder_layers - 1 dicts of the same two keys, first layer first. `mask`
(optional, bool [B, H, W], True on padded pixels: the official NestedTensor mask) is downsampled to the
feature map by nearest neighbour as the official `F.interpolate`, and masks the keys of every attention
over the image and the position encoding. Without it every pixel is real. The detection task gives it
(`uses_padding_mask`): batches padded by `data.resize=fit` (bottom/right, as the official NestedTensor)
get the mask of each image's unpadded (h, w), which the task derives from the batch's `source_hw`, and
the loss and `postprocess` take those per-image sizes (targets['image_hw'] / image_size [B, 2]) as the
official code normalises targets by each image's size and scales boxes by its `target_sizes`.

Parameters (exact, checked in tests/models/test_detr.py against a PyTorch model built as the official):
  detr_resnet50   41,524,768 official trainable-structure parameters (`model.parameters()`), plus 53,120
                  backbone BN scales/biases that the official FrozenBatchNorm2d keeps as buffers and this
                  model keeps as parameters (the classification tree): 41,577,888 here.
  detr_resnet101  60,464,672 official, 60,570,016 here (105,344 BN affines).
Names follow the official state dict: transformer/encoder/layers_i/{self_attn, linear1, linear2, norm1,
norm2}, transformer/decoder/layers_i/{self_attn, multihead_attn, linear1, linear2, norm1..3},
transformer/decoder/norm, input_proj, query_embed, class_embed, bbox_embed/layers_{0,1,2}; an attention
holds torch's fused `in_proj_kernel` [d, 3 d] (q, k, v columns; in_proj_weight transposed), `in_proj_bias`
and `out_proj`. `jaxcnn.convert.torch_to_flax('detr_resnet50', state_dict)` maps the official checkpoint.

Labels: the official COCO model has num_classes = 91 (the largest category id + 1; id 0 is never a
target) and 92 logits, the last "no object". The detection task builds the model with num_classes = K + 1
and gives labels 1..K (dataset class c -> c + 1), so the logits are [unused 0, classes 1..K, no object]
exactly as the official COCO layout, and an official checkpoint's labels are COCO's category ids.

Loss (`detection_loss`, official SetCriterion with HungarianMatcher): per decoder layer, the cost
cost_class * (-softmax prob of the target class) + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU) (1, 5, 2)
is solved exactly by `jaxcnn.ops.hungarian_match` (scipy on the host through one `jax.pure_callback`
for all layers and images: the one host round trip of the training step; padded targets are dropped
before solving). Then cross-entropy over all queries with the unmatched ones as "no object", weighted
1 per class and `eos_coef` (0.1) for "no object", normalised by the sum of the weights (torch's weighted
mean); L1 of the matched (cx, cy, w, h) and 1 - GIoU of the matched boxes, each summed and divided by
the number of valid target boxes of the batch (at least 1). Targets are the contract's xyxy pixels,
converted to normalised cxcywh as the official data transform does. Every decoder layer contributes
(aux loss) with weights 1, `bbox_loss_coef` (5), `giou_loss_coef` (2). Metrics 'train/loss_ce',
'train/loss_bbox', 'train/loss_giou' are the weighted sums over layers, so they add up to the loss (the
official weighted sum of its loss dict); 'train/class_error' is the official log's 100 - top-1 accuracy (%)
of the last layer's matched queries. With `axis_name` (legacy pmap path) the box count and the
cross-entropy weight sum are psum-ed and divided by the device count, so the mean over devices is the
loss of the global batch, as under jit (the official DDP code averages the box count over processes but
its cross-entropy is a per-process mean). An image without boxes is all "no object".

Post-processing (`postprocess`, official PostProcess): softmax, "no object" dropped, per query the best
class and its probability; boxes to xyxy pixels of the model input, clipped to the image (the official
code does not clip); the D = `detections_per_img` (default: all `num_queries`) best queries by score,
sorted by decreasing score, no NMS; valid = score > `score_thresh` (default 0: every query). Column 0 is
a class no target uses; `keep_background_class=False` (default) keeps it from winning so labels are
1..num_classes-1, True lets it compete as the official code does.

Training as the official recipe: AdamW lr 1e-4, backbone lr 1e-5, weight decay 1e-4, gradient clipping
0.1, 300/500 epochs; the official code trains only layer2-4 of the backbone with frozen BN affines,
which `jaxcnn.models.retinanet.backbone_freeze_pattern(3, frozen_bn=True)` writes as a `finetune.freeze`
regex (conv1, bn1, layer1 and every backbone BN).

Small-model fields for offline runs (official defaults): `backbone_name` ('resnet18' ... 'resnet152'),
`d_model`, `num_heads`, `num_encoder_layers`, `num_decoder_layers`, `dim_feedforward`, `dropout`,
`num_queries`, `aux_loss`, `dilation`, `frozen_bn`, and `backbone_stage` ('stage4', the official; an
earlier stage ends the backbone there, for small objects: 'stage2' is stride 8, 4 with `dilation`).
"""
import math
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError, unknown
from jaxcnn.layers import Conv, LayerNorm
from jaxcnn.layers.attention import dot_product_attention_weights
from jaxcnn.ops import box_convert, clip_boxes_to_image, generalized_box_iou
from jaxcnn.ops.matching import hungarian_match
from jaxcnn.registry import create_model, model_option_defaults, register_model

DETR_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
BACKBONE_STAGES = ("stage1", "stage2", "stage3", "stage4")
LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which the official transformer uses
xavier = nn.initializers.xavier_uniform()
# torch.nn.Linear / Conv2d defaults: weight and bias uniform(+-1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _dense(features: int, fan_in: int, name: str, module, kernel_init=xavier) -> nn.Dense:
  return nn.Dense(features, kernel_init=kernel_init, bias_init=torch_bias_init(fan_in), dtype=module.dtype,
                  param_dtype=module.param_dtype, name=name)


def _tokens(layer, x):
  """A Dense on [..., d] run on the flattened tokens (XLA:CPU transposes a [B, N, d] input per gradient)."""
  y = layer(x.reshape(-1, x.shape[-1]))
  return y.reshape(x.shape[:-1] + (y.shape[-1],))


def downsample_mask(mask, size) -> jax.Array:
  """bool [B, H, W] -> [B, h, w] by nearest neighbour, as torch's F.interpolate(mode='nearest')."""
  out = []
  for axis, n_out in ((1, size[0]), (2, size[1])):
    n_in = mask.shape[axis]
    scale = np.float32(n_in) / np.float32(n_out)  # float32 arithmetic as torch's CPU kernel
    out.append(np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1))
  return jnp.asarray(mask, bool)[:, out[0]][:, :, out[1]]


def sine_position_encoding(not_mask, num_pos_feats: int, temperature: float = 10000.0,
                           scale: float = 2 * math.pi) -> jax.Array:
  """Official PositionEmbeddingSine(normalize=True): float [B, h, w] of 1 on real pixels -> [B, h, w, 2 F]."""
  not_mask = jnp.asarray(not_mask, jnp.float32)
  y_embed = jnp.cumsum(not_mask, axis=1)
  x_embed = jnp.cumsum(not_mask, axis=2)
  eps = 1e-6
  y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
  x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
  dim_t = np.arange(num_pos_feats, dtype=np.float32)
  dim_t = jnp.float32(temperature) ** (2 * (dim_t // 2) / num_pos_feats)

  def encode(embed):
    pos = embed[..., None] / dim_t
    both = jnp.stack([jnp.sin(pos[..., 0::2]), jnp.cos(pos[..., 1::2])], axis=-1)
    return both.reshape(pos.shape)

  return jnp.concatenate([encode(y_embed), encode(x_embed)], axis=-1)


class MultiheadAttention(nn.Module):
  """torch.nn.MultiheadAttention (batch-first here): fused in-projection, scaled dot product, out_proj.

  query [B, Nq, d], key [B, Nk, d], value [B, Nk, d]; key_padding_mask bool [B, Nk] True on keys to ignore
  (their logits are -inf, as torch). Dropout on the attention weights in training, as torch's `dropout`.
  """
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query, key, value, key_padding_mask=None, train: bool = False):
    batch, nq, d = query.shape
    nk = key.shape[1]
    if d % self.num_heads:
      raise UserError(f"d_model={d} must be divisible by num_heads={self.num_heads}")
    head_dim = d // self.num_heads
    kernel = self.param("in_proj_kernel", xavier, (d, 3 * d), self.param_dtype).astype(self.dtype)
    bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,), self.param_dtype).astype(self.dtype)

    def project(x, part, length):
      y = x.astype(self.dtype).reshape(-1, d) @ kernel[:, part * d:(part + 1) * d] + bias[part * d:(part + 1) * d]
      return y.reshape(batch, length, self.num_heads, head_dim).transpose(0, 2, 1, 3)

    q, k, v = project(query, 0, nq), project(key, 1, nk), project(value, 2, nk)
    logit_bias = None
    if key_padding_mask is not None:
      logit_bias = jnp.where(key_padding_mask, -jnp.inf, 0.0)[:, None, None, :]
    weights = dot_product_attention_weights(q, k, logit_bias)
    if train and self.dropout_rate > 0:
      weights = nn.Dropout(self.dropout_rate, deterministic=False)(weights)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v).transpose(0, 2, 1, 3)
    out = nn.Dense(d, kernel_init=xavier, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="out_proj")(out.reshape(batch * nq, d))
    return out.reshape(batch, nq, d)


class EncoderLayer(nn.Module):
  """Post-norm encoder layer: x = LN(x + SA(x + pos, x + pos, x)); x = LN(x + FFN(x))."""
  d_model: int
  num_heads: int
  dim_feedforward: int
  dropout: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.self_attn = MultiheadAttention(self.num_heads, self.dropout, self.dtype, self.param_dtype)
    self.linear1 = _dense(self.dim_feedforward, self.d_model, None, self)
    self.linear2 = _dense(self.d_model, self.dim_feedforward, None, self)
    self.norm1 = LayerNorm(epsilon=LN_EPS, param_dtype=self.param_dtype)
    self.norm2 = LayerNorm(epsilon=LN_EPS, param_dtype=self.param_dtype)
    self.drop = nn.Dropout(self.dropout)

  def __call__(self, src, pos, key_padding_mask, train: bool):
    q = src + pos
    src = self.norm1(src + self.drop(self.self_attn(q, q, src, key_padding_mask, train), deterministic=not train))
    hidden = self.drop(nn.relu(_tokens(self.linear1, src)), deterministic=not train)
    return self.norm2(src + self.drop(_tokens(self.linear2, hidden), deterministic=not train))


class DecoderLayer(nn.Module):
  """Post-norm decoder layer: self-attention (+ query_pos), cross-attention to the memory (+ pos), FFN."""
  d_model: int
  num_heads: int
  dim_feedforward: int
  dropout: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.self_attn = MultiheadAttention(self.num_heads, self.dropout, self.dtype, self.param_dtype)
    self.multihead_attn = MultiheadAttention(self.num_heads, self.dropout, self.dtype, self.param_dtype)
    self.linear1 = _dense(self.dim_feedforward, self.d_model, None, self)
    self.linear2 = _dense(self.d_model, self.dim_feedforward, None, self)
    self.norm1 = LayerNorm(epsilon=LN_EPS, param_dtype=self.param_dtype)
    self.norm2 = LayerNorm(epsilon=LN_EPS, param_dtype=self.param_dtype)
    self.norm3 = LayerNorm(epsilon=LN_EPS, param_dtype=self.param_dtype)
    self.drop = nn.Dropout(self.dropout)

  def __call__(self, tgt, memory, pos, query_pos, key_padding_mask, train: bool):
    drop = lambda x: self.drop(x, deterministic=not train)
    q = tgt + query_pos
    tgt = self.norm1(tgt + drop(self.self_attn(q, q, tgt, None, train)))
    attended = self.multihead_attn(tgt + query_pos, memory + pos, memory, key_padding_mask, train)
    tgt = self.norm2(tgt + drop(attended))
    hidden = drop(nn.relu(_tokens(self.linear1, tgt)))
    return self.norm3(tgt + drop(_tokens(self.linear2, hidden)))


class TransformerEncoder(nn.Module):
  num_layers: int
  layer: Dict[str, Any]

  def setup(self):
    self.layers = [EncoderLayer(**self.layer) for _ in range(self.num_layers)]

  def __call__(self, src, pos, key_padding_mask, train: bool):
    for layer in self.layers:
      src = layer(src, pos, key_padding_mask, train)
    return src


class TransformerDecoder(nn.Module):
  """The decoder layers and the final LayerNorm, applied to every layer's output (return_intermediate)."""
  num_layers: int
  layer: Dict[str, Any]
  return_intermediate: bool = True

  def setup(self):
    self.layers = [DecoderLayer(**self.layer) for _ in range(self.num_layers)]
    self.norm = LayerNorm(epsilon=LN_EPS, param_dtype=self.layer["param_dtype"])

  def __call__(self, tgt, memory, pos, query_pos, key_padding_mask, train: bool):
    outputs = []
    for i, layer in enumerate(self.layers):
      tgt = layer(tgt, memory, pos, query_pos, key_padding_mask, train)
      if self.return_intermediate or i == self.num_layers - 1:
        outputs.append(self.norm(tgt))
    return jnp.stack(outputs)  # [layers (or 1), B, Q, d]


class Transformer(nn.Module):
  d_model: int
  num_heads: int
  num_encoder_layers: int
  num_decoder_layers: int
  dim_feedforward: int
  dropout: float
  return_intermediate: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    layer = dict(d_model=self.d_model, num_heads=self.num_heads, dim_feedforward=self.dim_feedforward,
                 dropout=self.dropout, dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = TransformerEncoder(self.num_encoder_layers, layer)
    self.decoder = TransformerDecoder(self.num_decoder_layers, layer, self.return_intermediate)

  def __call__(self, src, pos, query_embed, key_padding_mask, train: bool):
    """src, pos [B, N, d]; query_embed [Q, d] -> decoder outputs [layers, B, Q, d]."""
    memory = self.encoder(src, pos, key_padding_mask, train)
    query_pos = jnp.broadcast_to(query_embed.astype(src.dtype), (src.shape[0],) + query_embed.shape)
    tgt = jnp.zeros_like(query_pos)
    return self.decoder(tgt, memory, pos, query_pos, key_padding_mask, train)


class MLP(nn.Module):
  """The official box head: `num_layers` Linear layers with ReLU between (names layers_0, layers_1, ...)."""
  hidden_dim: int
  output_dim: int
  num_layers: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = _tokens(_dense(self.output_dim if last else self.hidden_dim, fan_in, f"layers_{i}", self,
                         torch_kernel_init), x)
      fan_in = self.hidden_dim
      if not last:
        x = nn.relu(x)
    return x


def _whwh(image_size) -> jax.Array:
  """(W, H, W, H) from an (H, W) pair, or [B, 1, 4] from per-image sizes [B, 2] (the unpadded (h, w))."""
  hw = jnp.asarray(image_size, jnp.float32)
  whwh = jnp.concatenate([hw[..., ::-1], hw[..., ::-1]], axis=-1)
  return whwh if hw.ndim == 1 else whwh[:, None, :]


def _boxes_xyxy_normalised(boxes, image_size):
  """xyxy pixels -> (cx, cy, w, h) / (W, H, W, H), the official data transform's order of operations."""
  return box_convert(boxes, "xyxy", "cxcywh") / _whwh(image_size)


class DETR(nn.Module):
  """DETR detector: ResNet, transformer, set prediction heads (see the module docstring)."""
  uses_padding_mask = True  # the detection task passes `mask` and each image's unpadded size (not a field)
  num_classes: int = 91
  backbone_name: str = "resnet50"
  dilation: bool = False              # official --dilation (DC5): the last stage at stride 16, dilated
  backbone_stage: str = "stage4"      # the stage that feeds the transformer (official: the last, stage4)
  frozen_bn: bool = True              # official FrozenBatchNorm2d: backbone BNs always in inference mode
  d_model: int = 256
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  dim_feedforward: int = 2048
  dropout: float = 0.1
  num_queries: int = 100
  aux_loss: bool = True
  temperature: float = 10000.0
  # matcher costs and loss weights (official set_cost_* / *_loss_coef / eos_coef)
  cost_class: float = 1.0
  cost_bbox: float = 5.0
  cost_giou: float = 2.0
  bbox_loss_coef: float = 5.0
  giou_loss_coef: float = 2.0
  eos_coef: float = 0.1
  detections_per_img: Optional[int] = None   # None: every query
  score_thresh: float = 0.0
  keep_background_class: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None

  def __post_init__(self):
    if self.backbone_name not in DETR_BACKBONES:
      raise unknown("backbone_name", self.backbone_name, DETR_BACKBONES)
    if self.backbone_stage not in BACKBONE_STAGES:
      raise unknown("backbone_stage", self.backbone_stage, BACKBONE_STAGES)
    if self.dilation and self.backbone_stage == "stage1":
      raise UserError("dilation=True needs backbone_stage 'stage2'..'stage4' (stage1 has no stride to replace)")
    if self.num_classes < 2:
      raise UserError(f"num_classes={self.num_classes} must be >= 2 (the largest label + 1; 0 is never a label)")
    for field in ("d_model", "num_heads", "num_encoder_layers", "num_decoder_layers", "dim_feedforward",
                  "num_queries"):
      if int(getattr(self, field)) < 1:
        raise UserError(f"{field}={getattr(self, field)} must be >= 1")
    if self.d_model % self.num_heads or self.d_model % 2:
      raise UserError(f"d_model={self.d_model} must be even and divisible by num_heads={self.num_heads}")
    if not 0 <= self.dropout < 1:
      raise UserError(f"dropout={self.dropout} must be in [0, 1)")
    if self.detections_per_img is not None and not 1 <= self.detections_per_img <= self.num_queries:
      raise UserError(f"detections_per_img={self.detections_per_img} must be in 1..num_queries={self.num_queries}")
    if min(self.cost_class, self.cost_bbox, self.cost_giou) < 0 or not (self.cost_class or self.cost_bbox
                                                                        or self.cost_giou):
      raise UserError("cost_class, cost_bbox and cost_giou must be >= 0 and not all 0")
    if not 0 < self.eos_coef <= 1:
      raise UserError(f"eos_coef={self.eos_coef} must be in (0, 1]")
    super().__post_init__()

  def _options(self) -> dict:
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)

  def setup(self):
    stage = BACKBONE_STAGES.index(self.backbone_stage)
    extra = {}
    if stage < 3:  # an earlier stage: the backbone ends there (no parameters for the stages after it)
      extra["stage_sizes"] = tuple(model_option_defaults(self.backbone_name)["stage_sizes"])[:stage + 1]
    if self.dilation:  # the official DC5: the feeding stage keeps the previous stride, dilated
      extra["replace_stride_with_dilation"] = (False,) * (stage - 1) + (True,)
    self.backbone = create_model(self.backbone_name, return_features=True, bn_axis_name=self.bn_axis_name,
                                 **extra, **self._options())
    channels = (64 if self.backbone_name in ("resnet18", "resnet34") else 256) * 2 ** stage
    self.input_proj = Conv(self.d_model, (1, 1), kernel_init=torch_kernel_init, bias_init=torch_bias_init(channels),
                           **self._options())
    self.query_embed = self.param("query_embed", nn.initializers.normal(1.0), (self.num_queries, self.d_model),
                                  self.param_dtype)
    self.transformer = Transformer(self.d_model, self.num_heads, self.num_encoder_layers, self.num_decoder_layers,
                                   self.dim_feedforward, self.dropout, return_intermediate=self.aux_loss,
                                   **self._options())
    self.class_embed = _dense(self.num_classes + 1, self.d_model, None, self, torch_kernel_init)
    self.bbox_embed = MLP(self.d_model, 4, 3, **self._options())

  def __call__(self, x, train: bool = False, mask=None) -> Dict[str, Any]:
    src = self.backbone(x, train=train and not self.frozen_bn)[self.backbone_stage]
    batch, h, w, _ = src.shape
    if mask is None:
      key_padding_mask, not_mask = None, jnp.ones((1, h, w), jnp.float32)
    else:
      key_padding_mask = downsample_mask(mask, (h, w))
      not_mask = (~key_padding_mask).astype(jnp.float32)
      key_padding_mask = key_padding_mask.reshape(batch, h * w)
    pos = sine_position_encoding(not_mask, self.d_model // 2, self.temperature).astype(self.dtype)
    pos = jnp.broadcast_to(pos, (batch, h, w, self.d_model)).reshape(batch, h * w, self.d_model)
    src = self.input_proj(src).reshape(batch, h * w, self.d_model)
    hs = self.transformer(src, pos, self.query_embed, key_padding_mask, train)
    logits = _tokens(self.class_embed, hs)
    boxes = jax.nn.sigmoid(self.bbox_embed(hs))
    out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
    if self.aux_loss:
      out["aux_outputs"] = [{"pred_logits": logits[i], "pred_boxes": boxes[i]} for i in range(len(hs) - 1)]
    return out

  # --- loss ----------------------------------------------------------------------------------------------
  @staticmethod
  def layer_outputs(outputs):
    """(logits [L, B, Q, C + 1], boxes [L, B, Q, 4]) float32: the auxiliary layers, then the last."""
    layers = list(outputs.get("aux_outputs", ())) + [outputs]
    logits = jnp.stack([jnp.asarray(o["pred_logits"], jnp.float32) for o in layers])
    boxes = jnp.stack([jnp.asarray(o["pred_boxes"], jnp.float32) for o in layers])
    return logits, boxes

  def matching_cost(self, logits, boxes, gt_labels, gt_boxes):
    """The official HungarianMatcher's cost [..., Q, M]: logits [..., Q, C+1], boxes [..., Q, 4] cxcywh,
    gt_labels [..., M], gt_boxes [..., M, 4] normalised cxcywh."""
    prob = jax.nn.softmax(logits, axis=-1)
    index = jnp.broadcast_to(gt_labels[..., None, :], prob.shape[:-1] + gt_labels.shape[-1:])
    cost_class = -jnp.take_along_axis(prob, index, axis=-1)
    cost_bbox = jnp.sum(jnp.abs(boxes[..., :, None, :] - gt_boxes[..., None, :, :]), axis=-1)
    cost_giou = -generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(gt_boxes, "cxcywh", "xyxy"))
    return self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou

  def detection_loss(self, outputs, targets, image_size, axis_name=None):
    """The official SetCriterion (labels + boxes) over every decoder layer (see the module docstring)."""
    logits, boxes = self.layer_outputs(outputs)
    num_layers, _, num_queries, num_logits = logits.shape
    no_object = num_logits - 1
    valid = jnp.asarray(targets["valid"], bool)
    # the official targets are normalised by each image's unpadded size (targets['image_hw'] when given)
    image_size = targets.get("image_hw", image_size)
    # padded slots get a harmless box and label: finite costs (their columns are dropped anyway)
    gt_boxes = jnp.where(valid[..., None], _boxes_xyxy_normalised(jnp.asarray(targets["boxes"], jnp.float32),
                                                                 image_size), jnp.float32(0.5))
    gt_labels = jnp.where(valid, jnp.asarray(targets["labels"], jnp.int32), 0)
    if valid.shape[-1] == 0:
      matches = jnp.full(logits.shape[:3], -1, jnp.int32)
    else:
      cost = self.matching_cost(jax.lax.stop_gradient(logits), jax.lax.stop_gradient(boxes),
                                gt_labels[None], gt_boxes[None])
      matches, _ = hungarian_match(cost, valid[None])     # one host round trip for every layer and image
    matched = matches >= 0
    idx = jnp.maximum(matches, 0)
    if valid.shape[-1] == 0:
      target_labels = jnp.zeros(matches.shape, jnp.int32)
      target_boxes = jnp.full(matches.shape + (4,), 0.5, jnp.float32)
    else:
      target_labels = jnp.take_along_axis(jnp.broadcast_to(gt_labels, (num_layers,) + gt_labels.shape), idx, -1)
      target_boxes = jnp.take_along_axis(jnp.broadcast_to(gt_boxes, (num_layers,) + gt_boxes.shape),
                                         idx[..., None], -2)
    target_classes = jnp.where(matched, target_labels, no_object)

    num_boxes = jnp.sum(valid).astype(jnp.float32)
    log_prob = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_prob, target_classes[..., None], -1)[..., 0]
    weight = jnp.where(target_classes == no_object, jnp.float32(self.eos_coef), 1.0)
    weight_sum = jnp.sum(weight, axis=(1, 2))                                         # [L]
    devices = 1.0
    if axis_name is not None:
      num_boxes = jax.lax.psum(num_boxes, axis_name)
      weight_sum = jax.lax.psum(weight_sum, axis_name)
      devices = jax.lax.psum(1.0, axis_name)
    num_boxes = jnp.maximum(num_boxes, 1.0) / devices
    loss_ce = jnp.sum(weight * nll, axis=(1, 2)) / (weight_sum / devices)            # [L]

    # unmatched queries compare a fixed box with itself: finite, no gradient, masked out
    safe = jnp.float32(0.5)
    pred = jnp.where(matched[..., None], boxes, safe)
    target = jnp.where(matched[..., None], target_boxes, safe)
    l1 = jnp.sum(jnp.abs(pred - target), axis=-1)
    giou = generalized_box_iou(box_convert(pred, "cxcywh", "xyxy")[..., None, :],
                               box_convert(target, "cxcywh", "xyxy")[..., None, :])[..., 0, 0]
    loss_bbox = jnp.sum(jnp.where(matched, l1, 0.0), axis=(1, 2)) / num_boxes
    loss_giou = jnp.sum(jnp.where(matched, 1.0 - giou, 0.0), axis=(1, 2)) / num_boxes
    # the official 'class_error': % of the last layer's matched queries whose top logit is not their class
    correct = jnp.sum(matched[-1] & (jnp.argmax(logits[-1], axis=-1) == target_classes[-1]))
    count = jnp.sum(matched[-1])
    if axis_name is not None:
      correct, count = jax.lax.psum(correct, axis_name), jax.lax.psum(count, axis_name)
    metrics = {"train/loss_ce": jnp.sum(loss_ce), "train/loss_bbox": self.bbox_loss_coef * jnp.sum(loss_bbox),
               "train/loss_giou": self.giou_loss_coef * jnp.sum(loss_giou),
               "train/class_error": 100.0 - 100.0 * correct / jnp.maximum(count, 1)}
    loss = metrics["train/loss_ce"] + metrics["train/loss_bbox"] + metrics["train/loss_giou"]
    return loss, metrics

  # --- inference -----------------------------------------------------------------------------------------
  def postprocess(self, outputs, image_size) -> Dict[str, jax.Array]:
    """The official PostProcess with fixed shapes, sorted by score (see the module docstring)."""
    prob = jax.nn.softmax(jnp.asarray(outputs["pred_logits"], jnp.float32), axis=-1)[..., :-1]
    if not self.keep_background_class:
      prob = prob.at[..., 0].set(-1.0)
    scores, labels = jnp.max(prob, axis=-1), jnp.argmax(prob, axis=-1).astype(jnp.int32)
    boxes = box_convert(jnp.asarray(outputs["pred_boxes"], jnp.float32), "cxcywh", "xyxy")
    if getattr(image_size, "ndim", np.ndim(image_size)) == 2:   # per-image unpadded sizes [B, 2]
      whwh = _whwh(image_size)
      boxes = jnp.clip(boxes * whwh, 0.0, whwh)
    else:
      height, width = image_size
      boxes = clip_boxes_to_image(boxes * jnp.asarray([width, height, width, height], jnp.float32),
                                  (height, width))
    top, order = jax.lax.top_k(scores, self.detections_per_img or scores.shape[-1])
    return {"boxes": jnp.take_along_axis(boxes, order[..., None], axis=1), "scores": top,
            "labels": jnp.take_along_axis(labels, order, axis=1), "valid": top > self.score_thresh}


register_model("detr_resnet50")(DETR)
register_model("detr_resnet101", backbone_name="resnet101")(DETR)
