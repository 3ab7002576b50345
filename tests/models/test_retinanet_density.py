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
  weighted = create_model("retinanet_resnet50_fpn", density_head=True, density_weight=2.0, **SMALL)
  plain = create_model("retinanet_resnet50_fpn", **SMALL)
  heads, targets = loss_inputs(model)
  num_anchors = heads["cls_logits"].shape[1]
  exact = np.broadcast_to(np.asarray([np.log(0.6 / 0.4), -30.0], np.float32)[:, None, None], (2, num_anchors, 1))
  # sigmoid(0) = 0.5 everywhere: every foreground anchor of image 0 costs 0.5 * 0.1^2, of image 1 0.5 * 0.5^2;
  # divided by the image's foreground count, averaged over the images
  half = np.zeros((2, num_anchors, 1), np.float32)

  @jax.jit
  def run(densities):
    def loss(d):
      return model.detection_loss({**heads, "density": d}, targets, SIZE)
    (total, metrics), grad = jax.vmap(jax.value_and_grad(loss, has_aux=True))(densities)
    return (total, metrics, grad, weighted.detection_loss({**heads, "density": densities[1]}, targets, SIZE),
            plain.detection_loss(heads, targets, SIZE))

  total, metrics, grad, (_, weighted_metrics), (ref_loss, ref_metrics) = run(jnp.stack([exact, half]))
  assert "train/density" not in ref_metrics
  for key, value in ref_metrics.items():
    np.testing.assert_allclose(np.asarray(metrics[key]), [float(value)] * 2, rtol=1e-6)
  assert abs(float(metrics["train/density"][0])) < 1e-6
  np.testing.assert_allclose(float(total[0]), float(ref_loss), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["train/density"][1]), (0.005 + 0.125) / 2, rtol=1e-5)
  np.testing.assert_allclose(float(total[1]), float(ref_loss) + (0.005 + 0.125) / 2, rtol=1e-5)
  np.testing.assert_allclose(float(weighted_metrics["train/density"]), 0.13, rtol=1e-5)
  assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad[1])).sum() > 0


def two_box_heads(model, cases):
  """Raw outputs, one image per (density, labels) case, where exactly two anchors fire, decoding to A and B."""
  anchors = np.asarray(model.anchors(SIZE))
  num_anchors = len(anchors)
  picks = [num_anchors // 3, num_anchors // 3 + 5]
  cls = np.full((len(cases), num_anchors, 4), -10.0, np.float32)
  reg = np.zeros((len(cases), num_anchors, 4), np.float32)
  dens = np.full((len(cases), num_anchors, 1), -10.0, np.float32)
  coder = model.box_coder()
  for b, (density, labels) in enumerate(cases):
    for anchor, box, label, score in zip(picks, [A, B], labels, [4.0, 3.0]):
      cls[b, anchor, label] = score
      reg[b, anchor] = np.asarray(coder.encode(jnp.asarray([box]), jnp.asarray(anchors[anchor:anchor + 1])))[0]
      dens[b, anchor, 0] = np.log(density / (1 - density))
  return {"cls_logits": cls, "bbox_regression": reg, "density": dens}


def test_postprocess_uses_adaptive_nms():
  """Same-class boxes with IoU 0.6 at Nt 0.5: both kept at density 0.7, one at 0.1; other classes never suppress."""
  cases = [(0.7, (1, 1)), (0.1, (1, 1)), (0.1, (1, 2))]
  model = create_model("retinanet_resnet50_fpn", density_head=True, nms_thresh=0.5, **SMALL)
  heads = two_box_heads(model, cases)
  plain = create_model("retinanet_resnet50_fpn", nms_thresh=0.5, **SMALL)
  # without the density head ('density' not read) same-class boxes always suppress at 0.5
  dets, ref = jax.jit(lambda h: (model.postprocess(h, SIZE), plain.postprocess(
      {k: v for k, v in h.items() if k != "density"}, SIZE)))(heads)
  for b, ((_, labels), survivors) in enumerate(zip(cases, [2, 1, 2])):
    assert np.asarray(dets["valid"][b]).sum() == survivors
    np.testing.assert_allclose(np.asarray(dets["boxes"][b, :survivors]), np.asarray([A, B])[:survivors], atol=1e-3)
    assert list(np.asarray(dets["labels"][b, :survivors])) == list(labels[:survivors])
  assert list(np.asarray(ref["valid"]).sum(1)) == [1, 1, 2]
