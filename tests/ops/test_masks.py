"""Mask R-CNN's mask ops against torchvision's own functions (roi_heads / transform)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torchvision.models.detection import roi_heads as tv_roi_heads

from jaxcnn import ops
from jaxcnn.errors import UserError


def random_masks(rng, m, h, w):
  """Blobby binary masks (rectangles), so crops see both values and edges."""
  masks = np.zeros((m, h, w), np.uint8)
  for i in range(m):
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    masks[i, y0:y0 + rng.integers(3, h // 2 + 3), x0:x0 + rng.integers(3, w // 2 + 3)] = 1
    masks[i] |= (rng.uniform(size=(h, w)) < 0.1).astype(np.uint8)
  return masks


def random_boxes(rng, k, h, w, min_size=1.0):
  x0 = rng.uniform(0, w - min_size, k)
  y0 = rng.uniform(0, h - min_size, k)
  x1 = np.minimum(x0 + rng.uniform(min_size, w, k), w)
  y1 = np.minimum(y0 + rng.uniform(min_size, h, k), h)
  return np.stack([x0, y0, x1, y1], 1).astype(np.float32)


def test_project_masks_on_boxes_matches_torchvision():
  rng = np.random.default_rng(0)
  h, w, k = 61, 90, 20  # boxes up to 90 px: adaptive grids of up to ceil(90 / 28) = 4 points per side
  masks = random_masks(rng, 4, h, w)
  boxes = random_boxes(rng, k, h, w)
  boxes[0] = [0, 0, w, h]  # the whole image: the largest grid
  boxes[1] = [5.3, 7.1, 5.8, 7.4]  # tiny
  matched = rng.integers(0, 4, k)
  want = tv_roi_heads.project_masks_on_boxes(torch.from_numpy(masks), torch.from_numpy(boxes),
                                             torch.from_numpy(matched), 28).numpy()
  fn = jax.jit(ops.project_masks_on_boxes, static_argnames=("output_size", "max_sampling_ratio", "roi_batch"))
  got = fn(masks, boxes, matched)
  assert got.shape == (k, 28, 28) and 0.1 < want.mean() < 0.8
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(fn(masks, boxes, matched, roi_batch=6), want, atol=1e-5)
  # the static bound on the sampling grid is real: one point per side is not torchvision's result
  assert np.abs(np.asarray(fn(masks, boxes, matched, max_sampling_ratio=1)) - want).max() > 1e-2


def _torch_loss_inputs(logits, proposals, masks, labels, matched, positive, valid_gt):
  per_logits, per_props, per_masks, per_labels, per_idx = [], [], [], [], []
  for b in range(logits.shape[0]):
    pos = np.nonzero(positive[b])[0]
    per_logits.append(logits[b, pos].transpose(0, 3, 1, 2))
    per_props.append(torch.from_numpy(proposals[b, pos]))
    per_masks.append(torch.from_numpy(masks[b, :valid_gt[b]]))
    per_labels.append(torch.from_numpy(labels[b, :valid_gt[b]].astype(np.int64)))
    per_idx.append(torch.from_numpy(matched[b, pos].astype(np.int64)))
  return torch.from_numpy(np.concatenate(per_logits)), per_props, per_masks, per_labels, per_idx


def test_maskrcnn_loss_matches_torchvision():
  rng = np.random.default_rng(1)
  b, p, m, h, w, c = 3, 10, 4, 40, 52, 5
  logits = rng.normal(0, 2, (b, p, 28, 28, c)).astype(np.float32)
  proposals = np.stack([random_boxes(rng, p, h, w) for _ in range(b)])
  masks = np.stack([random_masks(rng, m, h, w) for _ in range(b)])
  labels = rng.integers(1, c, (b, m)).astype(np.int32)
  valid_gt = [4, 2, 0]  # image 2 has no ground truth and so no positives
  matched = np.stack([rng.integers(0, max(v, 1), p) for v in valid_gt]).astype(np.int32)
  positive = rng.uniform(size=(b, p)) < 0.5
  positive[2] = False
  args = _torch_loss_inputs(logits, proposals, masks, labels, matched, positive, valid_gt)
  want = float(tv_roi_heads.maskrcnn_loss(*args))
  loss = jax.jit(ops.maskrcnn_loss)
  got = float(loss(logits, proposals, masks, labels, matched, positive))
  assert want > 0.5
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # padded slots (not positive) carry garbage logits that must not count
  poisoned = np.where(positive[..., None, None, None], logits, 1e3).astype(np.float32)
  np.testing.assert_allclose(float(loss(poisoned, proposals, masks, labels, matched, positive)), want, rtol=1e-5)
  # no positive anywhere: torchvision returns mask_logits.sum() * 0
  none = np.zeros_like(positive)
  args = _torch_loss_inputs(logits, proposals, masks, labels, matched, none, valid_gt)
  assert float(tv_roi_heads.maskrcnn_loss(*args)) == 0.0
  assert float(loss(logits, proposals, masks, labels, matched, none)) == 0.0


def test_maskrcnn_loss_psum_over_devices():
  rng = np.random.default_rng(2)
  b, p, m, h, w, c = 2, 6, 3, 32, 32, 4
  logits = rng.normal(size=(b, p, 28, 28, c)).astype(np.float32)
  proposals = np.stack([random_boxes(rng, p, h, w) for _ in range(b)])
  masks = np.stack([random_masks(rng, m, h, w) for _ in range(b)])
  labels = rng.integers(1, c, (b, m)).astype(np.int32)
  matched = rng.integers(0, m, (b, p)).astype(np.int32)
  positive = np.array([[1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 1]], bool)  # unequal counts: mean of all, not of means
  whole = float(ops.maskrcnn_loss(logits, proposals, masks, labels, matched, positive))
  per_device = jax.pmap(lambda *a: ops.maskrcnn_loss(*(x[None] for x in a), axis_name="d"), axis_name="d",
                        devices=jax.devices()[:2])(logits, proposals, masks, labels, matched, positive)
  np.testing.assert_allclose(np.asarray(per_device), whole, rtol=1e-5)
  separate = [float(ops.maskrcnn_loss(*(x[i:i + 1] for x in (logits, proposals, masks, labels, matched, positive))))
              for i in range(2)]
  assert abs(np.mean(separate) - whole) > 1e-3


def test_maskrcnn_inference_matches_torchvision():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(7, 28, 28, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 7)
  want = tv_roi_heads.maskrcnn_inference(torch.from_numpy(logits.transpose(0, 3, 1, 2)),
                                         [torch.from_numpy(labels[:3]), torch.from_numpy(labels[3:])])
  want = torch.cat(want).numpy()[:, 0]
  np.testing.assert_allclose(ops.maskrcnn_inference(logits, labels), want, atol=1e-6)


def test_paste_masks_in_image_matches_torchvision():
  rng = np.random.default_rng(4)
  h, w = 50, 71
  boxes = random_boxes(rng, 24, h, w, min_size=0.05)
  boxes[0] = [0, 0, w, h]  # whole image: the expanded box leaves it on every side
  boxes[1] = [10.2, 20.7, 10.25, 20.8]  # sub-pixel: one output pixel
  boxes[2] = [3.0, 4.0, 31.0, 32.0]  # expands to 30 x 30: resized to its own size
  boxes[3] = [60.5, 40.5, 71.0, 50.0]  # bottom-right corner, cut by the border
  boxes[4] = [0.0, 0.0, 1.5, 70.0 * h / w]
  probs = rng.uniform(size=(24, 28, 28)).astype(np.float32)
  want = tv_roi_heads.paste_masks_in_image(torch.from_numpy(probs[:, None]), torch.from_numpy(boxes), (h, w))
  want = want.numpy()[:, 0]
  paste = jax.jit(ops.paste_masks_in_image, static_argnames=("image_size", "padding", "roi_batch"))
  got = paste(probs, boxes, (h, w))
  assert got.shape == (24, h, w)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert ((want > 0) == (np.asarray(got) > 0)).all()  # the same pixels, not only close values
  np.testing.assert_allclose(paste(probs, boxes, (h, w), roi_batch=5), want, atol=1e-5)
  want2 = tv_roi_heads.paste_masks_in_image(torch.from_numpy(probs[:, None]), torch.from_numpy(boxes), (h, w),
                                            padding=2).numpy()[:, 0]
  np.testing.assert_allclose(paste(probs, boxes, (h, w), padding=2), want2, atol=1e-5)


def test_expand_boxes_matches_torchvision():
  boxes = random_boxes(np.random.default_rng(5), 50, 80, 80)
  want = tv_roi_heads.expand_boxes(torch.from_numpy(boxes), 30 / 28).numpy()
  np.testing.assert_array_equal(np.asarray(ops.expand_boxes(boxes, 30 / 28)), want)


def test_mask_ops_shapes_are_refused_in_one_line():
  with pytest.raises(UserError, match="masks"):
    ops.paste_masks_in_image(jnp.zeros((3, 28, 20)), jnp.zeros((3, 4)), (10, 10))
  with pytest.raises(UserError, match="gt_masks"):
    ops.project_masks_on_boxes(jnp.zeros((28, 20)), jnp.zeros((3, 4)), jnp.zeros(3, jnp.int32))
  with pytest.raises(UserError, match="mask_logits"):
    ops.maskrcnn_loss(jnp.zeros((3, 28, 28, 2)), jnp.zeros((1, 3, 4)), jnp.zeros((1, 1, 8, 8)),
                      jnp.ones((1, 1), jnp.int32), jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 3), bool))
