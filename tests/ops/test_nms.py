"""jaxcnn.ops NMS family: hard/batched against torchvision, Soft-NMS and Adaptive NMS against NumPy transcriptions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from jaxcnn import ops
from jaxcnn.errors import UserError


def clustered_boxes(n, seed=0, clusters=None, ties=False, extent=400.0):
  """Boxes jittered around a few centres (many heavy overlaps) and their scores."""
  rng = np.random.default_rng(seed)
  clusters = clusters or max(n // 25, 2)
  centres = rng.uniform(0, extent, (clusters, 2))
  c = centres[rng.integers(0, clusters, n)] + rng.normal(0, 6, (n, 2))
  wh = rng.uniform(10, 60, (n, 2))
  boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)
  scores = (rng.integers(0, 6, n) / 6.0 if ties else rng.random(n)).astype(np.float32)
  return boxes, scores


def tv_nms(boxes, scores, thr, idxs=None):
  b, s = torch.from_numpy(boxes), torch.from_numpy(scores)
  if idxs is None:
    return torchvision.ops.nms(b, s, thr).numpy()
  return torchvision.ops.batched_nms(b, s, torch.from_numpy(idxs), thr).numpy()


def first(result):
  idx, count = (np.asarray(r) for r in result)
  assert (idx[count:] == -1).all() and (idx[:count] >= 0).all()
  return idx[:count]


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_torchvision_1000_boxes(thr):
  boxes, scores = clustered_boxes(1000, seed=1)
  want = tv_nms(boxes, scores, thr)
  got = first(ops.nms(boxes, scores, thr))
  assert 30 < len(want) < 900  # heavy suppression, not all-or-nothing
  np.testing.assert_array_equal(got, want)


def test_nms_ties_follow_torchvision_order():
  boxes, scores = clustered_boxes(1000, seed=2, ties=True)
  want = tv_nms(boxes, scores, 0.5)
  np.testing.assert_array_equal(first(ops.nms(boxes, scores, 0.5)), want)
  # identical boxes with identical scores: torchvision keeps the lower index
  dup = np.array([[0, 0, 10, 10]] * 3 + [[50, 50, 60, 60]], np.float32)
  same = np.full(4, 0.5, np.float32)
  np.testing.assert_array_equal(first(ops.nms(dup, same, 0.5)), tv_nms(dup, same, 0.5))
  np.testing.assert_array_equal(first(ops.nms(dup, same, 0.5)), [0, 3])


@pytest.mark.parametrize("tile", [pytest.param(7, marks=pytest.mark.slow), 64])
def test_nms_small_tiles_cross_tile_suppression(tile):
  boxes, scores = clustered_boxes(500, seed=3, clusters=6)
  want = tv_nms(boxes, scores, 0.4)
  np.testing.assert_array_equal(first(ops.nms(boxes, scores, 0.4, tile_size=tile)), want)


def test_nms_5000_boxes_and_max_output_size():
  boxes, scores = clustered_boxes(5000, seed=4)
  want = tv_nms(boxes, scores, 0.5)
  np.testing.assert_array_equal(first(ops.nms(boxes, scores, 0.5)), want)
  idx, count = ops.nms(boxes, scores, 0.5, max_output_size=100)
  assert idx.shape == (100,) and int(count) == 100
  np.testing.assert_array_equal(idx, want[:100])


def test_nms_vmap_over_batch():
  batch = [clustered_boxes(1000, seed=s) for s in range(10, 14)]
  boxes = np.stack([b for b, _ in batch])
  scores = np.stack([s for _, s in batch])
  idx, count = jax.jit(jax.vmap(lambda b, s: ops.nms(b, s, 0.5, max_output_size=1000)))(boxes, scores)
  assert idx.shape == (4, 1000)
  for i in range(4):
    np.testing.assert_array_equal(first((idx[i], count[i])), tv_nms(boxes[i], scores[i], 0.5))


def test_nms_valid_mask_and_degenerate_boxes():
  boxes, scores = clustered_boxes(300, seed=5)
  valid = np.random.default_rng(0).random(300) < 0.6
  got = first(ops.nms(boxes, scores, 0.5, valid=valid))
  sub = np.nonzero(valid)[0]
  np.testing.assert_array_equal(got, sub[tv_nms(boxes[sub], scores[sub], 0.5)])
  boxes[:20, 2] = boxes[:20, 0]  # empty boxes: NaN IoU with each other, suppress nothing
  np.testing.assert_array_equal(first(ops.nms(boxes, scores, 0.5)), tv_nms(boxes, scores, 0.5))


def test_nms_working_memory_is_not_quadratic():
  n = 20000
  b = jax.ShapeDtypeStruct((n, 4), jnp.float32)
  s = jax.ShapeDtypeStruct((n,), jnp.float32)
  compiled = jax.jit(lambda b, s: ops.nms(b, s, 0.5)).lower(b, s).compile()
  mem = compiled.memory_analysis()
  if mem is None:
    pytest.skip("backend gives no memory analysis")
  assert mem.temp_size_in_bytes < 64 * 2**20, mem  # an N x N float32 matrix would be 1.6 GB


@pytest.mark.parametrize("n,thr", [(600, 0.5), (1000, 0.6)])
def test_batched_nms_matches_torchvision(n, thr):
  boxes, scores = clustered_boxes(n, seed=6)
  idxs = np.random.default_rng(7).integers(0, 4, n)
  want = tv_nms(boxes, scores, thr, idxs)
  got = first(ops.batched_nms(boxes, scores, idxs, thr))
  assert len(want) > len(tv_nms(boxes, scores, thr))  # categories do protect boxes
  np.testing.assert_array_equal(got, want)


def test_batched_nms_5000_with_ties():
  boxes, scores = clustered_boxes(5000, seed=8, ties=True)
  idxs = np.random.default_rng(9).integers(0, 5, 5000)
  want = tv_nms(boxes, scores, 0.5, idxs)  # > 1000 boxes: torchvision's per-class path
  got = first(ops.batched_nms(boxes, scores, idxs, 0.5))
  # same kept set; torchvision's final unstable sort leaves ties in arbitrary order, ours by index
  np.testing.assert_array_equal(np.sort(got), np.sort(want))
  np.testing.assert_array_equal(got, want[np.lexsort((want, -scores[want]))])
  np.testing.assert_array_equal(scores[got], scores[want])


def test_nms_bad_arguments():
  boxes, scores = clustered_boxes(10)
  with pytest.raises(UserError, match="max_output_size"):
    ops.nms(boxes, scores, 0.5, max_output_size=0)
  with pytest.raises(UserError, match=r"boxes \[N, 4\]"):
    ops.nms(boxes[None], scores, 0.5)
  with pytest.raises(UserError, match="unknown soft_nms method"):
    ops.soft_nms(boxes, scores, method="cubic")


def np_iou(a, b):
  w = np.maximum(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0)
  h = np.maximum(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0)
  inter = w * h
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter)


def np_soft_nms(boxes, scores, method, sigma, nt, threshold):
  """Bodla et al.'s cpu_soft_nms loop (in-place swaps, N shrinking), with continuous IoU."""
  dets = np.concatenate([boxes, scores[:, None], np.arange(len(boxes))[:, None]], 1).astype(np.float64)
  n = len(dets)
  i = 0
  while i < n:
    m = i + int(np.argmax(dets[i:n, 4]))
    dets[[i, m]] = dets[[m, i]]
    pos = i + 1
    while pos < n:
      ov = np_iou(dets[i, :4], dets[pos:pos + 1, :4])[0]
      if ov > 0:
        if method == "linear":
          weight = 1 - ov if ov > nt else 1.0
        else:
          weight = np.exp(-(ov * ov) / sigma)
        dets[pos, 4] *= weight
        if dets[pos, 4] < threshold:
          dets[[pos, n - 1]] = dets[[n - 1, pos]]
          n -= 1
          pos -= 1
      pos += 1
    i += 1
  return dets[:n, 5].astype(int), dets[:n, 4]


@pytest.mark.parametrize("method,threshold", [("linear", 0.001), ("gaussian", 0.001), ("gaussian", 0.05)])
def test_soft_nms_matches_reference_loop(method, threshold):
  boxes, scores = clustered_boxes(300, seed=12)
  scores = 0.05 + 0.95 * scores  # all start above the threshold, as the reference assumes
  want_idx, want_scores = np_soft_nms(boxes, scores, method, 0.5, 0.3, threshold)
  idx, dec, count = ops.soft_nms(boxes, scores, method=method, sigma=0.5, iou_threshold=0.3,
                                 score_threshold=threshold)
  count = int(count)
  assert count == len(want_idx)
  if threshold > 0.01:
    assert count < 300  # the threshold drops decayed boxes
  np.testing.assert_array_equal(np.asarray(idx[:count]), want_idx)
  np.testing.assert_allclose(np.asarray(dec[:count]), want_scores, rtol=2e-5, atol=1e-7)
  assert (np.asarray(idx[count:]) == -1).all() and np.all(np.diff(np.asarray(dec[:count])) <= 0)


def test_soft_nms_hard_method_is_nms():
  boxes, scores = clustered_boxes(400, seed=13)
  idx, dec, count = ops.soft_nms(boxes, scores, method="hard", iou_threshold=0.5, score_threshold=1e-12)
  want = tv_nms(boxes, scores, 0.5)
  np.testing.assert_array_equal(np.asarray(idx[:int(count)]), want)
  np.testing.assert_allclose(np.asarray(dec[:int(count)]), scores[want])


def np_adaptive_nms(boxes, scores, densities, nt):
  """Liu et al. 2019, Algorithm 1 (hard variant)."""
  remaining = np.argsort(-scores, kind="stable")
  keep = []
  while remaining.size:
    m, remaining = remaining[0], remaining[1:]
    keep.append(m)
    n_m = max(nt, densities[m])
    remaining = remaining[~(np_iou(boxes[m], boxes[remaining]) > n_m)]
  return np.array(keep)


def test_adaptive_nms_matches_reference():
  boxes, scores = clustered_boxes(800, seed=14)
  densities = np.random.default_rng(15).uniform(0, 0.9, 800).astype(np.float32)
  want = np_adaptive_nms(boxes, scores, densities, 0.5)
  got = first(ops.adaptive_nms(boxes, scores, densities, 0.5, tile_size=128))
  assert len(want) > len(tv_nms(boxes, scores, 0.5))  # dense boxes keep more neighbours
  np.testing.assert_array_equal(got, want)
  # densities at or below Nt: plain NMS
  low = np.minimum(densities, 0.5)
  np.testing.assert_array_equal(first(ops.adaptive_nms(boxes, scores, low, 0.5)), tv_nms(boxes, scores, 0.5))
