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

Image-text (the `contrastive` task): `clip_loss` (CLIP's symmetric softmax cross-entropy, open_clip's ClipLoss)
and `siglip_loss` (SigLIP's pairwise sigmoid loss, open_clip's SigLipLoss), over the global batch, optionally
in row blocks that bound the memory of the B x B logits.
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


# Detection and multi-label losses (torchvision / torch.nn.functional semantics; `reduction` 'none' | 'mean' | 'sum'):
#   sigmoid_focal_loss            RetinaNet's focal loss, torchvision.ops.sigmoid_focal_loss
#   smooth_l1_loss, l1_loss       torch.nn.functional.smooth_l1_loss (beta) / l1_loss
#   poly1_cross_entropy           PolyLoss Poly-1 (Leng et al. 2022) through optax.losses.poly_loss_cross_entropy
#   asymmetric_polynomial_loss    APL (Huang et al. 2023) for multi-label sigmoid outputs
# The IoU losses (generalized/distance/complete_box_iou_loss) live with the box ops in jaxcnn.ops.

from jaxcnn.errors import UserError, unknown  # noqa: E402  (kept with the losses that use it)

_REDUCTIONS = ("none", "mean", "sum")


def _reduce_loss(loss, reduction: str):
  if reduction == "none":
    return loss
  if reduction == "mean":
    return jnp.mean(loss)
  if reduction == "sum":
    return jnp.sum(loss)
  raise unknown("reduction", reduction, _REDUCTIONS)


def sigmoid_focal_loss(inputs, targets, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none") -> jax.Array:
  """Focal loss (Lin et al. 2017) on logits, equal to torchvision.ops.sigmoid_focal_loss.

  BCE(x, y) * (1 - p_t)^gamma, times alpha_t = alpha y + (1 - alpha)(1 - y)
  unless alpha = -1. Targets are floats in [0, 1] of the logits' shape.
  """
  if not (0 <= alpha <= 1) and alpha != -1:
    raise UserError(f"sigmoid_focal_loss: alpha must be in [0, 1] or -1 (off), got {alpha}")
  inputs = jnp.asarray(inputs, jnp.float32)
  targets = jnp.asarray(targets, jnp.float32)
  p = jax.nn.sigmoid(inputs)
  ce = optax.sigmoid_binary_cross_entropy(inputs, targets)
  p_t = p * targets + (1 - p) * (1 - targets)
  loss = ce * (1 - p_t) ** gamma
  if alpha >= 0:
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
  return _reduce_loss(loss, reduction)


def smooth_l1_loss(inputs, targets, beta: float = 1.0, reduction: str = "mean") -> jax.Array:
  """torch.nn.functional.smooth_l1_loss: 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (beta=0: L1)."""
  d = jnp.abs(jnp.asarray(inputs, jnp.float32) - jnp.asarray(targets, jnp.float32))
  if beta == 0:
    loss = d
  else:
    loss = jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
  return _reduce_loss(loss, reduction)


smooth_l1 = smooth_l1_loss


def l1_loss(inputs, targets, reduction: str = "mean") -> jax.Array:
  """torch.nn.functional.l1_loss."""
  return _reduce_loss(jnp.abs(jnp.asarray(inputs, jnp.float32) - jnp.asarray(targets, jnp.float32)), reduction)


def poly1_cross_entropy(logits, labels, epsilon: float = 2.0, reduction: str = "mean") -> jax.Array:
  """Poly-1 loss (Leng et al. 2022): softmax CE + epsilon (1 - p_t), via optax.losses.poly_loss_cross_entropy.

  logits [..., K]; labels either integer class ids [...] or distributions
  [..., K] (one-hot or smoothed; p_t is then the labels-weighted probability,
  as optax). epsilon=2 is the paper's ImageNet value, -1 its detection value.
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels)
  if labels.ndim == logits.ndim - 1:
    labels = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  loss = optax.losses.poly_loss_cross_entropy(logits, labels.astype(jnp.float32), epsilon=epsilon)
  return _reduce_loss(loss, reduction)


def asymmetric_polynomial_loss(logits, targets, gamma_pos: float = 0.0, gamma_neg: float = 4.0,
                               clip: float = 0.05, epsilon_pos: float = 1.0, epsilon_pos_pow: float = -2.5,
                               epsilon_neg: float = 0.0, eps: float = 1e-8,
                               reduction: str = "sum") -> jax.Array:
  """Asymmetric Polynomial Loss (Huang et al. 2023, ICASSP) for multi-label logits [..., C], targets in {0, 1}.

  Written from the authors' APLLoss (LUMIA-Group/APL), defaults included.
  With p = sigmoid(x) and p_m = max(p - clip, 0) (the shifted probability of
  asymmetric loss; clip=0 turns it off), each element's loss is
    positive: -(1 - p)^gamma_pos   [log p + epsilon_pos (1 - p) + epsilon_pos_pow / 2 (1 - p)^2]
    negative: -p_m^gamma_neg       [log(1 - p_m) + epsilon_neg (1 - p_m)]
  (probabilities inside the bracket clamped to >= eps; the focusing weights
  are held constant in the gradient, the reference's
  disable_torch_grad_focal_loss=True). The polynomial terms re-weight the
  leading Taylor terms of BCE, the gammas focus the two sides separately. The
  reference returns the sum over all elements (reduction='sum').
  """
  x = jnp.asarray(logits, jnp.float32)
  y = jnp.asarray(targets, jnp.float32)
  p = jax.nn.sigmoid(x)
  q = 1 - p
  if clip is not None and clip > 0:
    q = jnp.minimum(q + clip, 1.0)
  pc = jnp.maximum(p, eps)
  qc = jnp.maximum(q, eps)
  pos = y * (jnp.log(pc) + epsilon_pos * (1 - pc) + epsilon_pos_pow * 0.5 * (1 - pc) ** 2)
  neg = (1 - y) * (jnp.log(qc) + epsilon_neg * qc)
  loss = pos + neg
  if gamma_neg > 0 or gamma_pos > 0:
    p_t = p * y + q * (1 - y)
    w = jax.lax.stop_gradient((1 - p_t) ** (gamma_pos * y + gamma_neg * (1 - y)))
    loss = loss * w
  return _reduce_loss(-loss, reduction)


# --- image-text contrastive losses (CLIP, SigLIP) ---------------------------------------------------------------
# Both take L2-normalised embeddings [b, D] and score every image against every text of the GLOBAL batch. Under
# jit with NamedShardings the arrays already are global; on the legacy pmap path (`axis_name`) each device
# all-gathers the features and computes the same global loss (all_gather's transpose, a psum_scatter, sends each
# device's share of the gradient back, and the runner's pmean of the gradients gives the global one).
# `chunk` > 0 computes the B x B logits in blocks of `chunk` rows, each block rematerialised in the backward pass,
# so at most one block of logits is alive instead of B x B; the result is the same sum taken in another order.


def _global(features, axis_name):
  features = jnp.asarray(features, jnp.float32)
  return jax.lax.all_gather(features, axis_name, tiled=True) if axis_name else features


def _row_block_sum(rows, fn, chunk: int):
  """sum over row blocks of `fn(block, first_row)`; one block of `chunk` rows at a time when chunk > 0."""
  n = rows.shape[0]
  if not chunk or chunk >= n:
    return fn(rows, 0)
  if n % chunk:
    raise ValueError(f"chunk={chunk} must divide the global batch size {n}")
  blocks = rows.reshape((n // chunk, chunk) + rows.shape[1:])
  body = jax.checkpoint(lambda xs: fn(xs[0], xs[1]))
  return jnp.sum(jax.lax.map(body, (blocks, jnp.arange(n // chunk) * chunk)))


def clip_loss(image, text, logit_scale, *, axis_name: Optional[str] = None, chunk: int = 0,
              max_logit_scale: float = 100.0) -> jax.Array:
  """CLIP's symmetric softmax cross-entropy over the global batch (Radford et al. 2021; open_clip's ClipLoss with
  gathered features): the mean of the image->text and text->image cross-entropies of the logits
  scale * image @ text.T, where example i's own text is the one right answer. `logit_scale` is the learned
  temperature exp(t) (CLIP initialises t = log(1 / 0.07)); it is clamped at `max_logit_scale` (100, as CLIP)."""
  image, text = _global(image, axis_name), _global(text, axis_name)
  scale = jnp.minimum(jnp.asarray(logit_scale, jnp.float32), max_logit_scale)

  def cross_entropy(queries, keys):
    def block(rows, first):
      labels = first + jnp.arange(rows.shape[0])
      return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(scale * rows @ keys.T, labels))
    return _row_block_sum(queries, block, chunk)

  return (cross_entropy(image, text) + cross_entropy(text, image)) / (2 * image.shape[0])


def siglip_loss(image, text, logit_scale, logit_bias, *, axis_name: Optional[str] = None,
                chunk: int = 0) -> jax.Array:
  """SigLIP's pairwise sigmoid loss over the global batch (Zhai et al. 2023; open_clip's SigLipLoss): every
  (image, text) pair is a binary problem, positive on the diagonal, with logits scale * image @ text.T + bias;
  the loss sums -log sigmoid(+-logit) over all B x B pairs and divides by B (the mean over processes of
  open_clip's per-rank loss). SigLIP initialises the scale at 10 and the bias at -10; the scale is not clamped."""
  image, text = _global(image, axis_name), _global(text, axis_name)
  scale = jnp.asarray(logit_scale, jnp.float32)
  bias = jnp.asarray(logit_bias, jnp.float32)

  def block(rows, first):
    logits = scale * rows @ text.T + bias
    positive = (first + jnp.arange(rows.shape[0]))[:, None] == jnp.arange(text.shape[0])[None, :]
    return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, positive.astype(jnp.float32)))

  return _row_block_sum(image, block, chunk) / image.shape[0]
