"""Losses shared by tasks: float32, jit-able, each returning a scalar.

Dense prediction (semantic segmentation), NHWC logits:
  segmentation_cross_entropy       softmax cross-entropy over [..., K] logits, ignore label, class weights;
                                   the value of torch's F.cross_entropy(ignore_index=..., weight=...)
  binary_cross_entropy_with_logits sigmoid BCE for one-class problems, with the ignore label
  dice_loss                        soft Dice (Milletari et al. 2016), binary or multi-class
  bce_dice_loss                    BCE + Dice, the usual pairing for binary segmentation

Labels are integer class ids of the logits' spatial shape; a pixel labelled
`ignore_label` (255 by default, VOC's boundary value) adds nothing to a loss or
its gradient. A batch with no labelled pixel at all gives a loss of 0 (torch
gives NaN there), so a crop that falls wholly into ignored padding does not end
a run as "diverged".
"""
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

ArrayLike = Union[jax.Array, Sequence[float]]


def _valid_mean(values, weights):
  total = jnp.sum(weights)
  return jnp.where(total > 0, jnp.sum(values * weights) / jnp.where(total > 0, total, 1.0), 0.0)


def segmentation_cross_entropy(logits, labels, ignore_label: int = 255,
                               class_weights: Optional[ArrayLike] = None) -> jax.Array:
  """Mean softmax cross-entropy over the labelled pixels; logits [..., K], labels [...] int.

  With `class_weights` [K] each pixel's loss is multiplied by its true class's
  weight and the sum divided by the sum of those weights (not by the pixel
  count), as torch's `F.cross_entropy(logits, labels, weight=w, ignore_index=255)`.
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels)
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0).astype(jnp.int32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
  weights = valid.astype(jnp.float32)
  if class_weights is not None:
    weights = weights * jnp.asarray(class_weights, jnp.float32)[safe]
  return _valid_mean(nll, weights)


def _binary_inputs(logits, labels, ignore_label):
  """Logits [...] or [..., 1] and labels [...] in {0, 1, ignore} -> (logits, float targets, valid mask)."""
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels)
  if logits.ndim == labels.ndim + 1 and logits.shape[-1] == 1:
    logits = logits[..., 0]
  if logits.shape != labels.shape:
    raise ValueError(f"binary loss: logits {logits.shape} do not match labels {labels.shape}")
  valid = labels != ignore_label
  return logits, jnp.where(valid, labels, 0).astype(jnp.float32), valid.astype(jnp.float32)


def binary_cross_entropy_with_logits(logits, labels, ignore_label: int = 255,
                                     pos_weight: Optional[float] = None) -> jax.Array:
  """Mean sigmoid cross-entropy over the labelled pixels; logits [...] or [..., 1], labels [...] in {0, 1}.

  `pos_weight` scales the loss of positive pixels, as torch's
  `F.binary_cross_entropy_with_logits(pos_weight=...)` (the mean stays over pixels).
  """
  logits, targets, valid = _binary_inputs(logits, labels, ignore_label)
  if pos_weight is None:
    loss = optax.sigmoid_binary_cross_entropy(logits, targets)
  else:
    # torch's form: (1 - y) * x + (1 + (p - 1) * y) * softplus(-x)
    loss = (1.0 - targets) * logits + (1.0 + (float(pos_weight) - 1.0) * targets) * jax.nn.softplus(-logits)
  return _valid_mean(loss, valid)


def dice_loss(logits, labels, ignore_label: int = 255, smooth: float = 1.0) -> jax.Array:
  """Soft Dice loss, 1 - (2 sum(p g) + smooth) / (sum(p) + sum(g) + smooth), over the labelled pixels.

  Binary (logits [...] or [..., 1]): p = sigmoid(logits), g the {0, 1} labels,
  sums over every labelled pixel of the batch (one Dice for the batch, not a
  mean of per-image Dice: an image with an empty foreground does not make its
  own term 0/0). Multi-class (logits [..., K], K > 1): p = softmax, g one-hot,
  one such Dice per class and the loss is 1 - their mean.
  `smooth` (1 by default, the common choice for binary masks) keeps the
  ratio defined when both p and g are empty (Dice 1, loss 0) and softens the
  gradient when the foreground is tiny; smooth=0 is the plain formula.
  """
  labels = jnp.asarray(labels)
  logits = jnp.asarray(logits, jnp.float32)
  binary = logits.ndim == labels.ndim or (logits.ndim == labels.ndim + 1 and logits.shape[-1] == 1)
  if binary:
    logits, targets, valid = _binary_inputs(logits, labels, ignore_label)
    probs = jax.nn.sigmoid(logits) * valid
    targets = targets * valid
    axes = tuple(range(probs.ndim))
  else:
    valid = (labels != ignore_label).astype(jnp.float32)[..., None]
    safe = jnp.where(labels != ignore_label, labels, 0).astype(jnp.int32)
    probs = jax.nn.softmax(logits, axis=-1) * valid
    targets = jax.nn.one_hot(safe, logits.shape[-1], dtype=jnp.float32) * valid
    axes = tuple(range(probs.ndim - 1))  # per class
  intersection = jnp.sum(probs * targets, axis=axes)
  denominator = jnp.sum(probs, axis=axes) + jnp.sum(targets, axis=axes)
  dice = (2.0 * intersection + smooth) / jnp.maximum(denominator + smooth, 1e-7)
  return 1.0 - jnp.mean(dice)


def bce_dice_loss(logits, labels, ignore_label: int = 255, bce_weight: float = 1.0,
                  dice_weight: float = 1.0, smooth: float = 1.0) -> jax.Array:
  """bce_weight * binary_cross_entropy_with_logits + dice_weight * dice_loss (binary logits)."""
  return (bce_weight * binary_cross_entropy_with_logits(logits, labels, ignore_label)
          + dice_weight * dice_loss(logits, labels, ignore_label, smooth))
