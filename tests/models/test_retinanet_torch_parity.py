"""torchvision's RetinaNet and jaxcnn's, with converted random weights: head outputs, detections, loss.

The torchvision model is built without weights (BatchNorm2d, as jaxcnn's defaults), its BN statistics
measured on a random batch and made distinct, its FPN/head weights and biases randomised (the 0.01-std
init would leave every logit at its bias), eval mode, its transform replaced by the identity (no resize,
no normalisation, no padding: checked), batch 2 at 64x96. Head outputs within 1e-4; post-processed
detections (keep_background_class=True: torchvision scores the background column too) the same boxes
within 1e-3, labels and order. The loss is compared on identical random head outputs and anchors against
torchvision's `compute_loss` (random targets, padded slots, one image without boxes), jitted.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torchvision.models.detection.image_list import ImageList  # noqa: E402

from jaxcnn import create_model  # noqa: E402
from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from jaxcnn.models.retinanet import backbone_freeze_pattern  # noqa: E402
from jaxcnn.utils import abstract_variables, param_count  # noqa: E402

# sum(p.numel() for p in torchvision.models.detection.<name>(weights=None, weights_backbone=None).parameters())
TORCHVISION_PARAMS = {"retinanet_resnet50_fpn": 34_068_119, "retinanet_resnet50_fpn_v2": 38_198_935,
                      "fcos_resnet50_fpn": 32_322_720}
SIZE = (64, 96)


class IdentityTransform(torch.nn.Module):
  """GeneralizedRCNNTransform without resize, normalisation or padding: images go through unchanged."""

  def forward(self, images, targets=None):
    batch = torch.stack(list(images))
    return ImageList(batch, [tuple(batch.shape[-2:])] * len(batch)), targets

  def postprocess(self, detections, image_sizes, original_image_sizes):
    return detections


def randomize_detector_(model, generator, size=SIZE):
  """Random BN/GN affines, BN statistics measured on a random batch, FPN/head weights of O(1) gain."""
  with torch.no_grad():
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in model.modules():
      if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
        m.weight.uniform_(0.5, 1.5, generator=generator)
        m.bias.normal_(0.0, 0.2, generator=generator)
    for key, m in model.named_modules():
      if isinstance(m, torch.nn.Conv2d) and (key.startswith("head") or key.startswith("backbone.fpn")):
        fan_in = m.weight[0].numel()
        m.weight.normal_(0.0, (1.0 / fan_in) ** 0.5, generator=generator)
        if m.bias is not None:
          m.bias.normal_(0.0, 0.5, generator=generator)
    for bn in bns:
      bn.momentum = 1.0
    model.backbone.body.train()
    model.backbone.body(torch.randn(4, 3, *size, generator=generator))
    for bn in bns:
      bn.running_var.add_(bn.running_mean ** 2)
      bn.running_mean.mul_(torch.rand(bn.num_features, generator=generator))
  return model.eval()


def torch_detector(name, **kwargs):
  torch.manual_seed(0)
  model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None, **kwargs)
  randomize_detector_(model, torch.Generator().manual_seed(1))
  model.transform = IdentityTransform()
  return model.eval()


def run_both(name, **torch_kwargs):
  """torch heads and detections, jax heads, jax detections of the jax heads and of the torch heads."""
  model = torch_detector(name, **torch_kwargs)
  heads = {}
  hook = model.head.register_forward_hook(lambda module, inputs, out: heads.update(out))
  images = np.random.default_rng(0).uniform(-1, 1, size=(2, 3) + SIZE).astype(np.float32)
  with torch.no_grad():
    detections = model(list(torch.from_numpy(images)))
  hook.remove()
  heads = {k: v.numpy() for k, v in heads.items()}
  jmodel = create_model(name, keep_background_class=True, **torch_kwargs)
  variables = torch_to_flax(name, model.state_dict())
  outputs = jax.jit(jmodel.apply)(variables, images.transpose(0, 2, 3, 1))
  postprocess = jax.jit(jmodel.postprocess, static_argnums=1)
  return (heads, detections, jax.device_get(outputs), jax.device_get(postprocess(outputs, SIZE)),
          jax.device_get(postprocess(heads, SIZE)))


def check_detections(jdets, detections, min_detections, atol, rtol=0.0):
  for i, det in enumerate(detections):
    n = int(jdets["valid"][i].sum())
    assert n == len(det["boxes"]) >= min_detections
    assert not jdets["valid"][i, n:].any()
    np.testing.assert_array_equal(jdets["labels"][i, :n], det["labels"].numpy())
    np.testing.assert_allclose(jdets["boxes"][i, :n], det["boxes"].numpy(), atol=atol, rtol=rtol)
    np.testing.assert_allclose(jdets["scores"][i, :n], det["scores"].numpy(), atol=1e-4, rtol=0)


def check_parity(heads, detections, outputs, jdets, jdets_of_torch_heads, min_detections=20):
  """Heads within 1e-4; detections of torch's heads within 1e-4; of jaxcnn's heads within 1e-3 (+1e-5 rel.)."""
  assert sorted(heads) == sorted(outputs)
  for key, expected in heads.items():
    assert outputs[key].shape == expected.shape, key
    assert np.max(np.abs(outputs[key] - expected)) < 1e-4, key
    assert np.max(np.abs(expected)) > 0.5, key  # not a trivially small output
  check_detections(jdets_of_torch_heads, detections, min_detections, atol=1e-4)
  # head differences of ~1e-5 grow through exp() in the box decoding: 46.0382 vs 46.0392 seen once
  check_detections(jdets, detections, min_detections, atol=1e-3, rtol=1e-5)


def test_parameter_counts():
  for name, expected in TORCHVISION_PARAMS.items():
    variables = abstract_variables(create_model(name), (1, 64, 64, 3))
    assert param_count(variables["params"]) == expected, name


def test_retinanet_heads_and_detections():
  results = run_both("retinanet_resnet50_fpn")
  check_parity(*results)
  detections = results[1]
  assert any((det["labels"] == 0).any() for det in detections)  # the background column is really compared


@pytest.mark.slow
def test_retinanet_v2_heads_and_detections():
  check_parity(*run_both("retinanet_resnet50_fpn_v2"))


def targets_pair(num_classes, seed=0, size=SIZE, max_boxes=5):
  """Random targets as torchvision lists and as padded arrays; image 1 has no boxes."""
  rng = np.random.default_rng(seed)
  counts = [3, 0, max_boxes]
  boxes = np.zeros((3, max_boxes, 4), np.float32)
  labels = np.zeros((3, max_boxes), np.int32)
  valid = np.zeros((3, max_boxes), bool)
  torch_targets = []
  for i, n in enumerate(counts):
    wh = rng.uniform(8, 48, size=(n, 2))
    x0 = rng.uniform(0, size[1] - wh[:, 0])
    y0 = rng.uniform(0, size[0] - wh[:, 1])
    b = np.stack([x0, y0, x0 + wh[:, 0], y0 + wh[:, 1]], 1).astype(np.float32)
    lab = rng.integers(1, num_classes, size=n)
    boxes[i, :n], labels[i, :n], valid[i, :n] = b, lab, True
    boxes[i, n:] = rng.uniform(0, 50, size=(max_boxes - n, 4))  # padding garbage must not count
    torch_targets.append({"boxes": torch.from_numpy(b).reshape(-1, 4), "labels": torch.from_numpy(lab).long()})
  return torch_targets, {"boxes": boxes, "labels": labels, "valid": valid}


def random_heads(num_anchors, num_classes, fcos=False, seed=0):
  rng = np.random.default_rng(seed)
  heads = {"cls_logits": rng.normal(-2, 2, size=(3, num_anchors, num_classes)).astype(np.float32),
           "bbox_regression": rng.normal(0, 0.5, size=(3, num_anchors, 4)).astype(np.float32)}
  if fcos:
    heads["bbox_regression"] = np.abs(heads["bbox_regression"]) + 0.2
    heads["bbox_ctrness"] = rng.normal(0, 2, size=(3, num_anchors, 1)).astype(np.float32)
  return heads


def loss_parity(torch_loss_fn, jmodel, fcos=False):
  """torchvision's loss dict vs jaxcnn's (jitted) on the same random heads, anchors and targets; finite grads."""
  anchors = np.array(jmodel.anchors(SIZE))
  torch_targets, targets = targets_pair(jmodel.num_classes)
  heads = random_heads(len(anchors), jmodel.num_classes, fcos=fcos)
  with torch.no_grad():
    expected = torch_loss_fn(torch_targets, {k: torch.from_numpy(v) for k, v in heads.items()},
                             [torch.from_numpy(anchors)] * 3)
  loss, metrics = jax.jit(jmodel.detection_loss, static_argnums=2)(heads, targets, SIZE)
  assert sorted(metrics) == sorted(f"train/{k}" for k in expected)
  for key, value in expected.items():
    np.testing.assert_allclose(float(metrics[f"train/{key}"]), float(value), rtol=1e-4, err_msg=key)
    assert float(value) > 0, key
  np.testing.assert_allclose(float(loss), float(sum(expected.values())), rtol=1e-4)
  grads = jax.grad(lambda h: jmodel.detection_loss(h, targets, SIZE)[0])(heads)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2"])
def test_loss_matches_torchvision(name):
  model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None)
  jmodel = create_model(name)
  # torchvision's anchors for the same feature maps are jaxcnn's
  feats = [torch.zeros(1, 1, h, w) for h, w in jmodel.feature_shapes(SIZE)]
  torch_anchors = model.anchor_generator(ImageList(torch.zeros(1, 3, *SIZE), [SIZE]), feats)[0]
  np.testing.assert_array_equal(np.asarray(jmodel.anchors(SIZE)), torch_anchors.numpy())
  loss_parity(model.compute_loss, jmodel)


def test_smooth_l1_box_loss_matches_torchvision():
  model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
  model.head.regression_head._loss_type = "smooth_l1"
  loss_parity(model.compute_loss, create_model("retinanet_resnet50_fpn", bbox_reg_loss="smooth_l1"))


def test_default_postprocess_never_outputs_background():
  model = create_model("retinanet_resnet50_fpn")
  heads = random_heads(len(model.anchors(SIZE)), 91)
  heads["cls_logits"][..., 0] += 10.0  # the background column would win everywhere
  dets = jax.jit(model.postprocess, static_argnums=1)(heads, SIZE)
  assert dets["boxes"].shape == (3, 300, 4) and dets["valid"].sum() > 0
  assert (np.asarray(dets["labels"])[np.asarray(dets["valid"])] >= 1).all()
  assert (np.asarray(dets["boxes"]) >= 0).all() and (np.asarray(dets["boxes"])[..., 2] <= SIZE[1]).all()


def test_small_retinanet_trains_with_frozen_bn():
  """A resnet18 model for small canvases: shapes, a finite gradient, frozen BN statistics in train mode."""
  model = create_model("retinanet_resnet50_fpn", backbone_name="resnet18", num_classes=11, fpn_channels=64,
                       returned_layers=(1, 2, 3), extra_blocks="none", anchor_sizes=((12, 16), (24, 32), (48, 64)),
                       head_convs=2, frozen_bn=True)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 64, 64, 1)), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  _, targets = targets_pair(11, size=(64, 64))

  def loss_fn(params):
    out, state = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    assert out["cls_logits"].shape == (3, len(model.anchors((64, 64))), 11)
    return model.detection_loss(out, targets, (64, 64))[0], state

  (loss, state), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
  assert np.isfinite(float(loss)) and all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  # frozen BN: the backbone's statistics do not move in train mode
  same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), state["batch_stats"]["backbone"],
                      variables["batch_stats"]["backbone"])
  assert all(jax.tree.leaves(same))


@pytest.mark.parametrize("layers,frozen_bn", [(3, True), (0, True), (5, False), (1, False)])
def test_backbone_freeze_pattern_is_torchvisions_rule(layers, frozen_bn):
  """The regex freezes exactly the backbone parameters torchvision leaves with requires_grad=False."""
  import re
  from flax import traverse_util
  from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
  from torchvision.ops.misc import FrozenBatchNorm2d
  from jaxcnn.convert.resnet import _flax_path
  norm = FrozenBatchNorm2d if frozen_bn else torch.nn.BatchNorm2d
  extractor = _resnet_fpn_extractor(torchvision.models.resnet18(norm_layer=norm), layers, [2, 3, 4])
  trained = set()
  for key, p in extractor.body.named_parameters():
    module, leaf = key.rsplit(".", 1)
    if p.requires_grad:
      trained.add("/".join(("backbone",) + _flax_path(module)) + "/" + {"weight": "w", "bias": "b"}[leaf])
  params = abstract_variables(create_model("resnet18", return_features=True), (1, 32, 32, 3))["params"]
  pattern = re.compile(backbone_freeze_pattern(layers, frozen_bn) or "^$")
  ours = set()
  for path in traverse_util.flatten_dict({"backbone": params}, sep="/"):
    if not pattern.search(path):
      module, leaf = path.rsplit("/", 1)
      ours.add(module + "/" + {"kernel": "w", "scale": "w", "bias": "b"}[leaf])
  assert ours == trained and (trained or layers == 0)
  assert not pattern.search("fpn/inner_blocks_0/conv/kernel")
  assert not pattern.search("head/regression_head/bbox_reg/bias")


def test_bad_options_and_state_dicts():
  with pytest.raises(UserError, match="anchor_sizes"):
    create_model("retinanet_resnet50_fpn", anchor_sizes=((32,), (64,)))
  with pytest.raises(UserError, match="same number of sizes"):
    create_model("retinanet_resnet50_fpn", anchor_sizes=((32,), (64, 80), (128,), (256,), (512,)))
  with pytest.raises(UserError, match="backbone_name"):
    create_model("retinanet_resnet50_fpn", backbone_name="vgg16")
  with pytest.raises(UserError, match="returned_layers"):
    create_model("retinanet_resnet50_fpn", returned_layers=(3, 2))
  sd = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
  with pytest.raises(UserError, match="does not fit"):
    torch_to_flax("retinanet_resnet50_fpn_v2", sd)
