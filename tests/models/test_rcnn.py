"""Faster R-CNN against torchvision (converted random weights), Fast R-CNN, the sampler, one training step.

Parity: torchvision's FasterRCNN built from the same parts as a small jaxcnn config (ResNet-18 C3..C5, a
64-channel FPN + max-pool level, 128-wide TwoMLPHead, 11 classes; the registered ResNet-50 models in the slow
set), BN statistics and affines randomised, RPN/FPN/box-head weights of O(1) gain, eval mode, its transform the
identity (checked), batch 2 at 64x96. Compared: RPN objectness and deltas (1e-4), the proposals (same count,
order, 1e-3), the class logits of the proposals, the final detections (same count, labels and order, boxes
within 1e-3). Loss parity in train mode with the sampling made deterministic on both sides (every candidate
fits the sampler's budget), one image without boxes. The sampler's counts and uniformity separately.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchAnchors  # noqa: E402
from torchvision.models.detection.backbone_utils import BackboneWithFPN  # noqa: E402
from torchvision.models.detection.faster_rcnn import (  # noqa: E402
    FasterRCNN as TorchFasterRCNN, FastRCNNPredictor, TwoMLPHead)
from torchvision.models.detection.image_list import ImageList  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool  # noqa: E402

from jaxcnn import create_model  # noqa: E402
from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.convert.rcnn import convert_faster_rcnn  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from jaxcnn.models.rcnn import balanced_sample, gather_roi_align  # noqa: E402
from jaxcnn.ops import multiscale_roi_align  # noqa: E402
from jaxcnn.utils import abstract_variables, param_count  # noqa: E402

# sum(p.numel() for p in torchvision.models.detection.<name>(weights=None, weights_backbone=None).parameters())
TORCHVISION_PARAMS = {"fasterrcnn_resnet50_fpn": 41_808_406, "fasterrcnn_resnet50_fpn_v2": 43_712_278,
                      "fasterrcnn_mobilenet_v3_large_fpn": 19_410_754,
                      "fasterrcnn_mobilenet_v3_large_320_fpn": 19_410_754}
SIZE = (64, 96)
SMALL = dict(backbone_name="resnet18", returned_layers=(2, 3, 4), fpn_channels=64,
             anchor_sizes=((16,), (32,), (64,), (128,)), representation_size=128, num_classes=11)


class IdentityTransform(torch.nn.Module):
  """GeneralizedRCNNTransform without resize, normalisation or padding: images go through unchanged."""

  def forward(self, images, targets=None):
    batch = torch.stack(list(images))
    return ImageList(batch, [tuple(batch.shape[-2:])] * len(batch)), targets

  def postprocess(self, detections, image_sizes, original_image_sizes):
    return detections


def randomize_(model, generator, size=SIZE):
  """Random BN affines, BN statistics measured on a random batch and made distinct, O(1)-gain heads."""
  with torch.no_grad():
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
      m.weight.uniform_(0.5, 1.5, generator=generator)
      m.bias.normal_(0.0, 0.2, generator=generator)
    for key, m in model.named_modules():
      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and not key.startswith("backbone.body"):
        fan_in = m.weight[0].numel()
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
  """torchvision's FasterRCNN with jaxcnn's SMALL parts (ResNet-18 C3..C5, 64-channel FPN, 128-wide head)."""
  torch.manual_seed(0)
  body = torchvision.models.resnet18()
  backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], 64,
                             extra_blocks=LastLevelMaxPool())
  anchors = TorchAnchors(SMALL["anchor_sizes"], ((0.5, 1.0, 2.0),) * 4)
  model = TorchFasterRCNN(backbone, rpn_anchor_generator=anchors, box_head=TwoMLPHead(64 * 49, 128),
                          box_predictor=FastRCNNPredictor(128, 11), **kwargs)
  randomize_(model, torch.Generator().manual_seed(1))
  model.transform = IdentityTransform()
  return model


def convert_small(model):
  sd = {k: v.numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
  return convert_faster_rcnn("fasterrcnn_resnet50_fpn", sd, **SMALL)


def torch_kwargs_to_jax(kwargs):
  return {k.replace("box_detections_per_img", "detections_per_img"): v for k, v in kwargs.items()}


def images(seed=0, batch=2, size=SIZE):
  return np.random.default_rng(seed).uniform(-1, 1, size=(batch, 3) + size).astype(np.float32)


def run_eval(model, jmodel, variables):
  """torch: RPN head, proposals, box logits, detections; jax: the same through its outputs and postprocess."""
  seen = {}
  hooks = [model.rpn.head.register_forward_hook(lambda m, i, o: seen.update(rpn=o)),
           model.rpn.register_forward_hook(lambda m, i, o: seen.update(proposals=o[0])),
           model.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: seen.update(box=o))]
  x = images()
  with torch.no_grad():
    detections = model(list(torch.from_numpy(x)))
  for h in hooks:
    h.remove()
  outputs = jax.device_get(jax.jit(jmodel.apply)(variables, x.transpose(0, 2, 3, 1)))
  jdets = jax.device_get(jax.jit(jmodel.postprocess, static_argnums=1)(outputs, SIZE))
  return seen, detections, outputs, jdets


def torch_rpn_flat(seen, batch=2):
  """torchvision's per-level [N, A, H, W] / [N, 4A, H, W] RPN maps in its concatenated (level, y, x, a) order."""
  logits, deltas = seen["rpn"]
  obj = torch.cat([t.permute(0, 2, 3, 1).reshape(batch, -1) for t in logits], 1)
  reg = torch.cat([t.view(batch, -1, 4, t.shape[2], t.shape[3]).permute(0, 3, 4, 1, 2).reshape(batch, -1, 4)
                   for t in deltas], 1)
  return obj.numpy(), reg.numpy()


def check_eval_parity(seen, detections, outputs, jdets, min_detections=5):
  obj, reg = torch_rpn_flat(seen)
  assert np.max(np.abs(outputs["objectness"] - obj)) < 1e-4 and np.max(np.abs(obj)) > 0.5
  assert np.max(np.abs(outputs["rpn_box_regression"] - reg)) < 1e-4
  logits = seen["box"][0].numpy()
  start = 0
  for i, props in enumerate(seen["proposals"]):
    n = len(props)
    assert int(outputs["proposal_valid"][i].sum()) == n > 10
    assert not outputs["proposal_valid"][i, n:].any()
    np.testing.assert_allclose(outputs["proposals"][i, :n], props.numpy(), atol=1e-3)
    np.testing.assert_allclose(outputs["class_logits"][i, :n], logits[start:start + n], atol=1e-3)
    start += n
  for i, det in enumerate(detections):
    n = int(jdets["valid"][i].sum())
    assert n == len(det["boxes"]) >= min_detections
    assert not jdets["valid"][i, n:].any()
    np.testing.assert_allclose(jdets["scores"][i, :n], det["scores"].numpy(), atol=1e-4)
    order = tie_order(det["scores"].numpy(), det["labels"].numpy(), det["boxes"].numpy())
    jorder = tie_order(det["scores"].numpy(), jdets["labels"][i, :n], jdets["boxes"][i, :n])
    np.testing.assert_array_equal(jdets["labels"][i, :n][jorder], det["labels"].numpy()[order])
    np.testing.assert_allclose(jdets["boxes"][i, :n][jorder], det["boxes"].numpy()[order], atol=1e-3)


def tie_order(scores, labels, boxes):
  """The detections' order with runs of equal scores (within 1e-6; torchvision's CPU batched_nms re-sorts
  with an unstable sort, so their order is arbitrary) sorted by label and box: the order is checked up to ties."""
  group = np.concatenate([[0], np.cumsum(np.abs(np.diff(scores)) > 1e-6)])
  return np.lexsort(tuple(np.round(boxes[:, j], 2) for j in (3, 2, 1, 0)) + (labels, group))


def test_parameter_counts():
  for name, expected in TORCHVISION_PARAMS.items():
    variables = abstract_variables(create_model(name), (1, 64, 64, 3))
    assert param_count(variables["params"]) == expected, name


def test_identity_transform_is_the_identity():
  x = torch.from_numpy(images())
  out, _ = IdentityTransform()(list(x))
  assert torch.equal(out.tensors, x) and out.image_sizes == [SIZE, SIZE]


def test_small_faster_rcnn_matches_torchvision_in_eval():
  kwargs = dict(box_score_thresh=0.02)
  model = small_torch_model(**kwargs)
  jmodel = create_model("fasterrcnn_resnet50_fpn", **SMALL, **torch_kwargs_to_jax(kwargs))
  variables = convert_small(model)
  check_eval_parity(*run_eval(model, jmodel, variables))


def targets_pair(num_classes, seed=0, size=SIZE, max_boxes=4):
  """Random targets as torchvision lists and as padded arrays; image 1 has no boxes."""
  rng = np.random.default_rng(seed)
  counts = [3, 0, max_boxes]
  boxes = np.zeros((3, max_boxes, 4), np.float32)
  labels = np.zeros((3, max_boxes), np.int32)
  valid = np.zeros((3, max_boxes), bool)
  torch_targets = []
  for i, n in enumerate(counts):
    wh = rng.uniform(12, 48, size=(n, 2))
    x0 = rng.uniform(0, size[1] - wh[:, 0])
    y0 = rng.uniform(0, size[0] - wh[:, 1])
    b = np.stack([x0, y0, x0 + wh[:, 0], y0 + wh[:, 1]], 1).astype(np.float32)
    lab = rng.integers(1, num_classes, size=n)
    boxes[i, :n], labels[i, :n], valid[i, :n] = b, lab, True
    boxes[i, n:] = rng.uniform(0, 50, size=(max_boxes - n, 4))  # padding garbage must not count
    torch_targets.append({"boxes": torch.from_numpy(b).reshape(-1, 4), "labels": torch.from_numpy(lab).long()})
  return torch_targets, {"boxes": boxes, "labels": labels, "valid": valid}


def test_small_faster_rcnn_loss_matches_torchvision():
  """Train mode (batch-statistics BN) with budgets that every candidate fits: the sampled sets are then fixed."""
  # 384 anchors at 64x96; <= 100 proposals + 4 gt per image
  kwargs = dict(rpn_batch_size_per_image=1024, rpn_post_nms_top_n_train=100, box_batch_size_per_image=256,
                box_positive_fraction=0.5)
  model = small_torch_model(**kwargs)
  jmodel = create_model("fasterrcnn_resnet50_fpn", **SMALL, **kwargs)
  variables = convert_small(model)
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

  (loss, (metrics, out)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
  assert sorted(metrics) == sorted(f"train/{k}" for k in expected)
  for key, value in expected.items():
    np.testing.assert_allclose(float(metrics[f"train/{key}"]), float(value), rtol=1e-4, err_msg=key)
    assert float(value) > 0, key
  np.testing.assert_allclose(float(loss), float(sum(expected.values())), rtol=1e-4)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  check_roi_samples(jax.device_get(out), targets)


def check_roi_samples(out, targets):
  """What a mask branch relies on: every valid gt box is a positive sample with its label and gt index;
  background samples have label 0; positives are valid slots; the image without boxes has no positive."""
  pos, valid = out["roi_positive"], out["roi_valid"]
  assert pos[1].sum() == 0 and out["rpn_sampled_pos"][1].sum() == 0
  for i in (0, 2):
    gt = targets["boxes"][i][targets["valid"][i]]
    for j, box in enumerate(gt):
      hit = np.all(np.abs(out["roi_proposals"][i] - box) < 1e-6, axis=1) & pos[i]
      assert hit.any() and (out["roi_labels"][i][hit] == targets["labels"][i, j]).all()
      assert (out["roi_matched_idxs"][i][hit] == j).all()
  assert (out["roi_labels"][~pos] == 0).all() and not (pos & ~valid).any()
  assert (out["roi_labels"][pos] > 0).all()


def test_gather_roi_align_equals_multiscale_roi_align():
  """The model's gather formulation vs jaxcnn.ops' (itself checked against torchvision): values and gradients,
  boxes on every level, partly outside the image, chunked over RoIs with a remainder."""
  rng = np.random.default_rng(0)
  feats = [jnp.asarray(rng.normal(size=(2, h, w, 8)), jnp.float32) for h, w in [(16, 24), (8, 12), (4, 6), (2, 3)]]
  xy = rng.uniform(-10, 90, size=(2, 150, 2))
  boxes = jnp.asarray(np.concatenate([xy, xy + np.exp(rng.uniform(0, 5.5, size=(2, 150, 2)))], -1), jnp.float32)
  ours = lambda f: gather_roi_align(f, boxes, 7, 2, SIZE, roi_chunk=64)
  ref = lambda f: multiscale_roi_align(f, boxes, 7, 2, SIZE)
  a, b = jax.jit(ours)(feats), jax.jit(ref)(feats)
  assert np.max(np.abs(np.asarray(b))) > 1 and np.max(np.abs(np.asarray(a - b))) < 1e-5
  ga = jax.jit(jax.grad(lambda f: jnp.sum(jnp.sin(ours(f)))))(feats)
  gb = jax.jit(jax.grad(lambda f: jnp.sum(jnp.sin(ref(f)))))(feats)
  for x, y in zip(ga, gb):
    np.testing.assert_allclose(x, y, atol=1e-4)


def test_balanced_sampler_counts_and_uniformity():
  n = 200
  positive = jnp.arange(n) < 30
  negative = (jnp.arange(n) >= 30) & (jnp.arange(n) < 190)   # 10 ignored candidates
  sample = jax.jit(jax.vmap(lambda k: balanced_sample(k, positive, negative, 64, 0.25)))
  pos, neg = jax.device_get(sample(jax.random.split(jax.random.key(0), 2000)))
  assert (pos.sum(1) == 16).all() and (neg.sum(1) == 48).all()
  assert not (pos & ~np.asarray(positive)).any() and not (neg & ~np.asarray(negative)).any()
  # each candidate is drawn with probability count / candidates (3 sigma of 2000 draws)
  np.testing.assert_allclose(pos[:, :30].mean(0), 16 / 30, atol=3 * np.sqrt(16 / 30 * 14 / 30 / 2000))
  np.testing.assert_allclose(neg[:, 30:190].mean(0), 48 / 160, atol=3 * np.sqrt(0.3 * 0.7 / 2000))
  # few positives: all of them, the rest of the budget negatives; none at all: only negatives
  pos, neg = balanced_sample(jax.random.key(1), jnp.arange(n) < 5, jnp.arange(n) >= 5, 64, 0.25)
  assert int(pos.sum()) == 5 and int(neg.sum()) == 59
  pos, neg = balanced_sample(jax.random.key(1), jnp.zeros(n, bool), jnp.arange(n) < 20, 64, 0.25)
  assert int(pos.sum()) == 0 and int(neg.sum()) == 20


@pytest.mark.slow
def test_training_samples_and_fixed_budgets():
  """Default budgets: the RPN samples 256 anchors (<= 50% positive), the RoI heads 512 (<= 25%), gt appended."""
  jmodel = create_model("fasterrcnn_resnet50_fpn", **{**SMALL, "fpn_channels": 16, "representation_size": 16})
  _, targets = targets_pair(11)
  x = jnp.asarray(images(seed=2, batch=3).transpose(0, 2, 3, 1))
  variables = jax.jit(jmodel.init)(jax.random.key(0), x)
  out, _ = jax.jit(lambda v: jmodel.apply(v, x, train=True, targets=targets, rngs={"sampling": jax.random.key(3)},
                                          mutable=["batch_stats"]))(variables)
  out = jax.device_get(out)
  sampled = out["rpn_sampled_pos"] | out["rpn_sampled_neg"]
  np.testing.assert_array_equal(sampled.sum(1), 256)
  assert (out["rpn_sampled_pos"].sum(1) <= 128).all()
  assert out["roi_proposals"].shape == (3, min(512, 384 + 4), 4)  # 384 anchors, so <= 384 proposals + 4 gt
  assert (out["roi_positive"].sum(1) <= 128).all() and (out["roi_positive"].sum(1)[[0, 2]] >= [3, 4]).all()
  check_roi_samples(out, targets)


def test_task_trains_a_tiny_faster_rcnn():
  """The detection task's jitted training step (targets + 'sampling' rng) on a tiny ResNet-18 model."""
  import optax
  from experiments.configs.common import detection_config
  from jaxcnn import data as data_lib
  from jaxcnn.tasks.detection import Detection
  c = detection_config()
  c.model.name = "fasterrcnn_resnet50_fpn"
  with c.model.unlocked():
    c.model.update(backbone_name="resnet18", returned_layers=(2, 3, 4), fpn_channels=16, representation_size=32,
                   anchor_sizes=((16,), (32,), (64,), (128,)), rpn_pre_nms_top_n_train=200,
                   rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=50,
                   box_batch_size_per_image=64)
  c.data.name, c.data.image_size = "digits_det", 64
  task = Detection(c, data_lib.dataset_info("digits_det"))
  batch = {k: jnp.asarray(v) for k, v in next(iter(data_lib.eval_iterator(c.data, global_batch_size=2))).items()}
  variables = jax.jit(task.init)(jax.random.key(0), batch)
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  opt = optax.adam(1e-3)

  @jax.jit
  def step(params, opt_state, state, rng):
    (loss, (state, metrics)), grads = jax.value_and_grad(task.loss, has_aux=True)(params, state, batch, rng)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, state, metrics

  params, _, _, metrics = step(params, opt.init(params), state, jax.random.key(1))
  metrics = jax.device_get(metrics)
  parts = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")
  assert np.isfinite(metrics["train/loss"]) and metrics["train/loss"] > 0
  np.testing.assert_allclose(metrics["train/loss"], sum(metrics[f"train/{k}"] for k in parts), rtol=1e-5)


def test_fast_rcnn_on_external_proposals():
  """roi_pool on supplied proposals; gt added to the RoIs in training; a finite loss; postprocess shapes."""
  jmodel = create_model("fastrcnn_vgg16", backbone_name="vgg11", representation_size=32, num_classes=5)
  x = jnp.asarray(images(seed=3, batch=2).transpose(0, 2, 3, 1))
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 40, size=(2, 20, 2))
  proposals = jnp.asarray(np.concatenate([xy, xy + rng.uniform(8, 40, size=(2, 20, 2))], -1), jnp.float32)
  _, targets = targets_pair(5, max_boxes=3)
  targets = {k: v[[0, 1]] for k, v in targets.items()}
  variables = jax.jit(lambda k: jmodel.init(k, x, proposals=proposals))(jax.random.key(0))
  with pytest.raises(UserError, match="external proposals"):
    jmodel.apply(variables, x)

  def loss_fn(params):
    out = jmodel.apply({"params": params}, x, train=True, targets={**targets, "proposals": proposals},
                       rngs={"sampling": jax.random.key(1), "dropout": jax.random.key(2)})
    return jmodel.detection_loss(out, targets, SIZE)[0], out

  loss, out = jax.jit(loss_fn)(variables["params"])
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert out["roi_proposals"].shape == (2, 23, 4) and int(out["roi_positive"][0].sum()) >= 3
  assert int(out["roi_positive"][1].sum()) == 0
  outputs = jax.jit(lambda v: jmodel.apply(v, x, proposals=proposals))(variables)
  dets = jax.jit(jmodel.postprocess, static_argnums=1)(outputs, SIZE)
  assert dets["boxes"].shape == (2, 100, 4)


def test_bad_options_and_state_dicts():
  with pytest.raises(UserError, match="backbone_name"):
    create_model("fasterrcnn_resnet50_fpn", backbone_name="vgg16")
  with pytest.raises(UserError, match="anchor_sizes"):
    create_model("fasterrcnn_resnet50_fpn", anchor_sizes=((32,), (64,)))
  with pytest.raises(UserError, match="box_head"):
    create_model("fasterrcnn_resnet50_fpn", box_head="mlp3")
  with pytest.raises(UserError, match="targets"):
    model = create_model("fasterrcnn_resnet50_fpn", **SMALL)
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=True), jnp.zeros((1, 64, 64, 3)))
  sd = {k: v.numpy() for k, v in small_torch_model().state_dict().items()}
  with pytest.raises(UserError, match="does not fit"):
    torch_to_flax("fasterrcnn_resnet50_fpn", sd)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
                                  "fasterrcnn_mobilenet_v3_large_fpn"])
def test_registered_models_match_torchvision_in_eval(name):
  torch.manual_seed(0)
  kwargs = dict(box_score_thresh=0.02, rpn_score_thresh=0.0)
  model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None, **kwargs)
  randomize_(model, torch.Generator().manual_seed(1))
  model.transform = IdentityTransform()
  jmodel = create_model(name, **kwargs)
  variables = torch_to_flax(name, model.state_dict())
  check_eval_parity(*run_eval(model, jmodel, variables), min_detections=1)
