"""PyTorch DETR as facebookresearch/detr builds it, for `torch_detection_reference.py --model=detr_resnet50`.

Written from the official structure (not copied): torchvision's ResNet-50 with FrozenBatchNorm2d (the whole
backbone trained, as jaxcnn's bench trains every parameter), 1x1 input projection, sine position encoding,
post-norm nn.MultiheadAttention transformer 6 + 6 layers (d 256, 8 heads, FFN 2048, dropout 0.1), 100
queries, class and 3-layer box heads on every decoder layer; the official HungarianMatcher (scipy on the
host, per decoder layer) and SetCriterion (CE with eos_coef 0.1, L1 x5, GIoU x2, aux losses). The model
takes torchvision-style inputs (a list of [3, H, W] images, targets with xyxy pixel boxes and labels 1..K)
and returns the weighted loss dict, so the detection reference times it like a torchvision detector.
"""
import math

import torch
import torch.nn.functional as F
import torchvision
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d


class EncoderLayer(nn.Module):
  def __init__(self, d, heads, ffn, dropout):
    super().__init__()
    self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout)
    self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
    self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
    self.dropout = nn.Dropout(dropout)

  def forward(self, src, pos):
    q = src + pos
    src = self.norm1(src + self.dropout(self.self_attn(q, q, value=src)[0]))
    return self.norm2(src + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(src))))))


class DecoderLayer(nn.Module):
  def __init__(self, d, heads, ffn, dropout):
    super().__init__()
    self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout)
    self.multihead_attn = nn.MultiheadAttention(d, heads, dropout=dropout)
    self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
    self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
    self.dropout = nn.Dropout(dropout)

  def forward(self, tgt, memory, pos, query_pos):
    q = tgt + query_pos
    tgt = self.norm1(tgt + self.dropout(self.self_attn(q, q, value=tgt)[0]))
    tgt = self.norm2(tgt + self.dropout(self.multihead_attn(tgt + query_pos, memory + pos, value=memory)[0]))
    return self.norm3(tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


def sine_position(h, w, num_pos_feats, temperature=10000, scale=2 * math.pi):
  """PositionEmbeddingSine(normalize=True) of an unpadded [h, w] map -> [h * w, 1, 2 F]."""
  y = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w)
  x = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w)
  y, x = y / (h + 1e-6) * scale, x / (w + 1e-6) * scale
  dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
  dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
  px, py = x[..., None] / dim_t, y[..., None] / dim_t
  px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=3).flatten(2)
  py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=3).flatten(2)
  return torch.cat((py, px), dim=2).flatten(0, 1)[:, None]


def cxcywh_to_xyxy(b):
  cx, cy, w, h = b.unbind(-1)
  return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def generalized_box_iou(b1, b2):
  area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
  area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
  wh = (torch.min(b1[:, None, 2:], b2[:, 2:]) - torch.max(b1[:, None, :2], b2[:, :2])).clamp(min=0)
  inter = wh[..., 0] * wh[..., 1]
  union = area1[:, None] + area2 - inter
  wh = (torch.max(b1[:, None, 2:], b2[:, 2:]) - torch.min(b1[:, None, :2], b2[:, :2])).clamp(min=0)
  area = wh[..., 0] * wh[..., 1]
  return inter / union - (area - union) / area


class DETR(nn.Module):
  def __init__(self, num_classes=91, d=256, heads=8, layers=6, ffn=2048, queries=100, dropout=0.1):
    super().__init__()
    resnet = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    self.backbone = nn.ModuleList([nn.Module()])
    self.backbone[0].body = IntermediateLayerGetter(resnet, return_layers={"layer4": "0"})
    self.encoder = nn.ModuleList(EncoderLayer(d, heads, ffn, dropout) for _ in range(layers))
    self.decoder = nn.ModuleList(DecoderLayer(d, heads, ffn, dropout) for _ in range(layers))
    self.decoder_norm = nn.LayerNorm(d)
    for module in (self.encoder, self.decoder):
      for p in module.parameters():
        if p.dim() > 1:
          nn.init.xavier_uniform_(p)
    self.input_proj = nn.Conv2d(2048, d, kernel_size=1)
    self.query_embed = nn.Embedding(queries, d)
    self.class_embed = nn.Linear(d, num_classes + 1)
    self.bbox_embed = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 4)])
    self.num_classes = num_classes
    self.transform = None

  def heads(self, images):
    src = self.input_proj(self.backbone[0].body(images)["0"])
    b, d, h, w = src.shape
    memory, pos = src.flatten(2).permute(2, 0, 1), sine_position(h, w, d // 2)
    for layer in self.encoder:
      memory = layer(memory, pos)
    query_pos = self.query_embed.weight[:, None].repeat(1, b, 1)
    tgt, hs = torch.zeros_like(query_pos), []
    for layer in self.decoder:
      tgt = layer(tgt, memory, pos, query_pos)
      hs.append(self.decoder_norm(tgt))
    hs = torch.stack(hs).transpose(1, 2)
    boxes = F.relu(self.bbox_embed[1](F.relu(self.bbox_embed[0](hs))))
    return self.class_embed(hs), self.bbox_embed[2](boxes).sigmoid()

  def forward(self, images, targets):
    images, targets = self.transform(images, targets)
    images = images.tensors
    h, w = images.shape[-2:]
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    gts = []
    for t in targets:
      b = t["boxes"]
      cxcywh = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], -1)
      gts.append({"boxes": cxcywh / scale, "labels": t["labels"]})
    logits, boxes = self.heads(images)
    return set_criterion(logits, boxes, gts, self.num_classes)


@torch.no_grad()
def hungarian_matcher(logits, boxes, targets, costs=(1.0, 5.0, 2.0)):
  bs, nq = logits.shape[:2]
  prob, out = logits.flatten(0, 1).softmax(-1), boxes.flatten(0, 1)
  ids = torch.cat([t["labels"] for t in targets])
  tgt = torch.cat([t["boxes"] for t in targets])
  c = (costs[1] * torch.cdist(out, tgt, p=1) - costs[0] * prob[:, ids]
       - costs[2] * generalized_box_iou(cxcywh_to_xyxy(out), cxcywh_to_xyxy(tgt)))
  c = c.view(bs, nq, -1).cpu()
  sizes = [len(t["boxes"]) for t in targets]
  return [tuple(torch.as_tensor(a, dtype=torch.int64) for a in linear_sum_assignment(part[i]))
          for i, part in enumerate(c.split(sizes, -1))]


def set_criterion(all_logits, all_boxes, targets, num_classes, eos_coef=0.1):
  """Weighted loss dict over every decoder layer (loss_ce, loss_bbox, loss_giou, ..._i)."""
  weight = torch.ones(num_classes + 1)
  weight[-1] = eos_coef
  num_boxes = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
  losses = {}
  for layer, (logits, boxes) in enumerate(zip(all_logits, all_boxes)):
    indices = hungarian_matcher(logits, boxes, targets)
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64)
    classes[batch_idx, src_idx] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
    src = boxes[batch_idx, src_idx]
    tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
    giou = torch.diag(generalized_box_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt)))
    suffix = "" if layer == len(all_logits) - 1 else f"_{layer}"
    losses["loss_ce" + suffix] = F.cross_entropy(logits.transpose(1, 2), classes, weight)
    losses["loss_bbox" + suffix] = 5 * F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
    losses["loss_giou" + suffix] = 2 * (1 - giou).sum() / num_boxes
  return losses


def detr_resnet50(weights=None, weights_backbone=None, num_classes=91):
  """torchvision-style factory (no weights): `num_classes` as the official (largest label + 1)."""
  del weights, weights_backbone
  return DETR(num_classes=num_classes)
