"""Mask R-CNN against torchvision (converted random weights): the mask branch, eval detections + pasted masks,
the training loss dict with loss_mask; the registered ResNet-50 model's parameter count (and, slow, its parity).

The fast parity model is torchvision's MaskRCNN built from the same small parts as a jaxcnn config (ResNet-18
C3..C5, a 64-channel FPN + max-pool level, 128-wide box head, a 4 x 32-wide mask head, 11 classes) at 64x96,
with torchvision's own GeneralizedRCNNTransform made the identity (no resize, mean 0, std 1; checked), so its
postprocess pastes the masks as in real use.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchAnchors  # noqa: E402
from torchvision.models.detection.backbone_utils import BackboneWithFPN  # noqa: E402
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead  # noqa: E402
from torchvision.models.detection.mask_rcnn import MaskRCNN as TorchMaskRCNN  # noqa: E402
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads as TvHeads  # noqa: E402
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor as TvPredictor  # noqa: E402
from torchvision.models.detection.transform import GeneralizedRCNNTransform  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool  # noqa: E402

from jaxcnn import create_model  # noqa: E402
from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights  # noqa: E402
from jaxcnn.convert.mask_rcnn import convert_mask_rcnn, mask_branch  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from jaxcnn.models.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor  # noqa: E402
from jaxcnn.utils import abstract_variables, param_count  # noqa: E402

# sum(p.numel() for p in torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None,
#                                                                          weights_backbone=None).parameters())
TORCHVISION_PARAMS = 44_454_513
SIZE = (64, 96)
SMALL = dict(backbone_name="resnet18", returned_layers=(2, 3, 4), fpn_channels=64,
             anchor_sizes=((16,), (32,), (64,), (128,)), representation_size=128, num_classes=11,
             mask_layers=(32,) * 4, mask_dim_reduced=32)


def identity_transform(size=SIZE):
  return GeneralizedRCNNTransform(min(size), max(size), [0.0] * 3, [1.0] * 3)


def randomize_(model, generator, size=SIZE):
  """Random BN affines, BN statistics measured on a random batch and made distinct, O(1)-gain heads."""
  with torch.no_grad():
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
      m.weight.uniform_(0.5, 1.5, generator=generator)
      m.bias.normal_(0.0, 0.2, generator=generator)
    for key, m in model.named_modules():
      if (isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d))
          and not key.startswith("backbone.body")):
        fan_in = m.weight[0].numel() if not isinstance(m, torch.nn.ConvTranspose2d) else m.weight[:, 0].numel()
        gain = 3.0 if key.endswith("cls_score") else 1.0
        m.weight.normal_(0.0, gain * (1.0 / fan_in) ** 0.5, generator=generator)
        if m.bias is not None:
          m.bias.normal_(0.0, 0.5, generator=generator)
    for bn in bns:
      bn.momentum = 1.0
    model.train()
    model.backbone(torch.randn(4, 3, *size, generator=generator))
    for bn in bns:
      bn.running_var.add_(bn.running_mean ** 2)
      bn.running_mean.mul_(torch.rand(bn.num_features, generator=generator))
      bn.momentum = 0.1
  return model.eval()


def small_torch_model(**kwargs):
  torch.manual_seed(0)
  backbone = BackboneWithFPN(torchvision.models.resnet18(), {"layer2": "0", "layer3": "1", "layer4": "2"},
                             [128, 256, 512], 64, extra_blocks=LastLevelMaxPool())
  model = TorchMaskRCNN(backbone, rpn_anchor_generator=TorchAnchors(SMALL["anchor_sizes"], ((0.5, 1.0, 2.0),) * 4),
                        box_head=TwoMLPHead(64 * 49, 128), box_predictor=FastRCNNPredictor(128, 11),
                        mask_head=TvHeads(64, (32,) * 4, 1), mask_predictor=TvPredictor(32, 32, 11), **kwargs)
  randomize_(model, torch.Generator().manual_seed(1))
  model.transform = identity_transform()
  return model.eval()


def state_dict(model):
  return {k: v.numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def images(seed=0, batch=2, size=SIZE):
  return np.random.default_rng(seed).uniform(-1, 1, size=(batch, 3) + size).astype(np.float32)


def test_parameter_count():
  variables = abstract_variables(create_model("maskrcnn_resnet50_fpn"), (1, 64, 64, 3))
  assert param_count(variables["params"]) == TORCHVISION_PARAMS
  assert param_count(variables["params"]["mask_head"]) == 4 * (256 * 256 * 9 + 256)
  assert param_count(variables["params"]["mask_predictor"]) == 256 * 256 * 4 + 256 + 256 * 91 + 91


def test_identity_transform_is_the_identity():
  x = torch.from_numpy(images())
  transform = identity_transform().eval()
  out, _ = transform(list(x))
  assert torch.equal(out.tensors, x) and out.image_sizes == [SIZE, SIZE]
  boxes = torch.tensor([[1.5, 2.5, 30.25, 40.75]])
  probs = torch.rand(1, 1, 28, 28)
  post = transform.postprocess([{"boxes": boxes, "masks": probs}], [SIZE], [SIZE])[0]
  assert torch.equal(post["boxes"], boxes) and post["masks"].shape == (1, 1) + SIZE


def test_mask_head_and_predictor_match_torchvision():
  torch.manual_seed(0)
  channels, classes = 32, 7
  tv_head, tv_pred = TvHeads(channels, (channels,) * 4, 1), TvPredictor(channels, 24, classes)
  with torch.no_grad():
    for p in list(tv_head.parameters()) + list(tv_pred.parameters()):
      if p.ndim == 1:
        p.normal_(0.0, 0.1)  # torchvision zeroes these biases: a mis-mapped one would go unseen
  sd = {f"roi_heads.mask_head.{k}": v.numpy() for k, v in tv_head.state_dict().items()}
  sd.update({f"roi_heads.mask_predictor.{k}": v.numpy() for k, v in tv_pred.state_dict().items()})
  weights, variables = TorchWeights("mask branch", sd), FlaxVariables()
  mask_branch(variables, weights)
  assert not weights.unused()
  params = variables.tree["params"]
  x = np.random.default_rng(0).normal(size=(5, 14, 14, channels)).astype(np.float32)
  with torch.no_grad():
    want = tv_pred(tv_head(torch.from_numpy(x.transpose(0, 3, 1, 2)))).numpy().transpose(0, 2, 3, 1)
  head, pred = MaskRCNNHeads((channels,) * 4), MaskRCNNPredictor(classes, 24)
  features = jax.jit(head.apply)({"params": params["mask_head"]}, x)
  got = jax.jit(pred.apply)({"params": params["mask_predictor"]}, features)
  assert got.shape == (5, 28, 28, classes)
  np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()))
  shapes = jax.tree.map(np.shape, head.init(jax.random.PRNGKey(0), x)["params"])
  assert shapes == jax.tree.map(np.shape, params["mask_head"])


def run_eval(model, jmodel, variables, x):
  seen = {}
  hook = model.roi_heads.mask_predictor.register_forward_hook(lambda m, i, o: seen.update(logits=o))
  with torch.no_grad():
    detections = model(list(torch.from_numpy(x)))
  hook.remove()
  outputs = jax.jit(jmodel.apply)(variables, x.transpose(0, 2, 3, 1))
  # as the detection task does: every output cast to float32 (labels and validity included) before postprocess
  as_float = jax.tree.map(lambda a: a.astype(jnp.float32), outputs)
  jdets = jax.device_get(jax.jit(jmodel.postprocess, static_argnums=1)(as_float, x.shape[2:]))
  return seen["logits"].numpy().transpose(0, 2, 3, 1), detections, jax.device_get(outputs), jdets


def tie_order(jscores, jlabels, jboxes, scores, labels, boxes, tol=1e-4):
  """Index into jax's detections for each of torchvision's: the same slot, except where two scores are within
  `tol` (ties under float rounding, which NMS may order either way): then the near-tied detection with the
  same label and box."""
  order, free = [], set(range(len(scores)))
  for j in range(len(scores)):
    near = [k for k in sorted(free, key=lambda k: abs(k - j))
            if abs(jscores[k] - scores[j]) < tol and jlabels[k] == labels[j]
            and np.abs(jboxes[k] - boxes[j]).max() < 1e-3]
    assert near and (near[0] == j or abs(jscores[j] - scores[j]) < tol), f"detection {j} has no counterpart"
    order.append(near[0])
    free.discard(near[0])
  return np.asarray(order)


def check_eval_parity(logits, detections, outputs, jdets, min_detections):
  start, swapped = 0, 0
  for i, det in enumerate(detections):
    n = int(jdets["valid"][i].sum())
    assert n == len(det["boxes"]) >= min_detections
    assert not jdets["valid"][i, n:].any() and not jdets["masks"][i, n:].any()
    scores, labels, boxes = det["scores"].numpy(), det["labels"].numpy(), det["boxes"].numpy()
    order = tie_order(jdets["scores"][i], jdets["labels"][i], jdets["boxes"][i], scores, labels, boxes)
    swapped += int(np.sum(order != np.arange(n)))
    np.testing.assert_array_equal(jdets["labels"][i, order], labels)
    np.testing.assert_allclose(jdets["boxes"][i, order], boxes, atol=1e-3)
    np.testing.assert_allclose(jdets["scores"][i, order], scores, atol=1e-4)
    np.testing.assert_allclose(outputs["mask_logits"][i, order], logits[start:start + n],
                               atol=1e-4 * max(1.0, np.abs(logits).max()))
    want = det["masks"].numpy()[:, 0]
    assert jdets["masks"].shape[2:] == want.shape[1:] and want.max() > 0.5
    np.testing.assert_allclose(jdets["masks"][i, order], want, atol=1e-4)
    start += n
  assert swapped <= 4  # at most a couple of near-tied pairs
  return start


def test_small_mask_rcnn_matches_torchvision_in_eval():
  kwargs = dict(box_score_thresh=0.02)
  model = small_torch_model(**kwargs)
  jmodel = create_model("maskrcnn_resnet50_fpn", **SMALL, **kwargs)
  variables = convert_mask_rcnn("maskrcnn_resnet50_fpn", state_dict(model), **SMALL)
  total = check_eval_parity(*run_eval(model, jmodel, variables, images()), min_detections=5)
  assert total >= 10


def blob_masks(rng, boxes, size=SIZE):
  """A random filled ellipse inside each box, plus speckle: instance masks that follow the boxes."""
  yy, xx = np.mgrid[:size[0], :size[1]] + 0.5
  masks = []
  for x0, y0, x1, y1 in boxes:
    cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
    rx, ry = (x1 - x0) * rng.uniform(0.3, 0.6), (y1 - y0) * rng.uniform(0.3, 0.6)
    m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    masks.append(m | (rng.uniform(size=size) < 0.05))
  return np.asarray(masks, np.uint8).reshape(-1, *size)


def targets_pair(num_classes, seed=0, size=SIZE, max_boxes=4):
  """Random targets with masks as torchvision lists and padded arrays; image 1 has no boxes."""
  rng = np.random.default_rng(seed)
  counts = [3, 0, max_boxes]
  boxes = np.zeros((3, max_boxes, 4), np.float32)
  labels = np.zeros((3, max_boxes), np.int32)
  valid = np.zeros((3, max_boxes), bool)
  masks = np.zeros((3, max_boxes) + size, np.uint8)
  torch_targets = []
  for i, n in enumerate(counts):
    wh = rng.uniform(12, 48, size=(n, 2))
    x0, y0 = rng.uniform(0, size[1] - wh[:, 0]), rng.uniform(0, size[0] - wh[:, 1])
    b = np.stack([x0, y0, x0 + wh[:, 0], y0 + wh[:, 1]], 1).astype(np.float32)
    lab = rng.integers(1, num_classes, size=n)
    m = blob_masks(rng, b, size)
    boxes[i, :n], labels[i, :n], valid[i, :n], masks[i, :n] = b, lab, True, m
    boxes[i, n:] = rng.uniform(0, 50, size=(max_boxes - n, 4))  # padding garbage must not count
    masks[i, n:] = 1
    torch_targets.append({"boxes": torch.from_numpy(b).reshape(-1, 4), "labels": torch.from_numpy(lab).long(),
                          "masks": torch.from_numpy(m)})
  return torch_targets, {"boxes": boxes, "labels": labels, "valid": valid, "masks": masks}


def test_small_mask_rcnn_loss_matches_torchvision():
  """Train mode with budgets that every candidate fits (the sampled sets are then fixed on both sides)."""
  kwargs = dict(rpn_batch_size_per_image=1024, rpn_post_nms_top_n_train=100, box_batch_size_per_image=256,
                box_positive_fraction=0.5)
  model = small_torch_model(**kwargs)
  jmodel = create_model("maskrcnn_resnet50_fpn", **SMALL, **kwargs)
  variables = convert_mask_rcnn("maskrcnn_resnet50_fpn", state_dict(model), **SMALL)
  torch_targets, targets = targets_pair(11)
  x = images(seed=1, batch=3)
  model.train()
  with torch.no_grad():
    expected = model(list(torch.from_numpy(x)), torch_targets)

  def loss_fn(params):
    out, _ = jmodel.apply({**variables, "params": params}, x.transpose(0, 2, 3, 1), train=True, targets=targets,
                          rngs={"sampling": jax.random.key(0)}, mutable=["batch_stats"])
    loss, metrics = jmodel.detection_loss(out, targets, SIZE)
    return loss, (metrics, out)

  (loss, (metrics, out)), grads = jax.device_get(
      jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"]))
  assert sorted(metrics) == sorted(f"train/{k}" for k in expected)
  for key, value in expected.items():
    np.testing.assert_allclose(float(metrics[f"train/{key}"]), float(value), rtol=1e-4, err_msg=key)
    assert float(value) > 0, key
  np.testing.assert_allclose(float(loss), float(sum(expected.values())), rtol=1e-4)
  # the mask slots hold exactly the positive sampled RoIs (all candidates fit: 100 proposals + 4 gt < 128
  # slots), with the gt boxes among them; image 1 has none
  pos, mask_pos = out["roi_positive"], out["mask_positive"]
  np.testing.assert_array_equal(mask_pos.sum(1), pos.sum(1))
  assert out["mask_logits"].shape == (3, 104, 28, 28, 11) and pos[1].sum() == 0 and pos[2].sum() >= 4
  for i in range(3):
    np.testing.assert_array_equal(out["mask_proposals"][i][mask_pos[i]], out["roi_proposals"][i][pos[i]])
  # loss_mask trains the mask branch and, through the pooled features, the backbone
  for path in (("mask_predictor", "mask_fcn_logits"), ("mask_head", "conv_0"), ("fpn", "layer_blocks_0", "conv")):
    g = grads
    for key in path:
      g = g[key]
    assert np.isfinite(g["kernel"]).all() and np.abs(g["kernel"]).max() > 0, path
  # without loss_mask's positives the mask loss is zero, as torchvision's
  no_pos = {**out, "mask_positive": np.zeros_like(mask_pos)}
  assert float(jmodel.detection_loss(no_pos, targets, SIZE)[1]["train/loss_mask"]) == 0.0


def test_training_needs_masks_and_eval_does_not():
  jmodel = create_model("maskrcnn_resnet50_fpn", **{**SMALL, "fpn_channels": 16, "representation_size": 16,
                                                    "mask_layers": (8,), "mask_dim_reduced": 8})
  _, targets = targets_pair(11)
  x = jnp.zeros((3, 64, 96, 3))
  variables = jax.eval_shape(lambda: jmodel.init(jax.random.key(0), x))
  no_masks = {k: v for k, v in targets.items() if k != "masks"}
  train = lambda t: jax.eval_shape(lambda v: jmodel.apply(v, x, train=True, targets=t,
                                                          rngs={"sampling": jax.random.key(0)},
                                                          mutable=["batch_stats"]), variables)
  with pytest.raises(UserError, match="masks"):
    train(no_masks)
  with pytest.raises(UserError, match=r"\[B, M, H, W\]"):
    train({**targets, "masks": targets["masks"][:, :, :32]})
  out, _ = train(targets)
  assert out["mask_logits"].shape == (3, 128, 28, 28, 11)  # 512 x 0.25 positive slots per image
  eval_out = jax.eval_shape(lambda v: jmodel.apply(v, x), variables)
  dets = jax.eval_shape(lambda o: jmodel.postprocess(o, (64, 96)), eval_out)
  assert dets["masks"].shape == (3, 100, 64, 96) and dets["boxes"].shape == (3, 100, 4)
  with pytest.raises(UserError, match="masks"):
    jmodel.detection_loss(eval_out, no_masks, (64, 96))
  with pytest.raises(UserError, match="mask_layers"):
    create_model("maskrcnn_resnet50_fpn", mask_layers=())


@pytest.mark.slow
def test_registered_model_matches_torchvision_in_eval():
  torch.manual_seed(0)
  kwargs = dict(box_score_thresh=0.02)
  model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kwargs)
  randomize_(model, torch.Generator().manual_seed(1))
  model.transform = identity_transform()
  model.eval()
  jmodel = create_model("maskrcnn_resnet50_fpn", **kwargs)
  variables = torch_to_flax("maskrcnn_resnet50_fpn", model.state_dict())
  check_eval_parity(*run_eval(model, jmodel, variables, images()), min_detections=1)
