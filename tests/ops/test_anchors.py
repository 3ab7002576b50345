"""Anchor generators and matchers against torchvision's detection utilities."""
import jax
import numpy as np
import pytest
import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator as TVDefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

from jaxcnn import ops
from jaxcnn.errors import UserError


def tv_anchors(gen, image_size, shapes):
  images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
  feats = [torch.zeros(1, 1, h, w) for h, w in shapes]
  return gen(images, feats)[0].numpy()


def test_retinanet_anchors_match_torchvision():
  sizes = ops.retinanet_anchor_sizes()
  assert sizes[0] == (32, 40, 50) and sizes[1] == (64, 80, 101)
  ratios = ((0.5, 1.0, 2.0),) * 5
  image, shapes = (160, 224), [(20, 28), (10, 14), (5, 7), (3, 4), (2, 2)]
  got = ops.AnchorGenerator(sizes, ratios)(image, shapes)
  want = tv_anchors(TVAnchorGenerator(sizes, ratios), image, shapes)
  assert got.shape == want.shape == (9 * sum(h * w for h, w in shapes), 4)
  np.testing.assert_array_equal(got, want)
  assert ops.AnchorGenerator(sizes, ratios).num_anchors_per_location() == [9] * 5


def test_rpn_and_fcos_anchor_settings_match_torchvision():
  # Faster R-CNN's single-map RPN default and FCOS's one anchor per location
  for sizes, ratios in [(((128, 256, 512),), ((0.5, 1.0, 2.0),)), (((8,), (16,), (32,)), ((1.0,),) * 3)]:
    shapes = [(13, 9), (7, 5), (4, 3)][:len(sizes)]
    got = ops.AnchorGenerator(sizes, ratios)((100, 70), shapes)
    np.testing.assert_array_equal(got, tv_anchors(TVAnchorGenerator(sizes, ratios), (100, 70), shapes))


@pytest.mark.parametrize("kind", ["ssd300", "ssdlite"])
def test_default_boxes_match_torchvision(kind):
  if kind == "ssd300":
    kw = dict(aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
              scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=[8, 16, 32, 64, 100, 300])
    image, shapes = (300, 300), [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
  else:
    kw = dict(aspect_ratios=[[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    image, shapes = (320, 320), [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
  ours = ops.DefaultBoxGenerator(**kw)
  got = ours(image, shapes)
  want = tv_anchors(TVDefaultBoxGenerator(**kw), image, shapes)
  assert got.shape == want.shape == ((8732, 4) if kind == "ssd300" else (3234, 4))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
  assert ours.num_anchors_per_location() == TVDefaultBoxGenerator(**kw).num_anchors_per_location()


def test_default_boxes_without_clip_or_steps():
  kw = dict(aspect_ratios=[[2], [3]], scales=[0.5, 0.9, 1.3], clip=False)
  got = ops.DefaultBoxGenerator(**kw)((64, 48), [(4, 3), (2, 2)])
  want = tv_anchors(TVDefaultBoxGenerator(**kw), (64, 48), [(4, 3), (2, 2)])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
  assert (np.asarray(got)[:, 2] - np.asarray(got)[:, 0]).max() > 48  # unclipped widths exceed the image


def quality_matrix(m=6, n=200, seed=0):
  rng = np.random.default_rng(seed)
  gt = rng.uniform(0, 80, (m, 2))
  gt = np.concatenate([gt, gt + rng.uniform(10, 40, (m, 2))], 1).astype(np.float32)
  an = rng.uniform(0, 100, (n, 2))
  an = np.concatenate([an, an + rng.uniform(5, 40, (n, 2))], 1).astype(np.float32)
  return np.array(ops.box_iou(gt, an))


@pytest.mark.parametrize("high,low,allow", [(0.5, 0.4, False), (0.7, 0.3, True), (0.5, 0.5, True)])
def test_matcher_matches_torchvision(high, low, allow):
  q = quality_matrix()
  q[0, 7] = q[0].max()  # two predictions tie for ground truth 0's best quality
  want = det_utils.Matcher(high, low, allow)(torch.from_numpy(q)).numpy()
  got = jax.jit(ops.Matcher(high, low, allow))(q)
  assert {-1, -2} & set(want.tolist()) and (want >= 0).any()
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("allow", [False, True])
def test_matcher_padding_never_matches(allow):
  q = quality_matrix(seed=1)
  valid = np.array([True, False, True, True, False, True])
  padded = q.copy()
  padded[~valid] = 0.99  # padding rows with tempting values
  got = ops.Matcher(0.5, 0.4, allow)(padded, valid)
  sub = det_utils.Matcher(0.5, 0.4, allow)(torch.from_numpy(q[valid])).numpy()
  np.testing.assert_array_equal(got, np.where(sub >= 0, np.nonzero(valid)[0][np.maximum(sub, 0)], sub))
  # no valid ground truth (an empty image): all background
  empty = ops.Matcher(0.5, 0.4, allow)(padded, np.zeros(6, bool))
  np.testing.assert_array_equal(empty, -1)
  # vmap over a batch of padded images
  batch = jax.vmap(ops.Matcher(0.5, 0.4, allow))(np.stack([padded, padded]), np.stack([valid, np.zeros(6, bool)]))
  np.testing.assert_array_equal(batch[0], got)
  np.testing.assert_array_equal(batch[1], empty)


def test_ssd_matcher_matches_torchvision_and_respects_padding():
  q = quality_matrix(seed=2)
  want = det_utils.SSDMatcher(0.5)(torch.from_numpy(q)).numpy()
  np.testing.assert_array_equal(ops.SSDMatcher(0.5)(q), want)
  best = q.argmax(1)
  assert all(want[best[g]] == g for g in range(6))  # every ground truth gets its best prior
  valid = np.array([True] * 4 + [False] * 2)
  got = ops.SSDMatcher(0.5)(q, valid)
  sub = det_utils.SSDMatcher(0.5)(torch.from_numpy(q[:4])).numpy()
  np.testing.assert_array_equal(got, sub)


def test_bad_settings():
  with pytest.raises(UserError, match="low_threshold"):
    ops.Matcher(0.3, 0.5)
  with pytest.raises(UserError, match="levels"):
    ops.AnchorGenerator(((32,),), ((1.0,),))((64, 64), [(8, 8), (4, 4)])
