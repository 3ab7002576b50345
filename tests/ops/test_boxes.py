"""jaxcnn.ops.boxes against torchvision.ops and torchvision's detection BoxCoder on random boxes."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import _utils as det_utils

from jaxcnn import ops
from jaxcnn.errors import UserError


def random_boxes(n, seed=0, scale=100.0, degenerate=0):
  rng = np.random.default_rng(seed)
  xy = rng.uniform(0, scale, (n, 2))
  wh = rng.uniform(1, scale / 2, (n, 2))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  if degenerate:
    boxes[:degenerate, 2] = boxes[:degenerate, 0]  # zero width
  return boxes


def t(x):
  return torch.from_numpy(np.array(x))


@pytest.mark.parametrize("in_fmt", ops.BOX_FORMATS)
@pytest.mark.parametrize("out_fmt", ops.BOX_FORMATS)
def test_box_convert_matches_torchvision(in_fmt, out_fmt):
  boxes = random_boxes(20, 1).reshape(4, 5, 4)  # leading batch axes
  got = jax.jit(ops.box_convert, static_argnums=(1, 2))(boxes, in_fmt, out_fmt)
  want = torchvision.ops.box_convert(t(boxes), in_fmt, out_fmt).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_box_convert_round_trip_and_bad_format():
  boxes = random_boxes(8)
  back = ops.box_convert(ops.box_convert(boxes, "xyxy", "cxcywh"), "cxcywh", "xyxy")
  np.testing.assert_allclose(back, boxes, atol=1e-4)
  with pytest.raises(UserError, match="unknown box format 'xyhw'"):
    ops.box_convert(boxes, "xyhw", "xyxy")


@pytest.mark.parametrize("fmt", ops.BOX_FORMATS)
def test_area_and_iou_match_torchvision(fmt):
  a = ops.box_convert(random_boxes(30, 2), "xyxy", fmt)
  b = ops.box_convert(random_boxes(17, 3), "xyxy", fmt)
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(ops.box_area(a, fmt), torchvision.ops.box_area(t(a), fmt).numpy(), rtol=1e-6)
  got = jax.jit(ops.box_iou, static_argnums=2)(a, b, fmt)
  want = torchvision.ops.box_iou(t(a), t(b), fmt).numpy()
  assert got.shape == (30, 17) and (want > 0).sum() > 10  # some pairs overlap
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["generalized_box_iou", "distance_box_iou", "complete_box_iou"])
def test_pairwise_iou_variants_match_torchvision(name):
  a, b = random_boxes(25, 4), random_boxes(12, 5)
  got = jax.jit(getattr(ops, name))(a, b)
  want = getattr(torchvision.ops, name)(t(a), t(b)).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # batched leading axis, as torchvision's [..., N, 4]
  got_b = getattr(ops, name)(np.stack([a, a[::-1]]), np.stack([b, b]))
  np.testing.assert_allclose(got_b[1], want[::-1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_iou_losses_match_torchvision_values_and_grads(name, reduction):
  a, b = random_boxes(40, 6), random_boxes(40, 7)
  a[:5] = b[:5] + 0.5  # near-identical pairs next to disjoint ones
  fn = getattr(ops, name)
  got = jax.jit(fn, static_argnums=2)(a, b, reduction)
  ta = t(a).requires_grad_(True)
  want = getattr(torchvision.ops, name)(ta, t(b), reduction=reduction)
  np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda x: jnp.sum(fn(x, b, reduction)))(a)
  want.sum().backward()
  np.testing.assert_allclose(grad, ta.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_loss_bad_reduction():
  with pytest.raises(UserError, match="unknown reduction"):
    ops.generalized_box_iou_loss(random_boxes(2), random_boxes(2), "avg")


def test_clip_and_remove_small_boxes():
  boxes = random_boxes(50, 8, scale=120) - 10
  got = jax.jit(ops.clip_boxes_to_image, static_argnums=1)(boxes, (60, 80))
  np.testing.assert_array_equal(got, torchvision.ops.clip_boxes_to_image(t(boxes), (60, 80)).numpy())
  assert (np.asarray(got)[:, 2] == 80).any() and (np.asarray(got)[:, 1] == 0).any()
  mask = jax.jit(ops.remove_small_boxes, static_argnums=1)(boxes, 20.0)
  want = torchvision.ops.remove_small_boxes(t(boxes), 20.0).numpy()
  assert mask.shape == (50,) and 0 < want.size < 50
  np.testing.assert_array_equal(np.nonzero(np.asarray(mask))[0], want)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_matches_torchvision(weights):
  anchors, gt = random_boxes(64, 9), random_boxes(64, 10)
  ours = ops.BoxCoder(weights)
  theirs = det_utils.BoxCoder(weights)
  enc = jax.jit(ours.encode)(gt, anchors)
  np.testing.assert_allclose(enc, theirs.encode_single(t(gt), t(anchors)).numpy(), rtol=1e-5, atol=1e-5)
  # decode per-class codes [N, 4 * 3], with some dw/dh past the clamp
  codes = np.random.default_rng(11).normal(size=(64, 12)).astype(np.float32)
  codes[:4, 2] = 50.0 * weights[2]
  dec = jax.jit(ours.decode)(codes, anchors)
  want = theirs.decode_single(t(codes), t(anchors)).numpy()
  assert np.isfinite(want).all()
  np.testing.assert_allclose(dec, want, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(ours.decode(enc, anchors), gt, rtol=1e-5, atol=1e-3)
  # clamp value: exp(log(1000/16)) times the width
  w = anchors[0, 2] - anchors[0, 0]
  assert math.isclose(float(dec[0, 2] - dec[0, 0]), w * 1000 / 16, rel_tol=1e-5)
