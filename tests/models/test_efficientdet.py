"""EfficientDet against effdet 0.4.1 (Ross Wightman's port of the official TF models, `tf_efficientdet_dN`):
exact parameter counts, converted random weights (randomised BN statistics, eval mode) giving the same head
outputs, the same detections and the same loss (effdet's DetBenchTrain / anchor labeler + loss_fn), the loss's
own rules (padding, empty images, forced matches), and a jitted training step through the detection task.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
effdet = pytest.importorskip("effdet")

from effdet.anchors import Anchors, AnchorLabeler  # noqa: E402
from effdet.bench import DetBenchTrain  # noqa: E402
from effdet.loss import loss_fn as effdet_loss_fn  # noqa: E402

from experiments.configs import get_experiment  # noqa: E402
from experiments.configs.common import detection_config  # noqa: E402
from jaxcnn import create_model  # noqa: E402
from jaxcnn import data as data_lib  # noqa: E402
from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from jaxcnn.tasks.base import model_kwargs  # noqa: E402
from jaxcnn.tasks.detection import Detection  # noqa: E402
from jaxcnn.train.optim import make_schedule  # noqa: E402
from jaxcnn.utils import abstract_variables, param_count  # noqa: E402

# sum(p.numel() for p in effdet.create_model('tf_efficientdet_dN', pretrained_backbone=False).parameters()),
# 90 classes (the official head; num_classes=91 here). Official README table: 3.9M 6.6M 8.1M 12.0M 20.7M
# 33.7M 51.9M 51.9M.
EFFDET_PARAMS = {0: 3_880_067, 1: 6_625_898, 2: 8_097_039, 3: 12_032_296, 4: 20_723_675, 5: 33_653_315,
                 6: 51_871_782, 7: 51_871_782}
SIZE = (128, 128)
K = 90


def count(d):
  return param_count(abstract_variables(create_model(f"efficientdet_d{d}"), (1, 64, 64, 3))["params"])


def test_parameter_count_equals_effdet_d0():
  assert count(0) == EFFDET_PARAMS[0]


def test_coco_recipe_builds_d0_with_80_outputs_and_the_official_schedule():
  config, _ = get_experiment("efficientdet_d0_coco")
  model = create_model(config.model.name, **model_kwargs(config.model, config.train, num_classes=81))
  # D0 less 10 of the 90 outputs of the class head's last pointwise conv (9 anchors x (64 inputs + bias))
  assert param_count(abstract_variables(model, (1, 64, 64, 3))["params"]) == EFFDET_PARAMS[0] - 10 * 9 * 65
  assert config.data.image_size == 512 and config.train.batch_size == 64 and config.train.ema_decay == 0.9998
  assert config.train.steps == 300 * 120_000 // 64
  schedule = make_schedule(config.optim, config.train.steps)
  assert float(schedule(config.optim.warmup_steps)) == pytest.approx(0.08)
  assert float(schedule(config.train.steps)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("d", [1, 2, 3, 4, 5, 6, 7])
def test_parameter_counts_equal_effdet_slow(d):
  assert count(d) == EFFDET_PARAMS[d]


def randomize_(model, generator, size):
  """Random BN affines and edge weights (some negative: relu'd), BiFPN/head weights of O(1) gain, BN statistics
  measured on a random batch then made distinct."""
  with torch.no_grad():
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
      m.weight.uniform_(0.5, 1.5, generator=generator)
      m.bias.normal_(0.0, 0.2, generator=generator)
    for key, p in model.named_parameters():
      if key.endswith("edge_weights"):
        p.uniform_(-0.2, 1.5, generator=generator)
    for key, m in model.named_modules():
      if isinstance(m, torch.nn.Conv2d) and not key.startswith("backbone"):
        m.weight.normal_(0.0, (1.0 / m.weight[0].numel()) ** 0.5, generator=generator)
        if m.bias is not None:
          m.bias.normal_(0.0, 0.5, generator=generator)
    for bn in bns:
      bn.momentum = 1.0
    model.train()
    model(torch.randn(4, 3, *size, generator=generator))
    for bn in bns:
      bn.running_var.add_(bn.running_mean ** 2)
      bn.running_mean.mul_(torch.rand(bn.num_features, generator=generator))
  return model.eval()


def effdet_model(d, size):
  torch.manual_seed(0)
  model = effdet.create_model(f"tf_efficientdet_d{d}", pretrained=False, pretrained_backbone=False, image_size=size)
  return randomize_(model, torch.Generator().manual_seed(1), size)


def flatten(levels, width):
  """effdet's per-level NCHW head outputs -> [B, A, width] (levels, rows, columns, anchors)."""
  return torch.cat([x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, width) for x in levels], 1).numpy()


def to_levels(x, shapes, num_anchors=9):
  """[B, A, width] -> effdet's per-level NCHW list."""
  out, start = [], 0
  for h, w in shapes:
    n = h * w * num_anchors
    level = torch.from_numpy(np.ascontiguousarray(x[:, start:start + n]))
    out.append(level.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2))
    start += n
  return out


def random_targets(size, seed=0, counts=(3, 0, 6), max_boxes=6, min_wh=6, max_wh=64):
  """Padded jaxcnn targets (xyxy) and effdet's (yxyx, class -1 padding); image 1 has no boxes."""
  rng = np.random.default_rng(seed)
  b = len(counts)
  boxes, labels = np.zeros((b, max_boxes, 4), np.float32), np.zeros((b, max_boxes), np.int32)
  valid = np.zeros((b, max_boxes), bool)
  for i, n in enumerate(counts):
    wh = rng.uniform(min_wh, max_wh, size=(n, 2))
    x0, y0 = rng.uniform(0, size[1] - wh[:, 0]), rng.uniform(0, size[0] - wh[:, 1])
    boxes[i, :n] = np.stack([x0, y0, x0 + wh[:, 0], y0 + wh[:, 1]], 1)
    labels[i, :n], valid[i, :n] = rng.integers(1, K + 1, size=n), True
    boxes[i, n:] = rng.uniform(0, 50, size=(max_boxes - n, 4))   # padding garbage must not count
    labels[i, n:] = rng.integers(1, K + 1, size=max_boxes - n)
  torch_targets = {"bbox": torch.from_numpy(boxes[..., [1, 0, 3, 2]].copy()),
                   "cls": torch.from_numpy(np.where(valid, labels, -1).astype(np.float32))}
  return {"boxes": boxes, "labels": labels, "valid": valid}, torch_targets


@pytest.fixture(scope="module")
def d0_pair():
  """effdet's D0 in eval mode through DetBenchTrain (heads, loss, detections) and jaxcnn's on converted weights."""
  model = effdet_model(0, SIZE)
  bench = DetBenchTrain(model, create_labeler=True).eval()
  images = np.random.default_rng(0).uniform(-1, 1, size=(3, 3) + SIZE).astype(np.float32)
  targets, torch_targets = random_targets(SIZE)
  torch_targets.update(img_scale=torch.ones(3), img_size=torch.tensor([[SIZE[1], SIZE[0]]] * 3, dtype=torch.float32))
  heads = {}
  hook = model.register_forward_hook(lambda m, i, out: heads.update(cls=out[0], box=out[1]))
  with torch.no_grad():
    expected = bench(torch.from_numpy(images), torch_targets)
  hook.remove()
  torch_heads = {"cls_logits": flatten(heads["cls"], K), "bbox_regression": flatten(heads["box"], 4)}
  jmodel = create_model("efficientdet_d0")
  variables = torch_to_flax("tf_efficientdet_d0", model.state_dict())
  outputs = jax.device_get(jax.jit(jmodel.apply)(variables, images.transpose(0, 2, 3, 1)))
  return jmodel, torch_heads, outputs, targets, expected


def test_d0_heads_match_effdet(d0_pair):
  _, torch_heads, outputs, _, _ = d0_pair
  for key, expected in torch_heads.items():
    assert outputs[key].shape == expected.shape, key
    assert np.max(np.abs(outputs[key] - expected)) < 1e-4, key      # measured 1.4e-6
    assert np.max(np.abs(expected)) > 1.0, key


def test_d0_detections_match_effdet(d0_pair):
  jmodel, torch_heads, outputs, _, expected = d0_pair
  postprocess = jax.jit(jmodel.postprocess, static_argnums=1)
  detections = expected["detections"].numpy()                  # [B, 100, 6]: xyxy, score, class (1..90)
  for heads, atol in ((torch_heads, 1e-4), (outputs, 1e-3)):
    jdets = jax.device_get(postprocess(heads, SIZE))
    for i in range(len(detections)):
      n = int(jdets["valid"][i].sum())
      assert n == jmodel.detections_per_img == int((detections[i, :, 4] > 0).sum())
      np.testing.assert_array_equal(jdets["labels"][i], detections[i, :, 5].astype(np.int32))
      np.testing.assert_allclose(jdets["boxes"][i], detections[i, :, :4], atol=atol, rtol=1e-5)
      np.testing.assert_allclose(jdets["scores"][i], detections[i, :, 4], atol=1e-4)


def test_d0_loss_matches_effdet_bench(d0_pair):
  jmodel, torch_heads, outputs, targets, expected = d0_pair
  loss_fn = jax.jit(jmodel.detection_loss, static_argnums=2)
  for heads in (torch_heads, outputs):
    loss, metrics = loss_fn(heads, targets, SIZE)
    np.testing.assert_allclose(float(metrics["train/classification"]), float(expected["class_loss"]), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["train/bbox_regression"]), 50 * float(expected["box_loss"]), rtol=1e-4)
    np.testing.assert_allclose(float(loss), float(expected["loss"]), rtol=1e-4)
  assert float(expected["box_loss"]) > 0


def effdet_loss(model, heads, size, torch_targets):
  anchors = Anchors(3, 7, 3, [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4)], model.anchor_scale, size)
  labeler = AnchorLabeler(anchors, K, match_threshold=0.5)
  cls_targets, box_targets, num_positives = labeler.batch_label_anchors(torch_targets["bbox"], torch_targets["cls"])
  shapes = model.feature_shapes(size)
  total, cls_loss, box_loss = effdet_loss_fn(
      to_levels(heads["cls_logits"], shapes), to_levels(heads["bbox_regression"], shapes), cls_targets, box_targets,
      num_positives, num_classes=K, alpha=0.25, gamma=1.5, delta=0.1, box_loss_weight=50.0)
  return float(total), float(cls_loss), float(box_loss), anchors


@pytest.mark.parametrize("size, anchor_scale", [((96, 160), 4.0),
                                                pytest.param((100, 76), 5.0, marks=pytest.mark.slow)])
def test_anchors_and_loss_match_effdet_on_random_heads(size, anchor_scale):
  """Many boxes of all sizes (small ones only reach 0.5 IoU by the forced match), one empty image, padding."""
  model = create_model("efficientdet_d0", anchor_scale=anchor_scale)
  targets, torch_targets = random_targets(size, seed=1, counts=(5, 0, 12), max_boxes=12, min_wh=4, max_wh=70)
  rng = np.random.default_rng(2)
  num_anchors = len(model.anchors(size))
  heads = {"cls_logits": rng.normal(-3, 2, size=(3, num_anchors, K)).astype(np.float32),
           "bbox_regression": rng.normal(0, 0.3, size=(3, num_anchors, 4)).astype(np.float32)}
  total, cls_loss, box_loss, anchors = effdet_loss(model, heads, size, torch_targets)
  np.testing.assert_allclose(np.asarray(model.anchors(size)), anchors.boxes.numpy()[:, [1, 0, 3, 2]], atol=1e-5)
  loss, metrics = jax.jit(model.detection_loss, static_argnums=2)(heads, targets, size)
  np.testing.assert_allclose(float(metrics["train/classification"]), cls_loss, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["train/bbox_regression"]), 50 * box_loss, rtol=1e-4)
  np.testing.assert_allclose(float(loss), total, rtol=1e-4)


def test_padding_counts_nowhere_and_empty_images_are_background():
  model = create_model("efficientdet_d0")
  size = (64, 64)
  targets, _ = random_targets(size, counts=(2, 0, 3), max_boxes=5, min_wh=8, max_wh=40)
  rng = np.random.default_rng(3)
  num_anchors = len(model.anchors(size))
  heads = {"cls_logits": rng.normal(-3, 2, size=(3, num_anchors, K)).astype(np.float32),
           "bbox_regression": rng.normal(0, 0.3, size=(3, num_anchors, 4)).astype(np.float32)}
  loss_fn = jax.jit(model.detection_loss, static_argnums=2)
  loss, _ = loss_fn(heads, targets, size)
  # other garbage in the padded slots, or no padding at all (3 slots): the same loss
  other = dict(targets, boxes=np.where(targets["valid"][..., None], targets["boxes"], 7.0),
               labels=np.where(targets["valid"], targets["labels"], 5))
  trimmed = {k: v[:, :3] for k, v in targets.items()}
  for t in (other, trimmed):
    assert float(loss_fn(heads, t, size)[0]) == pytest.approx(float(loss), rel=1e-6)
  # a batch without boxes: all background, no box loss, focal loss / (0 + 1)
  empty = dict(targets, valid=np.zeros_like(targets["valid"]))
  loss, metrics = loss_fn(heads, empty, size)
  assert float(metrics["train/bbox_regression"]) == 0.0
  p = jax.nn.sigmoid(heads["cls_logits"])
  focal = -0.75 * p ** 1.5 * np.log1p(-np.asarray(p, np.float64))
  assert float(loss) == pytest.approx(float(np.sum(focal)), rel=1e-4)
  # zero-size box dimension M = 0
  none = {"boxes": np.zeros((3, 0, 4), np.float32), "labels": np.zeros((3, 0), np.int32),
          "valid": np.zeros((3, 0), bool)}
  assert float(loss_fn(heads, none, size)[0]) == pytest.approx(float(loss), rel=1e-6)


def test_every_box_gets_an_anchor_even_below_the_iou_threshold():
  """The forced match: a 3x3 box (IoU < 0.5 with every anchor) still has one positive anchor."""
  from jaxcnn.models.efficientdet import argmax_match
  from jaxcnn.ops import box_iou
  model = create_model("efficientdet_d0")
  anchors = model.anchors((64, 64))
  gt = jnp.array([[30.0, 30.0, 33.0, 33.0], [0.0, 0.0, 20.0, 20.0], [1.0, 1.0, 2.0, 2.0]])
  iou = box_iou(gt, anchors)
  assert float(jnp.max(iou[0])) < 0.5
  matches = argmax_match(iou, jnp.array([True, True, False]))
  assert int(jnp.sum(matches == 0)) == 1 and int(jnp.argmax(matches == 0)) == int(jnp.argmax(iou[0]))
  assert int(jnp.sum(matches == 1)) >= 1 and not bool(jnp.any(matches == 2))


def test_postprocess_labels_are_one_based_and_output_shapes_static():
  model = create_model("efficientdet_d0", num_classes=4, detections_per_img=7, score_thresh=0.3)
  size = (64, 96)
  num_anchors = len(model.anchors(size))
  assert num_anchors == sum(h * w for h, w in model.feature_shapes(size)) * 9
  rng = np.random.default_rng(0)
  heads = {"cls_logits": rng.normal(-2, 2, size=(2, num_anchors, 3)).astype(np.float32),
           "bbox_regression": rng.normal(0, 0.2, size=(2, num_anchors, 4)).astype(np.float32)}
  dets = jax.device_get(jax.jit(model.postprocess, static_argnums=1)(heads, size))
  assert dets["boxes"].shape == (2, 7, 4) and dets["valid"].all()
  assert set(dets["labels"].ravel()) <= {1, 2, 3} and (dets["scores"] > 0.3).all()
  assert (np.diff(dets["scores"], axis=1) <= 0).all()
  assert (dets["boxes"] >= 0).all() and (dets["boxes"][..., [2, 3]] <= [96, 64]).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"backbone_name": "resnet18"}, "backbone_name"),
    ({"num_classes": 1}, "num_classes"),
    ({"min_level": 3, "max_level": 3}, "max_level"),
    ({"weight_method": "max"}, "weight_method"),
])
def test_bad_fields_are_one_line_errors(kwargs, match):
  with pytest.raises(UserError, match=match) as err:
    create_model("efficientdet_d0", **kwargs)
  assert "\n" not in str(err.value)


def test_backbone_variables_are_the_classification_models(d0_pair):
  jmodel = d0_pair[0]
  det = abstract_variables(jmodel, (1, 64, 64, 3))
  cls = abstract_variables(create_model("efficientnet_b0"), (1, 64, 64, 3))
  strip = lambda tree: {k: v for k, v in tree.items() if k not in ("head", "classifier")}
  for collection in ("params", "batch_stats"):
    assert (jax.tree.map(lambda x: x.shape, det[collection]["backbone"])
            == jax.tree.map(lambda x: x.shape, strip(cls[collection])))


def host_init(shapes, seed=0):
  """Variables of the given shapes drawn on the host (compiling the model's random init costs more than the step):
  kernels N(0, 1 / fan-in), BN scale and variance 1, edge weights 1, the rest 0."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return jnp.asarray(rng.normal(0, np.prod(leaf.shape[:-1]) ** -0.5, leaf.shape), jnp.float32)
    if name in ("scale", "var", "edge_weights"):
      return jnp.ones(leaf.shape, jnp.float32)
    return jnp.zeros(leaf.shape, jnp.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.slow  # compile-bound; the fast set keeps D0 parity and the loss rules
def test_one_jitted_training_step_through_the_detection_task():
  """A tiny EfficientDet (B0 with stochastic depth, 16-channel single-cell BiFPN on P3-P5, one head conv) on
  digits_det: the task's loss and gradients, one Adam step; the loss drops on the same batch after a few more."""
  c = detection_config()
  c.model.name = "efficientdet_d0"
  with c.model.unlocked():
    c.model.update(fpn_channels=16, fpn_cells=1, head_convs=1, min_level=3, max_level=5, anchor_scale=3.0,
                   backbone_drop_path_rate=0.2)
  c.data.name, c.data.image_size = "digits_det", 64
  task = Detection(c, data_lib.dataset_info("digits_det"))
  assert task.model.num_classes == 11
  batch = {k: jnp.asarray(v) for k, v in next(iter(data_lib.eval_iterator(c.data, global_batch_size=4))).items()}
  variables = host_init(jax.eval_shape(task.init, jax.random.PRNGKey(0), batch))
  params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, state, opt_state):
    (loss, (new_state, metrics)), grads = jax.value_and_grad(task.loss, has_aux=True)(
        params, state, batch, jax.random.PRNGKey(1))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state, opt_state, loss, metrics, grads

  params, state, opt_state, first, metrics, grads = step(params, state, opt_state)
  assert np.isfinite(float(first))
  assert float(metrics["train/loss"]) == pytest.approx(float(metrics["train/classification"])
                                                       + float(metrics["train/bbox_regression"]), rel=1e-5)
  for part in ("backbone", "bifpn", "class_net", "box_net"):
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads[part])) > 0, part
  assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), state["batch_stats"],
                                       variables["batch_stats"]))
  for _ in range(4):
    params, state, opt_state, loss, _, _ = step(params, state, opt_state)
  assert float(loss) < float(first)


@pytest.mark.slow
@pytest.mark.parametrize("d", [1, 2, 3, 4, 5, 6, 7])
def test_heads_match_effdet_slow(d):
  size = (64, 64)
  model = effdet_model(d, size)
  images = np.random.default_rng(0).uniform(-1, 1, size=(1, 3) + size).astype(np.float32)
  with torch.no_grad():
    cls, box = model(torch.from_numpy(images))
  jmodel = create_model(f"efficientdet_d{d}")
  outputs = jax.jit(jmodel.apply)(torch_to_flax(f"tf_efficientdet_d{d}", model.state_dict()),
                                  images.transpose(0, 2, 3, 1))
  for key, expected in (("cls_logits", flatten(cls, K)), ("bbox_regression", flatten(box, 4))):
    assert np.max(np.abs(np.asarray(outputs[key]) - expected)) < 1e-4, key


def test_converter_refuses_other_layouts():
  with pytest.raises(UserError, match="convertible"):
    torch_to_flax("efficientdet_d9", {})
  with pytest.raises(UserError, match="does not fit"):
    torch_to_flax("efficientdet_d0", {"backbone.conv_stem.weight": np.zeros((32, 3, 3, 3), np.float32)})


def test_initialisation_as_effdet():
  """Class prior bias -log(99), zero box bias, head kernels N(0, 1 / fan-in), BiFPN edge weights 1."""
  from jaxcnn.layers.bifpn import BiFPN
  from jaxcnn.models.efficientdet import EfficientDetHead
  features = [jnp.zeros((1, 8, 8, 32)), jnp.zeros((1, 4, 4, 32))]
  head = EfficientDetHead(5, 9, 2, 32)
  params = head.init(jax.random.PRNGKey(0), features)["params"]
  np.testing.assert_array_equal(params["predict"]["conv_pw"]["bias"], 0.0)
  params = EfficientDetHead(5, 9, 2, 32, prior_bias=-np.log(99.0)).init(jax.random.PRNGKey(0), features)["params"]
  np.testing.assert_allclose(params["predict"]["conv_pw"]["bias"], -np.log(99.0), rtol=1e-6)
  assert sorted(params) == ["bn_rep_0_0", "bn_rep_0_1", "bn_rep_1_0", "bn_rep_1_1", "conv_rep_0", "conv_rep_1",
                            "predict"]
  pw = np.asarray(params["predict"]["conv_pw"]["kernel"])
  dw = np.asarray(params["conv_rep_0"]["conv_dw"]["kernel"])
  assert pw.shape == (1, 1, 32, 45) and dw.shape == (3, 3, 1, 32)
  assert abs(pw.std() * np.sqrt(32) - 1) < 0.1 and abs(dw.std() * 3 - 1) < 0.15
  fpn = BiFPN(16, 1, num_levels=3).init(jax.random.PRNGKey(0), [jnp.zeros((1, 8, 8, 24)), jnp.zeros((1, 4, 4, 40))])
  node = fpn["params"]["cell_0"]["node_2"]   # bottom-up level 1: [P1, td1, out0]
  np.testing.assert_array_equal(node["edge_weights"], [1.0, 1.0, 1.0])
  assert sorted(node) == ["conv", "edge_weights", "resample_1"]   # only the 40-channel backbone map is projected
