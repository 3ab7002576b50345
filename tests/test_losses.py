"""Shared losses against torch's functional losses and the Dice formula."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxcnn import losses


def seg_batch(seed=0, shape=(2, 9, 11), k=5, ignore_share=0.2):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=shape + (k,)).astype(np.float32) * 3
  labels = rng.integers(0, k, shape)
  labels[rng.random(shape) < ignore_share] = 255
  return logits, labels


def torch_ce(logits, labels, weight=None):
  x = torch.from_numpy(logits).permute(0, 3, 1, 2)  # torch wants the classes at dim 1
  w = None if weight is None else torch.tensor(weight, dtype=torch.float32)
  return F.cross_entropy(x, torch.from_numpy(labels), weight=w, ignore_index=255).item()


def test_cross_entropy_matches_torch_with_ignore():
  logits, labels = seg_batch()
  got = jax.jit(losses.segmentation_cross_entropy)(logits, labels)
  assert got.shape == () and got.dtype == jnp.float32
  np.testing.assert_allclose(got, torch_ce(logits, labels), rtol=1e-5)


def test_weighted_cross_entropy_matches_torch_normalisation():
  logits, labels = seg_batch(1)
  weights = [0.2, 1.0, 3.0, 0.5, 2.0]
  got = losses.segmentation_cross_entropy(logits, labels, class_weights=weights)
  np.testing.assert_allclose(got, torch_ce(logits, labels, weights), rtol=1e-5)
  # not the plain mean over pixels of the weighted losses
  valid = labels != 255
  nll = -jax.nn.log_softmax(logits)[valid, labels[valid]]
  assert abs(float(got) - float(np.mean(np.asarray(weights)[labels[valid]] * nll))) > 1e-3


def test_ignored_pixels_get_no_gradient_and_all_ignored_is_zero():
  logits, labels = seg_batch(2)
  grads = jax.grad(losses.segmentation_cross_entropy)(logits, labels)
  assert float(jnp.abs(grads[labels == 255]).max()) == 0.0
  assert float(jnp.abs(grads[labels != 255]).max()) > 0.0
  all_ignored = np.full(labels.shape, 255)
  assert float(losses.segmentation_cross_entropy(logits, all_ignored)) == 0.0
  assert not np.isnan(jax.grad(losses.segmentation_cross_entropy)(logits, all_ignored)).any()


def binary_batch(seed=3, shape=(2, 8, 8)):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=shape + (1,)) * 2).astype(np.float32)
  labels = (rng.random(shape) < 0.4).astype(np.int64)
  labels[rng.random(shape) < 0.2] = 255
  return logits, labels


@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_bce_matches_torch_on_labelled_pixels(pos_weight):
  logits, labels = binary_batch()
  valid = labels != 255
  x, y = torch.from_numpy(logits[..., 0][valid]), torch.from_numpy(labels[valid].astype(np.float32))
  pw = None if pos_weight is None else torch.tensor(pos_weight)
  want = F.binary_cross_entropy_with_logits(x, y, pos_weight=pw).item()
  got = jax.jit(losses.binary_cross_entropy_with_logits, static_argnums=(2, 3))(logits, labels, 255, pos_weight)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(losses.binary_cross_entropy_with_logits(logits[..., 0], labels, pos_weight=pos_weight),
                             want, rtol=1e-5)  # [..., 1] and [...] logits alike


def test_binary_dice_is_the_formula_over_labelled_pixels():
  logits, labels = binary_batch(4)
  valid = labels != 255
  p = 1 / (1 + np.exp(-logits[..., 0].astype(np.float64)))[valid]
  g = labels[valid].astype(np.float64)
  for smooth in (0.0, 1.0):
    want = 1 - (2 * np.sum(p * g) + smooth) / (np.sum(p) + np.sum(g) + smooth)
    np.testing.assert_allclose(losses.dice_loss(logits, labels, smooth=smooth), want, rtol=1e-5)


def test_multiclass_dice_is_the_mean_over_classes():
  logits, labels = seg_batch(5, k=4)
  valid = labels != 255
  p = np.asarray(jax.nn.softmax(logits.astype(np.float64), axis=-1))[valid]
  g = np.eye(4)[labels[valid]]
  dice = (2 * (p * g).sum(0) + 1.0) / (p.sum(0) + g.sum(0) + 1.0)
  np.testing.assert_allclose(losses.dice_loss(logits, labels), 1 - dice.mean(), rtol=1e-5)


def test_dice_of_a_perfect_prediction_is_near_zero_and_smooth_handles_empty_masks():
  labels = np.zeros((1, 4, 4), np.int64)
  labels[0, :2] = 1
  logits = np.where(labels == 1, 20.0, -20.0).astype(np.float32)
  assert float(losses.dice_loss(logits, labels)) < 1e-6
  empty = np.zeros((1, 4, 4), np.int64)
  assert float(losses.dice_loss(np.full((1, 4, 4), -20.0, np.float32), empty)) < 1e-6


def test_bce_dice_is_the_weighted_sum():
  logits, labels = binary_batch(6)
  want = 0.5 * losses.binary_cross_entropy_with_logits(logits, labels) + 2.0 * losses.dice_loss(logits, labels)
  got = jax.jit(losses.bce_dice_loss, static_argnames=("bce_weight", "dice_weight"))(
      logits, labels, bce_weight=0.5, dice_weight=2.0)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert float(got) > 0
