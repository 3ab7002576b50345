"""roi_align / roi_pool / MultiScaleRoIAlign against torchvision (NCHW there, NHWC here)."""
from collections import OrderedDict

import jax
import numpy as np
import pytest
import torch
import torchvision

from jaxcnn import ops
from jaxcnn.errors import UserError


def setup(n=2, h=13, w=17, c=3, k=24, seed=0, img=64.0, small=False):
  rng = np.random.default_rng(seed)
  feats = rng.normal(size=(n, h, w, c)).astype(np.float32)
  xy = rng.uniform(-8, img, (k, 2))
  wh = rng.uniform(0.5, 6, (k, 2)) if small else rng.uniform(2, img * 0.8, (k, 2))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  boxes[0] = [10, 10, 10, 10]  # degenerate
  boxes[1] = [-30, -20, -5, -4]  # wholly outside
  idx = rng.integers(0, n, (k, 1)).astype(np.float32)
  return feats, np.concatenate([idx, boxes], 1)


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def tv_out(y):
  return y.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 1])
def test_roi_align_matches_torchvision(aligned, sampling_ratio):
  feats, rois = setup(seed=1)
  kw = dict(output_size=(7, 5), spatial_scale=0.25, sampling_ratio=sampling_ratio, aligned=aligned)
  got = jax.jit(lambda f, r: ops.roi_align(f, r, **kw))(feats, rois)
  want = tv_out(torchvision.ops.roi_align(nchw(feats), torch.from_numpy(rois), **kw))
  assert got.shape == (24, 7, 5, 3) and np.abs(want).max() > 0.5
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_adaptive_sampling_on_small_boxes(aligned):
  feats, rois = setup(seed=2, small=True)
  kw = dict(output_size=2, spatial_scale=1.0, sampling_ratio=-1, aligned=aligned)
  # ceil(roi / 2) <= 3 here, inside the default bound of 8
  got = ops.roi_align(feats, rois, **kw)
  want = tv_out(torchvision.ops.roi_align(nchw(feats), torch.from_numpy(rois), **kw))
  np.testing.assert_allclose(got, want, atol=1e-5)
  # bigger boxes on a 0.5 scale: adaptive grids of 1..4 points per side
  feats, rois = setup(seed=3, h=20, w=20)
  kw = dict(output_size=3, spatial_scale=0.5, sampling_ratio=0, aligned=aligned)
  want = tv_out(torchvision.ops.roi_align(nchw(feats), torch.from_numpy(rois), **kw))
  np.testing.assert_allclose(ops.roi_align(feats, rois, **kw), want, atol=1e-5)
  # a bound below the needed grid changes the result: the bound is real
  assert np.abs(np.asarray(ops.roi_align(feats, rois, max_sampling_ratio=1, **kw)) - want).max() > 1e-3


def test_roi_align_per_image_padded_form_chunks_and_grad():
  feats, rois = setup(seed=4, k=10)
  rois[:, 0] = np.repeat([0, 1], 5)
  kw = dict(output_size=4, spatial_scale=0.5, sampling_ratio=2)
  flat = ops.roi_align(feats, rois, **kw)
  per_image = ops.roi_align(feats, rois[:, 1:].reshape(2, 5, 4), roi_batch=2, **kw)
  assert per_image.shape == (2, 5, 4, 4, 3)
  np.testing.assert_allclose(per_image.reshape(flat.shape), flat, atol=1e-6)
  np.testing.assert_allclose(ops.roi_align(feats, rois, roi_batch=3, **kw), flat, atol=1e-6)
  g = jax.grad(lambda f: ops.roi_align(f, rois, **kw).sum())(feats)
  tf = nchw(feats).requires_grad_(True)
  torchvision.ops.roi_align(tf, torch.from_numpy(rois), **kw).sum().backward()
  np.testing.assert_allclose(g, tf.grad.numpy().transpose(0, 2, 3, 1), atol=1e-5)


@pytest.mark.parametrize("scale,size", [(1.0, (3, 4)), (0.25, (3, 4)), (0.5, (7, 7))])
def test_roi_pool_matches_torchvision(scale, size):
  feats, rois = setup(seed=5, h=16, w=16, k=30, img=16 / scale)
  kw = dict(output_size=size, spatial_scale=scale)
  got = jax.jit(lambda f, r: ops.roi_pool(f, r, **kw))(feats, rois)
  want = tv_out(torchvision.ops.roi_pool(nchw(feats), torch.from_numpy(rois), **kw))
  assert (want == 0).any() and (want != 0).mean() > 0.3  # empty bins and real maxima both present
  np.testing.assert_array_equal(got, want)
  per_image = ops.roi_pool(feats, np.stack([rois[:, 1:], rois[:, 1:]]), roi_batch=7, **kw)
  np.testing.assert_array_equal(per_image[1][rois[:, 0] == 1], want[rois[:, 0] == 1])


def test_roi_pool_half_coordinates_round_away_from_zero():
  feats = np.arange(64, dtype=np.float32).reshape(1, 8, 8, 1)
  rois = np.array([[0, 0.5, 0.5, 2.5, 2.5], [0, 1.5, 2.5, 4.5, 6.5]], np.float32)
  want = tv_out(torchvision.ops.roi_pool(nchw(feats), torch.from_numpy(rois), 2))
  np.testing.assert_array_equal(ops.roi_pool(feats, rois, 2), want)


def test_level_mapper_and_multiscale_roi_align_match_torchvision():
  rng = np.random.default_rng(6)
  image = (128, 96)
  shapes = [(32, 24), (16, 12), (8, 6)]  # strides 4, 8, 16 -> levels 2..4
  feats = [rng.normal(size=(2, h, w, 4)).astype(np.float32) for h, w in shapes]
  xy = rng.uniform(0, 60, (2, 9, 2))
  wh = np.exp(rng.uniform(np.log(50), np.log(500), (2, 9, 2)))
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  pooler = torchvision.ops.MultiScaleRoIAlign(["a", "b", "c"], output_size=5, sampling_ratio=2)
  x = OrderedDict((k, nchw(f)) for k, f in zip("abc", feats))
  want = pooler(x, [torch.from_numpy(b) for b in boxes], [image, image]).detach().numpy().transpose(0, 2, 3, 1)
  levels = ops.roi_level_mapper(boxes, 2, 4)
  want_levels = pooler.map_levels([torch.from_numpy(b) for b in boxes]).numpy()
  np.testing.assert_array_equal(np.asarray(levels).reshape(-1), want_levels)
  assert len(set(want_levels.tolist())) == 3
  got = ops.multiscale_roi_align(feats, boxes, 5, 2, image)
  np.testing.assert_allclose(np.asarray(got).reshape(want.shape), want, atol=1e-5)
  assert ops.infer_scale(24, 96) == 0.25 and ops.infer_scale(13, 100) == 0.125


def test_roi_bad_shapes():
  feats, rois = setup()
  with pytest.raises(UserError, match=r"\[K, 5\]"):
    ops.roi_align(feats, rois[:, 1:], 2)
  with pytest.raises(UserError, match="NHWC"):
    ops.roi_pool(feats[0], rois, 2)
