"""RetinaNet's optional Adaptive NMS density head (Liu et al. 2019): parameters, targets, loss, postprocess."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.models.retinanet import density_targets
from jaxcnn.utils import abstract_variables, param_count

SIZE = (64, 64)
SMALL = dict(backbone_name="resnet18", num_classes=4, fpn_channels=32, returned_layers=(1, 2, 3),
             extra_blocks="none", anchor_sizes=((12, 16), (24, 32), (48, 64)), head_convs=1)
A = [10.0, 10.0, 40.0, 40.0]
B = [17.5, 10.0, 47.5, 40.0]   # IoU(A, B) = 675 / 1125 = 0.6
C = [5.0, 5.0, 30.0, 50.0]


def shapes(tree):
  return jax.tree.map(lambda v: (v.shape, v.dtype), tree)


def test_default_off_keeps_the_parameter_tree_and_on_adds_only_the_density_branch():
  base = abstract_variables(create_model("retinanet_resnet50_fpn"), (1, 64, 64, 3))
  off = abstract_variables(create_model("retinanet_resnet50_fpn", density_head=False), (1, 64, 64, 3))
  assert shapes(base) == shapes(off) and param_count(off["params"]) == 34_068_119
  on = abstract_variables(create_model("retinanet_resnet50_fpn", density_head=True), (1, 64, 64, 3))["params"]
  branch = dict(on["head"]).pop("density_head")
  rest = {**on, "head": {k: v for k, v in on["head"].items() if k != "density_head"}}
  assert shapes(rest) == shapes(base["params"])
  # 4 x (3x3 256->256 conv + bias) + 3x3 256->9 anchors conv + bias
  assert param_count(branch) == 4 * (9 * 256 * 256 + 256) + 9 * 256 * 9 + 9
  assert param_count(on) == 34_068_119 + param_count(branch)
  assert branch["density"]["kernel"].shape == (3, 3, 256, 9)
  model = create_model("retinanet_resnet50_fpn", density_head=True, **SMALL)
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0],
                       jax.ShapeDtypeStruct((2,) + SIZE + (3,), jnp.float32))
  num_anchors = len(model.anchors(SIZE))
  assert out["density"].shape == (2, num_anchors, 1) and out["cls_logits"].shape == (2, num_anchors, 4)
  off_out = jax.eval_shape(lambda x: create_model("retinanet_resnet50_fpn", **SMALL).init_with_output(
      jax.random.key(0), x)[0], jax.ShapeDtypeStruct((2,) + SIZE + (3,), jnp.float32))
  assert sorted(off_out) == ["bbox_regression", "cls_logits"]
  with pytest.raises(UserError, match="density_weight"):
    create_model("retinanet_resnet50_fpn", density_head=True, density_weight=-1.0)


def test_density_targets_on_hand_built_images():
  boxes = jnp.asarray([A, B, A, C], jnp.float32)
  # slot 2 duplicates A but is padding: it must not raise A's density to 1
  d = density_targets(boxes, jnp.asarray([True, True, False, False]))
  np.testing.assert_allclose(np.asarray(d[:2]), [0.6, 0.6], atol=1e-6)
  d = density_targets(boxes, jnp.asarray([False, False, False, True]))
  assert float(d[3]) == 0.0
  d = density_targets(boxes, jnp.asarray([True, False, True, False]))   # two identical boxes: IoU 1
  np.testing.assert_allclose(np.asarray(d)[[0, 2]], [1.0, 1.0], atol=1e-6)


def loss_inputs(model):
  """Image 0: A and B (density 0.6 each) + padding; image 1: C alone + padding overlapping it."""
  boxes = np.asarray([[A, B, A], [C, C, A]], np.float32)
  targets = {"boxes": boxes, "labels": np.asarray([[1, 2, 1], [3, 3, 3]], np.int32),
             "valid": np.asarray([[True, True, False], [True, False, False]])}
  rng = np.random.default_rng(0)
  num_anchors = len(model.anchors(SIZE))
  heads = {"cls_logits": rng.normal(-2, 1, (2, num_anchors, 4)).astype(np.float32),
           "bbox_regression": rng.normal(0, 0.3, (2, num_anchors, 4)).astype(np.float32)}
  return heads, targets


def test_density_loss_zero_at_target_and_normalised_like_the_box_loss():
  model = create_model("retinanet_resnet50_fpn", density_head=True, **SMALL)
  heads, targets = loss_inputs(model)
  loss_fn = jax.jit(model.detection_loss, static_argnums=2)
  num_anchors = heads["cls_logits"].shape[1]
  logit06 = np.log(0.6 / 0.4)
  exact = np.broadcast_to(np.asarray([logit06, -30.0], np.float32)[:, None, None], (2, num_anchors, 1))
  loss, metrics = loss_fn({**heads, "density": exact}, targets, SIZE)
  assert abs(float(metrics["train/density"])) < 1e-6
  ref_loss, ref_metrics = jax.jit(create_model("retinanet_resnet50_fpn", **SMALL).detection_loss,
                                  static_argnums=2)(heads, targets, SIZE)
  assert "train/density" not in ref_metrics
  for key, value in ref_metrics.items():
    np.testing.assert_allclose(float(metrics[key]), float(value), rtol=1e-6)
  # sigmoid(0) = 0.5 everywhere: every foreground anchor of image 0 costs 0.5 * 0.1^2, of image 1 0.5 * 0.5^2;
  # divided by the image's foreground count, averaged over the images
  half = {**heads, "density": np.zeros((2, num_anchors, 1), np.float32)}
  loss, metrics = loss_fn(half, targets, SIZE)
  np.testing.assert_allclose(float(metrics["train/density"]), (0.005 + 0.125) / 2, rtol=1e-5)
  np.testing.assert_allclose(float(loss), float(ref_loss) + (0.005 + 0.125) / 2, rtol=1e-5)
  weighted = create_model("retinanet_resnet50_fpn", density_head=True, density_weight=2.0, **SMALL)
  _, metrics2 = jax.jit(weighted.detection_loss, static_argnums=2)(half, targets, SIZE)
  np.testing.assert_allclose(float(metrics2["train/density"]), 0.13, rtol=1e-5)
  grad = jax.grad(lambda h: model.detection_loss(h, targets, SIZE)[0])(half)["density"]
  assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).sum() > 0


def two_box_heads(model, density, labels=(1, 1)):
  """Raw outputs where exactly two anchors (one image) fire, decoding to boxes A and B with the given density."""
  anchors = np.asarray(model.anchors(SIZE))
  num_anchors = len(anchors)
  picks = [num_anchors // 3, num_anchors // 3 + 5]
  cls = np.full((1, num_anchors, 4), -10.0, np.float32)
  reg = np.zeros((1, num_anchors, 4), np.float32)
  dens = np.full((1, num_anchors, 1), -10.0, np.float32)
  for i, (anchor, box, label, score) in enumerate(zip(picks, [A, B], labels, [4.0, 3.0])):
    cls[0, anchor, label] = score
    reg[0, anchor] = np.asarray(model.box_coder().encode(jnp.asarray([box]), jnp.asarray(anchors[anchor:anchor + 1])))[0]
    dens[0, anchor, 0] = np.log(density / (1 - density))
  return {"cls_logits": cls, "bbox_regression": reg, "density": dens}


@pytest.mark.parametrize("density,labels,survivors", [(0.7, (1, 1), 2), (0.1, (1, 1), 1), (0.1, (1, 2), 2)])
def test_postprocess_uses_adaptive_nms(density, labels, survivors):
  model = create_model("retinanet_resnet50_fpn", density_head=True, nms_thresh=0.5, **SMALL)
  heads = two_box_heads(model, density, labels)
  dets = jax.jit(model.postprocess, static_argnums=1)(heads, SIZE)
  valid = np.asarray(dets["valid"][0])
  assert valid.sum() == survivors
  np.testing.assert_allclose(np.asarray(dets["boxes"][0, :survivors]), np.asarray([A, B])[:survivors], atol=1e-3)
  assert list(np.asarray(dets["labels"][0, :survivors])) == list(labels[:survivors])
  # without the density head (no 'density' output read) the same class always suppresses at 0.5
  plain = create_model("retinanet_resnet50_fpn", nms_thresh=0.5, **SMALL)
  ref = jax.jit(plain.postprocess, static_argnums=1)({k: v for k, v in heads.items() if k != "density"}, SIZE)
  assert int(np.asarray(ref["valid"][0]).sum()) == (1 if labels[0] == labels[1] else 2)
