"""torchvision's FCOS and jaxcnn's, with converted random weights: head outputs, detections, loss.

Same set-up as test_retinanet_torch_parity.py (random weights with O(1) gain, measured BN statistics,
identity transform, batch 2 at 64x96, keep_background_class=True for the detection comparison): head
outputs within 1e-4, detections (score sqrt(cls * ctrness) > 0.2, NMS 0.6, 100 per image) the same
boxes within 1e-3, labels and order. The loss (centre-sampling matcher, focal / GIoU / centerness BCE
over the batch's foreground) against torchvision's `compute_loss` on identical random head outputs,
anchors and targets (one image without boxes), jitted; the pmap normaliser through a named vmap axis.
"""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn import create_model  # noqa: E402
from test_retinanet_torch_parity import (SIZE, check_parity, loss_parity, random_heads, run_both,  # noqa: E402
                                         targets_pair)


def test_fcos_heads_and_detections():
  check_parity(*run_both("fcos_resnet50_fpn"), min_detections=5)


def test_fcos_loss_matches_torchvision():
  model = torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None)
  jmodel = create_model("fcos_resnet50_fpn")
  levels = [h * w for h, w in jmodel.feature_shapes(SIZE)]
  loss_parity(lambda t, h, a: model.compute_loss(t, h, a, levels), jmodel, fcos=True)


def test_fcos_loss_normaliser_over_devices():
  """With axis_name, the mean over devices of the per-device losses is the loss of the whole batch."""
  jmodel = create_model("fcos_resnet50_fpn")
  heads = random_heads(len(jmodel.anchors(SIZE)), 91, fcos=True)
  _, targets = targets_pair(91)
  whole = jmodel.detection_loss(heads, targets, SIZE)[0]
  split = lambda tree: jax.tree.map(lambda x: x[:, None], tree)  # 3 "devices" of one image each
  per_device = jax.vmap(lambda h, t: jmodel.detection_loss(h, t, SIZE, axis_name="d")[0], axis_name="d")(
      split(heads), split(targets))
  np.testing.assert_allclose(float(np.mean(per_device)), float(whole), rtol=1e-5)
  assert not np.allclose(per_device, per_device[0])  # the devices really see different images


def test_fcos_default_postprocess_drops_background():
  jmodel = create_model("fcos_resnet50_fpn")
  heads = random_heads(len(jmodel.anchors(SIZE)), 91, fcos=True)
  heads["cls_logits"][..., 0] += 10.0
  dets = jax.jit(jmodel.postprocess, static_argnums=1)(heads, SIZE)
  assert dets["labels"].shape == (3, 100) and dets["valid"].sum() > 0
  assert (np.asarray(dets["labels"])[np.asarray(dets["valid"])] >= 1).all()
