"""DETR against a PyTorch model built as facebookresearch/detr builds it (written here from the official
structure: torchvision's ResNet with FrozenBatchNorm2d under IntermediateLayerGetter, nn.MultiheadAttention
post-norm transformer, sine position encoding, the heads), its SetCriterion + HungarianMatcher and its
PostProcess; exact parameter counts; converted random weights give the same outputs (eval mode);
one jitted training step through the detection task.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
scipy_optimize = pytest.importorskip("scipy.optimize")

from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torchvision.models._utils import IntermediateLayerGetter  # noqa: E402
from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: E402

from jaxcnn import create_model  # noqa: E402
from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from jaxcnn.utils import abstract_variables, param_count  # noqa: E402

# sum(p.numel() for p in official_detr.parameters()): FrozenBatchNorm2d's affines are buffers there
OFFICIAL_PARAMS = {"detr_resnet50": 41_524_768, "detr_resnet101": 60_464_672}
# the same affines are parameters here (the classification ResNet's tree under backbone/)
BACKBONE_BN_AFFINES = {"detr_resnet50": 53_120, "detr_resnet101": 105_344}
SIZE = (64, 96)
SMALL = dict(backbone_name="resnet18", d_model=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=3,
             dim_feedforward=96, num_queries=12, num_classes=11)


# --- the PyTorch reference, structured as the official code -------------------------------------------------
class TorchEncoderLayer(nn.Module):
  def __init__(self, d, heads, ffn, dropout):
    super().__init__()
    self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout)
    self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
    self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
    self.dropout = nn.Dropout(dropout)

  def forward(self, src, mask, pos):
    q = src + pos
    src = self.norm1(src + self.dropout(self.self_attn(q, q, value=src, key_padding_mask=mask)[0]))
    return self.norm2(src + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(src))))))


class TorchDecoderLayer(nn.Module):
  def __init__(self, d, heads, ffn, dropout):
    super().__init__()
    self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout)
    self.multihead_attn = nn.MultiheadAttention(d, heads, dropout=dropout)
    self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
    self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
    self.dropout = nn.Dropout(dropout)

  def forward(self, tgt, memory, mask, pos, query_pos):
    q = tgt + query_pos
    tgt = self.norm1(tgt + self.dropout(self.self_attn(q, q, value=tgt)[0]))
    att = self.multihead_attn(tgt + query_pos, memory + pos, value=memory, key_padding_mask=mask)[0]
    tgt = self.norm2(tgt + self.dropout(att))
    return self.norm3(tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class TorchStack(nn.Module):
  def __init__(self, layers, norm=None):
    super().__init__()
    self.layers = nn.ModuleList(layers)
    if norm is not None:
      self.norm = norm


class TorchTransformer(nn.Module):
  def __init__(self, d, heads, enc, dec, ffn, dropout):
    super().__init__()
    self.encoder = TorchStack([TorchEncoderLayer(d, heads, ffn, dropout) for _ in range(enc)])
    self.decoder = TorchStack([TorchDecoderLayer(d, heads, ffn, dropout) for _ in range(dec)], nn.LayerNorm(d))
    for p in self.parameters():
      if p.dim() > 1:
        nn.init.xavier_uniform_(p)

  def forward(self, src, mask, query_embed, pos):
    bs, c, h, w = src.shape
    src, pos = src.flatten(2).permute(2, 0, 1), pos.flatten(2).permute(2, 0, 1)
    query_pos = query_embed.unsqueeze(1).repeat(1, bs, 1)
    mask = mask.flatten(1)
    memory = src
    for layer in self.encoder.layers:
      memory = layer(memory, mask, pos)
    out, hs = torch.zeros_like(query_pos), []
    for layer in self.decoder.layers:
      out = layer(out, memory, mask, pos, query_pos)
      hs.append(self.decoder.norm(out))
    return torch.stack(hs).transpose(1, 2)


def torch_sine(mask, num_pos_feats, temperature=10000, scale=2 * math.pi):
  not_mask = ~mask
  y_embed = not_mask.cumsum(1, dtype=torch.float32)
  x_embed = not_mask.cumsum(2, dtype=torch.float32)
  y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * scale
  x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * scale
  dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
  dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
  pos_x, pos_y = x_embed[..., None] / dim_t, y_embed[..., None] / dim_t
  pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
  pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
  return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class TorchBackbone(nn.Module):
  def __init__(self, name, norm_layer=FrozenBatchNorm2d):
    super().__init__()
    resnet = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
    self.body = IntermediateLayerGetter(resnet, return_layers={"layer4": "0"})


class TorchMLP(nn.Module):
  def __init__(self, d, out, n):
    super().__init__()
    self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip([d] * n, [d] * (n - 1) + [out]))

  def forward(self, x):
    for i, layer in enumerate(self.layers):
      x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
    return x


class TorchDETR(nn.Module):
  def __init__(self, backbone_name="resnet50", d_model=256, num_heads=8, num_encoder_layers=6,
               num_decoder_layers=6, dim_feedforward=2048, num_queries=100, num_classes=91, dropout=0.1,
               norm_layer=FrozenBatchNorm2d):
    super().__init__()
    self.backbone = nn.ModuleList([TorchBackbone(backbone_name, norm_layer)])  # the official Joiner's backbone[0]
    self.transformer = TorchTransformer(d_model, num_heads, num_encoder_layers, num_decoder_layers,
                                        dim_feedforward, dropout)
    channels = 512 if backbone_name in ("resnet18", "resnet34") else 2048
    self.input_proj = nn.Conv2d(channels, d_model, kernel_size=1)
    self.query_embed = nn.Embedding(num_queries, d_model)
    self.class_embed = nn.Linear(d_model, num_classes + 1)
    self.bbox_embed = TorchMLP(d_model, 4, 3)

  def forward(self, images, mask=None):
    if mask is None:
      mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool)
    src = self.backbone[0].body(images)["0"]
    mask = F.interpolate(mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
    pos = torch_sine(mask, self.query_embed.weight.shape[1] // 2)
    hs = self.transformer(self.input_proj(src), mask, self.query_embed.weight, pos)
    logits, boxes = self.class_embed(hs), self.bbox_embed(hs).sigmoid()
    return {"pred_logits": logits[-1], "pred_boxes": boxes[-1],
            "aux_outputs": [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]}


def torch_detr(seed=0, size=SIZE, **kwargs):
  """Random official-structure DETR: zero-initialised biases and LayerNorms random, attention in-projections and
  box head x3; random backbone BN affines with statistics measured on a random batch (a BatchNorm2d twin in
  train mode), loaded into FrozenBatchNorm2d."""
  torch.manual_seed(seed)
  twin = TorchDETR(norm_layer=nn.BatchNorm2d, **kwargs)
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in twin.named_parameters():
      if p.ndim == 1 and name.endswith("weight"):
        p.uniform_(0.5, 1.5, generator=g)
      elif name.endswith("bias"):
        p.normal_(0.0, 0.2, generator=g)
      elif name.endswith("in_proj_weight") or name.startswith("bbox_embed"):
        p.mul_(3.0)   # sharper attention and box head: at init the queries' outputs hardly differ
    for m in twin.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.momentum = 1.0
    twin.backbone[0].body.train()
    twin.backbone[0].body(torch.randn(4, 3, *size, generator=g))
    for m in twin.modules():   # as the RetinaNet test: less cancellation in x - mean, the same second moment
      if isinstance(m, nn.BatchNorm2d):
        m.running_var.add_(m.running_mean ** 2)
        m.running_mean.mul_(torch.rand(m.num_features, generator=g))
  model = TorchDETR(**kwargs)
  model.load_state_dict(twin.state_dict())
  return model.eval()


def run_parity(kwargs, size=SIZE, seed=0):
  """Torch and jax outputs (numpy) for one random batch of 2, without and with a padding mask (image 1
  padded on the right and at the bottom); the two jax forwards in one compiled function."""
  model = torch_detr(seed, size, **{k: v for k, v in kwargs.items() if k != "name"})
  images = np.random.default_rng(seed).normal(size=(2, 3) + size).astype(np.float32)
  pixel_mask = np.zeros((2,) + size, bool)
  pixel_mask[1, :, size[1] - 40:] = True
  pixel_mask[1, size[0] - 24:, :] = True
  with torch.no_grad():
    expected = [model(torch.from_numpy(images)), model(torch.from_numpy(images), torch.from_numpy(pixel_mask))]
  name = kwargs.get("name", "detr_resnet50")
  jmodel = create_model(name, keep_background_class=True, **{k: v for k, v in kwargs.items() if k != "name"})
  variables = torch_to_flax(name, model.state_dict())
  both = jax.jit(lambda v, x, m: [jmodel.apply(v, x), jmodel.apply(v, x, mask=m)])
  outputs = both(variables, images.transpose(0, 2, 3, 1), pixel_mask)
  to_np = lambda t: jax.tree.map(lambda a: np.asarray(a.detach().numpy() if hasattr(a, "detach") else a), t)
  return to_np(expected), to_np(outputs)


def assert_outputs_close(expected, outputs, atol=1e-4):
  """Every layer's logits and boxes within atol; the queries' outputs differ far more than the differences."""
  assert len(outputs["aux_outputs"]) == len(expected["aux_outputs"]) > 0
  worst = 0.0
  for exp, out in zip([expected] + expected["aux_outputs"], [outputs] + outputs["aux_outputs"]):
    for key in ("pred_logits", "pred_boxes"):
      assert out[key].shape == exp[key].shape, key
      np.testing.assert_allclose(out[key], exp[key], atol=atol, rtol=0, err_msg=key)
      worst = max(worst, float(np.abs(out[key] - exp[key]).max()))
  spread = float(np.std(expected["pred_logits"], axis=1).mean())   # over the queries
  assert spread > 50 * worst and np.abs(expected["pred_logits"]).max() > 0.5, (spread, worst)
  return worst


def test_parameter_counts_equal_the_official_model():
  """Counts of the PyTorch model built as the official one, and of ours (eval_shape): exactly equal."""
  for name, backbone in (("detr_resnet50", "resnet50"), ("detr_resnet101", "resnet101")):
    with torch.device("meta"):   # shapes only: nothing allocated or initialised
      model = TorchDETR(backbone_name=backbone)
    official = sum(p.numel() for p in model.parameters())
    frozen_affines = sum(m.weight.numel() + m.bias.numel() for m in model.modules()
                         if isinstance(m, FrozenBatchNorm2d))
    assert official == OFFICIAL_PARAMS[name] and frozen_affines == BACKBONE_BN_AFFINES[name], name
    ours = param_count(abstract_variables(create_model(name), (1,) + SIZE + (3,))["params"])
    assert ours == official + frozen_affines, name


def test_small_detr_matches_pytorch_with_and_without_a_pixel_mask():
  (expected, masked), (outputs, masked_out) = run_parity(SMALL)
  assert_outputs_close(expected, outputs)
  assert_outputs_close(masked, masked_out)
  # the mask really changes the padded image's predictions, and only those
  assert np.abs(masked["pred_logits"][1] - expected["pred_logits"][1]).max() > 1e-2
  np.testing.assert_allclose(masked_out["pred_logits"][0], outputs["pred_logits"][0], atol=1e-5)


@pytest.mark.slow
def test_detr_resnet50_matches_pytorch():
  for expected, outputs in zip(*run_parity({"name": "detr_resnet50"})):
    assert_outputs_close(expected, outputs)


# --- loss: the official SetCriterion + HungarianMatcher, written here from its logic -----------------------
def t_box_xyxy(b):
  cx, cy, w, h = b.unbind(-1)
  return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def t_giou(b1, b2):
  area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
  area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
  lt, rb = torch.max(b1[:, None, :2], b2[:, :2]), torch.min(b1[:, None, 2:], b2[:, 2:])
  wh = (rb - lt).clamp(min=0)
  inter = wh[..., 0] * wh[..., 1]
  union = area1[:, None] + area2 - inter
  iou = inter / union
  lt, rb = torch.min(b1[:, None, :2], b2[:, :2]), torch.max(b1[:, None, 2:], b2[:, 2:])
  wh = (rb - lt).clamp(min=0)
  area = wh[..., 0] * wh[..., 1]
  return iou - (area - union) / area


def torch_matcher(out, targets, costs=(1.0, 5.0, 2.0)):
  bs, nq = out["pred_logits"].shape[:2]
  prob = out["pred_logits"].flatten(0, 1).softmax(-1)
  boxes = out["pred_boxes"].flatten(0, 1)
  ids = torch.cat([t["labels"] for t in targets])
  tgt = torch.cat([t["boxes"] for t in targets])
  c = costs[1] * torch.cdist(boxes, tgt, p=1) - costs[0] * prob[:, ids] - costs[2] * t_giou(t_box_xyxy(boxes),
                                                                                          t_box_xyxy(tgt))
  c = c.view(bs, nq, -1)
  sizes = [len(t["boxes"]) for t in targets]
  return [tuple(torch.as_tensor(a, dtype=torch.int64) for a in scipy_optimize.linear_sum_assignment(part[i]))
          for i, part in enumerate(c.split(sizes, -1))]


def torch_set_criterion(outputs, targets, num_classes, eos_coef=0.1):
  """The official weighted loss sum, per kind: {'loss_ce', 'loss_bbox', 'loss_giou'} summed over layers."""
  weight = torch.ones(num_classes + 1)
  weight[-1] = eos_coef
  num_boxes = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
  totals = {"loss_ce": 0.0, "loss_bbox": 0.0, "loss_giou": 0.0}
  for out in [outputs] + outputs["aux_outputs"]:
    indices = torch_matcher(out, targets)
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    classes = torch.full(out["pred_logits"].shape[:2], num_classes, dtype=torch.int64)
    classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
    classes[batch_idx, src_idx] = classes_o
    if out is outputs and len(classes_o):  # the official log: 100 - top-1 accuracy of the matched queries
      hits = (out["pred_logits"][batch_idx, src_idx].argmax(-1) == classes_o).float().mean()
      totals["class_error"] = 100 - 100 * float(hits)
    totals["loss_ce"] += float(F.cross_entropy(out["pred_logits"].transpose(1, 2), classes, weight))
    src = out["pred_boxes"][batch_idx, src_idx]
    tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
    totals["loss_bbox"] += 5 * float(F.l1_loss(src, tgt, reduction="none").sum() / num_boxes)
    totals["loss_giou"] += 2 * float((1 - torch.diag(t_giou(t_box_xyxy(src), t_box_xyxy(tgt)))).sum() / num_boxes)
  return totals


def random_outputs(layers=3, batch=3, queries=12, num_logits=12, seed=0):
  rng = np.random.default_rng(seed)
  def one():
    return {"pred_logits": rng.normal(0, 2, size=(batch, queries, num_logits)).astype(np.float32),
            "pred_boxes": np.concatenate([rng.uniform(0.2, 0.8, (batch, queries, 2)),
                                          rng.uniform(0.05, 0.5, (batch, queries, 2))], -1).astype(np.float32)}
  out = one()
  out["aux_outputs"] = [one() for _ in range(layers - 1)]
  return out


def random_targets(num_classes, counts=(3, 0, 6), max_boxes=7, size=SIZE, seed=0):
  """Padded xyxy-pixel targets and the official per-image normalised cxcywh lists; image 1 has no box."""
  rng = np.random.default_rng(seed)
  boxes = rng.uniform(0, 80, size=(len(counts), max_boxes, 4)).astype(np.float32)   # padding garbage
  labels = rng.integers(-5, 200, size=(len(counts), max_boxes)).astype(np.int32)
  valid = np.zeros((len(counts), max_boxes), bool)
  official = []
  for i, n in enumerate(counts):
    slots = rng.permutation(max_boxes)[:n]                  # real boxes anywhere among the padded slots
    wh = rng.uniform(6, 40, size=(n, 2))
    x0, y0 = rng.uniform(0, size[1] - wh[:, 0]), rng.uniform(0, size[0] - wh[:, 1])
    b = np.stack([x0, y0, x0 + wh[:, 0], y0 + wh[:, 1]], 1).astype(np.float32)
    lab = rng.integers(1, num_classes, size=n).astype(np.int32)
    boxes[i, slots], labels[i, slots], valid[i, slots] = b, lab, True
    order = np.sort(slots)
    tb = torch.from_numpy(boxes[i, order])
    cxcywh = torch.stack([(tb[:, 0] + tb[:, 2]) / 2, (tb[:, 1] + tb[:, 3]) / 2, tb[:, 2] - tb[:, 0],
                          tb[:, 3] - tb[:, 1]], -1) / torch.tensor([size[1], size[0], size[1], size[0]])
    official.append({"boxes": cxcywh.reshape(-1, 4).float(), "labels": torch.from_numpy(labels[i, order]).long()})
  return {"boxes": boxes, "labels": labels, "valid": valid}, official


def test_loss_matches_the_official_set_criterion():
  model = create_model("detr_resnet50", num_classes=11)
  outputs = random_outputs()
  targets, official = random_targets(11)
  expected = torch_set_criterion(jax.tree.map(torch.from_numpy, outputs), official, 11)
  value_and_grad = jax.jit(jax.value_and_grad(lambda o: model.detection_loss(o, targets, SIZE), has_aux=True))
  (loss, metrics), grads = value_and_grad(outputs)
  assert sorted(metrics) == ["train/class_error", "train/loss_bbox", "train/loss_ce", "train/loss_giou"]
  for key, value in expected.items():
    np.testing.assert_allclose(float(metrics[f"train/{key}"]), value, rtol=1e-5, err_msg=key)
    assert value > 0.1, key
  losses = [v for k, v in expected.items() if k.startswith("loss_")]
  np.testing.assert_allclose(float(loss), sum(losses), rtol=1e-5)
  np.testing.assert_allclose(float(loss), float(sum(v for k, v in metrics.items() if "loss_" in k)), rtol=1e-6)
  # gradients are finite and reach the boxes of the matched queries only (every layer matches every box)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  for layer in [grads] + grads["aux_outputs"]:
    moved = (np.abs(np.asarray(layer["pred_boxes"])).sum(-1) > 0).sum(-1)
    np.testing.assert_array_equal(moved, [3, 0, 6])


def test_loss_without_aux_outputs_and_without_any_box():
  model = create_model("detr_resnet50", num_classes=11, aux_loss=False)
  outputs = random_outputs(layers=1)
  outputs.pop("aux_outputs")
  targets, official = random_targets(11, counts=(0, 0, 0))
  expected = torch_set_criterion({**jax.tree.map(torch.from_numpy, outputs), "aux_outputs": []}, official, 11)
  loss, metrics = jax.jit(model.detection_loss, static_argnums=2)(outputs, targets, SIZE)
  assert float(metrics["train/loss_bbox"]) == 0 and float(metrics["train/loss_giou"]) == 0
  np.testing.assert_allclose(float(loss), expected["loss_ce"], rtol=1e-5)


def test_pmap_loss_equals_the_global_batch_loss():
  """With axis_name the box count and CE weights are global: the mean over devices is the jit loss."""
  model = create_model("detr_resnet50", num_classes=11)
  outputs = random_outputs(batch=4)
  targets, _ = random_targets(11, counts=(3, 0, 6, 1))
  whole = float(jax.jit(model.detection_loss, static_argnums=2)(outputs, targets, SIZE)[0])
  split = jax.tree.map(lambda x: x.reshape((2, 2) + x.shape[1:]), (outputs, targets))
  per_device = jax.pmap(lambda o, t: model.detection_loss(o, t, SIZE, axis_name="d")[0], axis_name="d",
                        devices=jax.devices()[:2])(*split)
  np.testing.assert_allclose(float(np.mean(per_device)), whole, rtol=1e-5)


# --- post-processing -------------------------------------------------------------------------------------
def test_postprocess_is_the_official_postprocess_sorted_and_clipped():
  outputs = random_outputs(layers=1, num_logits=12)
  outputs["pred_logits"][0, :, 0] += 4.0    # column 0 (a label no target uses) would win in image 0
  h, w = SIZE
  prob = torch.from_numpy(outputs["pred_logits"]).softmax(-1)
  scores, labels = prob[..., :-1].max(-1)
  boxes = t_box_xyxy(torch.from_numpy(outputs["pred_boxes"])) * torch.tensor([w, h, w, h])
  full = create_model("detr_resnet50", num_classes=11, keep_background_class=True)
  dets = jax.device_get(jax.jit(full.postprocess, static_argnums=1)(outputs, SIZE))
  for i in range(3):
    order = np.argsort(-scores[i].numpy(), kind="stable")
    np.testing.assert_allclose(dets["scores"][i], scores[i].numpy()[order], rtol=1e-6)
    np.testing.assert_array_equal(dets["labels"][i], labels[i].numpy()[order])
    clipped = np.clip(boxes[i].numpy()[order], 0, [w, h, w, h])
    np.testing.assert_allclose(dets["boxes"][i], clipped, atol=1e-4)
  assert dets["valid"].all() and dets["boxes"].shape == (3, 12, 4)
  assert (dets["labels"][0] == 0).any()
  default = create_model("detr_resnet50", num_classes=11, detections_per_img=5, score_thresh=0.2)
  dets = jax.device_get(default.postprocess(outputs, SIZE))
  assert dets["boxes"].shape == (3, 5, 4) and (dets["labels"] >= 1).all() and (dets["labels"] <= 10).all()
  np.testing.assert_array_equal(dets["valid"], dets["scores"] > 0.2)
  assert (np.diff(dets["scores"], axis=1) <= 0).all()


# --- training through the task; options ----------------------------------------------------------------
def random_variables(abstract, seed=0):
  """Variables of the abstract tree's shapes drawn in NumPy: kernels N(0, 1 / fan_in), norms at identity."""
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = path[-1].key
    if name in ("var", "scale"):
      return np.ones(x.shape, np.float32)
    if name in ("mean", "bias", "in_proj_bias"):
      return np.zeros(x.shape, np.float32)
    fan_in = int(np.prod(x.shape[:-1])) if x.ndim > 1 else 1
    return rng.normal(0, fan_in ** -0.5, x.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.mark.slow  # compile-bound; the fast set keeps the loss, matching and parity tests
def test_one_jitted_training_step_through_the_detection_task():
  """A tiny DETR (ResNet-18, d 32, 1 + 2 layers, 8 queries) through Detection.loss, AdamW, jitted; frozen BN,
  dropout on, gradients everywhere; then the task's jitted detection."""
  import optax
  from experiments.configs.common import detection_config
  from jaxcnn import data as data_lib
  from jaxcnn.tasks.detection import Detection
  c = detection_config()
  c.model.name = "detr_resnet50"
  with c.model.unlocked():
    c.model.update(backbone_name="resnet18", d_model=32, num_heads=2, num_encoder_layers=1,
                   num_decoder_layers=2, dim_feedforward=64, num_queries=8)
  c.data.name, c.data.image_size = "digits_det", 64
  task = Detection(c, data_lib.dataset_info("digits_det"))
  assert task.model.num_classes == 11 and task.model.frozen_bn
  rng = np.random.default_rng(0)
  targets, _ = random_targets(10, counts=(2, 0, 4, 1), max_boxes=4, size=(64, 64))
  batch = {"image": rng.normal(size=(4, 64, 64, 1)).astype(np.float32), "boxes": targets["boxes"],
           "boxes_valid": targets["valid"], "box_classes": np.clip(targets["labels"] - 1, 0, 9)}
  variables = random_variables(jax.eval_shape(task.init, jax.random.key(0), batch))   # no initialiser compile
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  tx = optax.adamw(1e-4)

  @jax.jit
  def step(params, opt_state, state, batch, key):
    (loss, (new_state, metrics)), grads = jax.value_and_grad(task.loss, has_aux=True)(params, state, batch, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, new_state, loss, metrics, grads

  opt_state = tx.init(params)
  _, _, new_state, loss, metrics, grads = step(params, opt_state, state, batch, jax.random.key(1))
  other_loss = step(params, opt_state, state, batch, jax.random.key(2))[3]
  assert np.isfinite(float(loss)) and abs(float(loss) - float(other_loss)) > 1e-4   # dropout 0.1 is on
  np.testing.assert_allclose(float(loss), float(metrics["train/loss_ce"] + metrics["train/loss_bbox"]
                                                + metrics["train/loss_giou"]), rtol=1e-5)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  for part in ("backbone", "transformer", "query_embed", "class_embed", "bbox_embed"):
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[part])) > 0, part
  same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new_state["batch_stats"], state["batch_stats"])
  assert all(jax.tree.leaves(same))                                   # FrozenBatchNorm2d: statistics fixed
  detections = jax.eval_shape(task.detect, variables, batch["image"])
  assert detections["boxes"].shape == (4, 8, 4) and detections["labels"].dtype == jnp.int32


def test_aux_loss_off_and_dilation_shapes():
  tiny = {**SMALL, "num_encoder_layers": 1, "num_decoder_layers": 2}
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  variables = abstract_variables(create_model("detr_resnet50", **tiny), x.shape)
  out = jax.eval_shape(create_model("detr_resnet50", **tiny).apply, variables, x)
  assert len(out["aux_outputs"]) == 1 and out["pred_boxes"].shape == (1, 12, 4)
  no_aux = jax.eval_shape(create_model("detr_resnet50", **tiny, aux_loss=False).apply, variables, x)
  assert sorted(no_aux) == ["pred_boxes", "pred_logits"] and no_aux["pred_logits"].shape == (1, 12, 12)
  for dilation, side in ((False, 2), (True, 4)):   # DC5: the last stage at stride 16
    model = create_model("detr_resnet50", **tiny, dilation=dilation)
    _, inter = jax.eval_shape(
        lambda v, x: model.apply(v, x, capture_intermediates=lambda m, _: m.name == "input_proj"), variables, x)
    assert inter["intermediates"]["input_proj"]["__call__"][0].shape == (1, side, side, 64)


def test_an_earlier_backbone_stage_ends_the_backbone_there():
  """`backbone_stage` (a small-data option; the official model uses stage4): the feature map of that stage
  at its stride (half of it with dilation), and no parameters for the stages after it."""
  tiny = {**SMALL, "num_encoder_layers": 1, "num_decoder_layers": 1}
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  for stage, dilation, side, channels in (("stage2", False, 8, 128), ("stage2", True, 16, 128),
                                          ("stage3", False, 4, 256)):
    model = create_model("detr_resnet50", **tiny, backbone_stage=stage, dilation=dilation)
    variables = abstract_variables(model, x.shape)
    assert variables["params"]["input_proj"]["kernel"].shape == (1, 1, channels, 64)
    last = int(stage[-1])
    assert not [k for k in variables["params"]["backbone"] if any(f"layer{i}" in k for i in range(last + 1, 5))]
    _, inter = jax.eval_shape(
        lambda v, x: model.apply(v, x, capture_intermediates=lambda m, _: m.name == "input_proj"), variables, x)
    assert inter["intermediates"]["input_proj"]["__call__"][0].shape == (1, side, side, 64)


def test_bad_options_and_state_dicts():
  with pytest.raises(UserError, match="backbone_stage"):
    create_model("detr_resnet50", backbone_stage="stage5")
  with pytest.raises(UserError, match="backbone_name"):
    create_model("detr_resnet50", backbone_name="vgg16")
  with pytest.raises(UserError, match="divisible"):
    create_model("detr_resnet50", num_heads=7)
  with pytest.raises(UserError, match="detections_per_img"):
    create_model("detr_resnet50", num_queries=10, detections_per_img=20)
  with pytest.raises(UserError, match="num_classes"):
    create_model("detr_resnet50", num_classes=1)
  sd = TorchDETR(backbone_name="resnet18", d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                 dim_feedforward=32, num_queries=4).state_dict()
  with pytest.raises(UserError, match="not an official DETR"):
    torch_to_flax("detr_resnet50", {k: v for k, v in sd.items() if not k.startswith("class_embed")})
  with pytest.raises(UserError, match="unexpected"):
    torch_to_flax("detr_resnet50", {**sd, "extra.weight": torch.zeros(1)})
  with pytest.raises(UserError, match="convertible"):
    torch_to_flax("detr_resnet18", sd)


# --- the detection task's padding mask ------------------------------------------------------------------
def test_the_task_gives_detr_the_official_padding_mask_and_image_sizes():
  """Batches padded by data.resize=fit (bottom/right, as the official NestedTensor): the task derives each image's
  unpadded size from `source_hw`, gives the model the pixel mask and normalises the targets by those sizes; the
  loss equals the official model + SetCriterion on the masked batch, and the detections are the official
  PostProcess with the unpadded sizes as target_sizes."""
  from experiments.configs.common import detection_config
  from jaxcnn import data as data_lib
  from jaxcnn.tasks.detection import Detection
  kwargs = {k: v for k, v in SMALL.items() if k != "num_classes"}
  c = detection_config()
  c.model.name = "detr_resnet50"
  with c.model.unlocked():
    c.model.update(kwargs, dropout=0.0)
  c.data.name, c.data.image_size = "digits_det", SIZE
  task = Detection(c, data_lib.dataset_info("digits_det"))
  model = torch_detr(3, SIZE, num_classes=11, **kwargs)
  variables = torch_to_flax("detr_resnet50", model.state_dict())
  # fit: (64, 96) stays; (40, 90) -> 43 x 96 (bottom padded); (60, 40) -> 64 x 43 (right); (0, 0) eval padding
  source_hw = np.array([[64, 96], [40, 90], [60, 40], [0, 0]], np.int32)
  unpadded = [(64, 96), (43, 96), (64, 43), (64, 96)]
  rng = np.random.default_rng(4)
  images = rng.normal(size=(4,) + SIZE + (3,)).astype(np.float32)
  boxes, labels = np.zeros((4, 3, 4), np.float32), rng.integers(0, 10, (4, 3)).astype(np.int32)
  valid = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]], bool)
  pixel_mask, official = np.ones((4,) + SIZE, bool), []
  for i, (h, w) in enumerate(unpadded):
    images[i, h:], images[i, :, w:] = 0.0, 0.0
    pixel_mask[i, :h, :w] = False
    wh = rng.uniform(8, 20, (3, 2))
    x0, y0 = rng.uniform(0, w - wh[:, 0]), rng.uniform(0, h - wh[:, 1])
    boxes[i] = np.stack([x0, y0, x0 + wh[:, 0], y0 + wh[:, 1]], 1)
    b = torch.from_numpy(boxes[i][valid[i]])
    official.append({"labels": torch.from_numpy(labels[i][valid[i]] + 1).long(),
                     "boxes": torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0],
                                           b[:, 3] - b[:, 1]], -1) / torch.tensor([w, h, w, h])})
  batch = {"image": images, "boxes": boxes, "boxes_valid": valid, "box_classes": labels, "source_hw": source_hw}
  mask, hw = jax.jit(task.padding)(batch)
  np.testing.assert_array_equal(np.asarray(mask), pixel_mask)
  np.testing.assert_array_equal(np.asarray(hw), np.asarray(unpadded, np.float32))

  with torch.no_grad():
    outputs = model(torch.from_numpy(images.transpose(0, 3, 1, 2)), torch.from_numpy(pixel_mask))
  expected = torch_set_criterion(outputs, official, 11)
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  loss, (_, metrics) = jax.jit(task.loss)(params, state, batch, jax.random.key(0))
  for key, value in expected.items():
    np.testing.assert_allclose(float(metrics[f"train/{key}"]), value, rtol=1e-4, err_msg=key)
  np.testing.assert_allclose(float(loss), sum(v for k, v in expected.items() if k.startswith("loss_")), rtol=1e-4)

  dets = jax.device_get(jax.jit(task.detect)(variables, images, source_hw))
  prob = outputs["pred_logits"].softmax(-1)[..., 1:-1]        # the classes (column 0 is never a label)
  scores, classes = prob.max(-1)
  for i, (h, w) in enumerate(unpadded):
    order = np.argsort(-scores[i].numpy(), kind="stable")
    np.testing.assert_allclose(dets["scores"][i], scores[i].numpy()[order], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(dets["labels"][i], classes[i].numpy()[order])
    pixels = t_box_xyxy(outputs["pred_boxes"][i]).numpy() * [w, h, w, h]    # PostProcess(target_sizes)
    np.testing.assert_allclose(dets["boxes"][i], np.clip(pixels[order], 0, [w, h, w, h]), atol=2e-3)


def test_size_changing_augmentations_are_refused_with_detr():
  from experiments.configs.common import detection_config
  from jaxcnn import data as data_lib
  from jaxcnn.tasks.detection import Detection
  c = detection_config()
  c.model.name = "detr_resnet50"
  c.data.name, c.data.augment = "digits_det", "flip,scale"
  with pytest.raises(UserError, match="scale changes the image size"):
    Detection(c, data_lib.dataset_info("digits_det"))
  c.data.resize = "stretch"   # no padding: nothing to know
  Detection(c, data_lib.dataset_info("digits_det"))
