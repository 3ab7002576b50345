"""Image classification: a selectable loss (label smoothing, Mixup/CutMix, class weights), accuracy (top-1/top-5).

`train.loss` (options in `train.loss_options`, a dict of the loss function's keyword arguments):
  cross_entropy (alias softmax_ce)  softmax cross-entropy on the (smoothed, mixed) label distribution
  focal    sigmoid focal loss (Lin et al. 2017), torchvision.ops.sigmoid_focal_loss per class on the
           one-vs-all targets, summed over classes, mean over examples (RetinaNet's normalisation by the
           one positive per image); options alpha (0.25, -1: off), gamma (2)
  poly1    PolyLoss Poly-1 (Leng et al. 2022): CE + epsilon (1 - p_t), optax.losses.poly_loss_cross_entropy;
           option epsilon (2: the paper's ImageNet value)
  apl      asymmetric polynomial loss (Huang et al. 2023) on sigmoid outputs, summed over classes, mean over
           examples; options as jaxcnn.losses.asymmetric_polynomial_loss (the authors' defaults)
  bce      binary cross-entropy on sigmoid outputs, mean over examples and classes (timm's
           BinaryCrossEntropy, `--bce-loss`); label smoothing as timm's (off = s/K, on = 1 - s + s/K)
  rbf_map  LeNet-5's own criterion (its eq. 9), for the RBF head; hard labels only
The sigmoid losses (focal, apl, bce) are the multi-label ones; here they see one-hot targets (smoothed
and mixed as for cross-entropy). `train.class_weights` ([K], default none) weights each example's loss by
its target's class weight (sum_k y_k w_k for soft targets) and divides by the sum of those weights, as
torch's `F.cross_entropy(weight=w)`. Eval always reports the softmax cross-entropy as eval/loss.

Models with several heads in training are trained as their papers do; eval
always sees the model's single logits array:
* GoogLeNet with `aux_logits=True` returns (logits, aux2, aux1) in training:
  loss = main + `train.aux_loss_weight` x (aux1 + aux2), default 0.3
  (Szegedy et al. 2015, sec. 5: "the losses of the auxiliary classifiers
  were weighted by 0.3").
* Conformer with `train_heads=True` returns (conv_logits, trans_logits):
  loss = the mean of the two heads' losses (the authors' `engine.py`);
  the train accuracy is that of their sum, the authors' prediction.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn import losses
from jaxcnn.errors import UserError, unknown
from jaxcnn.models.conformer import ConformerOutputs
from jaxcnn.models.googlenet import GoogLeNetOutputs
from jaxcnn.models.lenet import rbf_map_loss
from jaxcnn.registry import create_model
from jaxcnn.tasks.base import Task, model_kwargs


LOSSES = ("cross_entropy", "softmax_ce", "focal", "poly1", "apl", "bce", "rbf_map")


def per_example_loss(name: str, logits, labels, options=None):
  """[B] losses of logits [B, K] (float32) against label distributions [B, K] for `train.loss` = name."""
  options = dict(options or {})
  logits = logits.astype(jnp.float32)
  if name in ("cross_entropy", "softmax_ce"):
    return optax.softmax_cross_entropy(logits, labels)
  if name == "focal":
    return jnp.sum(losses.sigmoid_focal_loss(logits, labels, **options), axis=-1)
  if name == "poly1":
    return losses.poly1_cross_entropy(logits, labels, reduction="none", **options)
  if name == "apl":
    return jnp.sum(losses.asymmetric_polynomial_loss(logits, labels, reduction="none", **options), axis=-1)
  if name == "bce":
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels), axis=-1)
  raise unknown("train.loss", name, LOSSES)


def _check_loss_options(name: str, options) -> dict:
  """train.loss_options as a dict the loss function accepts (one line naming what is allowed otherwise)."""
  import inspect
  options = dict(options or {})
  functions = {"focal": losses.sigmoid_focal_loss, "poly1": losses.poly1_cross_entropy,
               "apl": losses.asymmetric_polynomial_loss}
  allowed = [p for p in inspect.signature(functions[name]).parameters][2:] if name in functions else []
  allowed = [p for p in allowed if p != "reduction"]
  bad = sorted(set(options) - set(allowed))
  if bad:
    raise UserError(f"train.loss_options {bad} are not options of train.loss='{name}'; "
                    f"allowed: {', '.join(allowed) or 'none'}")
  return options


class Classification(Task):
  best_metric = ("eval/accuracy", "max")

  def __init__(self, config, data_info, axis_name=None):
    super().__init__(config, axis_name)
    self.num_classes = data_info.num_classes
    self.loss_name = config.train.get("loss", "cross_entropy")
    if self.loss_name not in LOSSES:
      raise unknown("train.loss", self.loss_name, LOSSES)
    mixing = config.train.get("mixup_alpha", 0) > 0 or config.train.get("cutmix_alpha", 0) > 0
    if self.loss_name == "rbf_map" and (mixing or config.train.label_smoothing > 0):
      raise UserError("train.loss='rbf_map' takes hard labels: set train.label_smoothing, mixup_alpha and cutmix_alpha to 0")
    if config.model.get("return_heads", False):
      raise UserError("model.return_heads=True gives a pair of logits in eval too; to train on the two heads' "
                      "losses set model.train_heads=True instead")
    self.loss_options = _check_loss_options(self.loss_name, config.train.get("loss_options", {}))
    weights = config.train.get("class_weights", None)
    self.class_weights = None
    if weights is not None and len(weights):
      weights = np.asarray(weights, np.float32)
      if weights.shape != (self.num_classes,) or not np.all(np.isfinite(weights)) or np.any(weights < 0) \
          or not weights.sum() > 0:
        raise UserError(f"train.class_weights must be {self.num_classes} finite numbers >= 0 (one per class, "
                        f"not all 0), got {list(weights)}")
      self.class_weights = weights
    self.aux_loss_weight = float(config.train.get("aux_loss_weight", 0.3))
    if self.aux_loss_weight < 0:
      raise UserError(f"train.aux_loss_weight={self.aux_loss_weight} must be >= 0 (0.3: GoogLeNet's paper)")
    self.model = create_model(config.model.name,
                              **model_kwargs(config.model, config.train, axis_name,
                                             num_classes=self.num_classes))
    # The batch field the model reads: 'image' (images, or clips [B, T, H, W, C]) unless the model says
    # otherwise (a video model on cached per-frame features reads 'frame_features').
    self.input_field = getattr(self.model, "input_field", "image")

  def init(self, rng, batch):
    params_rng, dropout_rng, drop_path_rng = jax.random.split(rng, 3)
    return self.model.init({"params": params_rng, "dropout": dropout_rng, "drop_path": drop_path_rng},
                           batch[self.input_field], train=False)

  def loss(self, params, model_state, batch, rng):
    dropout_rng, drop_path_rng, mix_rng = jax.random.split(rng, 3)
    labels = optax.smooth_labels(jax.nn.one_hot(batch["label"], self.num_classes),
                                 float(self.config.train.label_smoothing))
    images, labels = mix_batch(mix_rng, batch[self.input_field], labels, self.config.train)
    outputs, new_state = self.model.apply(
        {"params": params, **model_state}, images, train=True,
        rngs={"dropout": dropout_rng, "drop_path": drop_path_rng}, mutable=list(model_state))
    loss, logits, metrics = self.training_loss(outputs, labels, batch["label"])
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, (new_state, {"train/loss": loss, "train/accuracy": accuracy, **metrics})

  def criterion(self, logits, labels, hard_labels):
    """Mean loss of one head's logits (always computed in float32)."""
    logits = logits.astype(jnp.float32)
    if self.loss_name == "rbf_map":  # LeNet-5's own criterion (its eq. 9) for the RBF head's logits
      return rbf_map_loss(logits, hard_labels).mean()
    return weighted_mean(per_example_loss(self.loss_name, logits, labels, self.loss_options), labels,
                         self.class_weights)

  def training_loss(self, outputs, labels, hard_labels):
    """(loss, logits for the train accuracy, extra metrics) of the model's training output."""
    if isinstance(outputs, GoogLeNetOutputs):
      main = self.criterion(outputs.logits, labels, hard_labels)
      aux = (self.criterion(outputs.aux_logits1, labels, hard_labels)
             + self.criterion(outputs.aux_logits2, labels, hard_labels))
      return main + self.aux_loss_weight * aux, outputs.logits, {"train/main_loss": main, "train/aux_loss": aux}
    if isinstance(outputs, ConformerOutputs):
      conv = self.criterion(outputs.conv_logits, labels, hard_labels)
      trans = self.criterion(outputs.trans_logits, labels, hard_labels)
      logits = outputs.conv_logits.astype(jnp.float32) + outputs.trans_logits.astype(jnp.float32)
      return (conv + trans) / 2, logits, {"train/conv_loss": conv, "train/trans_loss": trans}
    return self.criterion(outputs, labels, hard_labels), outputs.astype(jnp.float32), {}

  def eval_step(self, variables, batch):
    logits = self.model.apply(variables, batch[self.input_field], train=False).astype(jnp.float32)
    mask, labels = batch["mask"], batch["label"]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    sums = {"loss": jnp.sum(nll * mask),
            "accuracy": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
            "count": jnp.sum(mask)}
    if self.num_classes > 5:
      top5 = jnp.any(jax.lax.top_k(logits, 5)[1] == labels[:, None], axis=-1)
      sums["top5_accuracy"] = jnp.sum(top5 * mask)
    return sums


def weighted_mean(values, labels, class_weights=None):
  """Mean of per-example `values`; with class weights [K], sum_i w_i v_i / sum_i w_i, w_i = labels_i . weights."""
  if class_weights is None:
    return jnp.mean(values)
  w = labels @ jnp.asarray(class_weights, jnp.float32)
  return jnp.sum(w * values) / jnp.maximum(jnp.sum(w), 1e-12)


def mix_batch(rng, images, labels, train_cfg):
  """Mixup (Zhang et al. 2018) and/or CutMix (Yun et al. 2019) on device, one mixing ratio per batch.

  Each image is mixed with its neighbour in the global batch (a roll, which stays
  cheap under sharding), so the result does not depend on the device count.
  `train.mixup_alpha` / `train.cutmix_alpha` (0: off); with both on, CutMix is
  chosen with probability `train.cutmix_prob`; `train.mix_prob` of the steps are mixed.
  """
  mixup, cutmix = float(train_cfg.get("mixup_alpha", 0.0)), float(train_cfg.get("cutmix_alpha", 0.0))
  if mixup <= 0 and cutmix <= 0:
    return images, labels
  choose_rng, lam_rng, box_rng, apply_rng = jax.random.split(rng, 4)
  use_cutmix = jnp.asarray(cutmix > 0) if mixup <= 0 else (
      jnp.asarray(False) if cutmix <= 0 else jax.random.bernoulli(choose_rng, float(train_cfg.get("cutmix_prob", 0.5))))
  alpha = jnp.where(use_cutmix, max(cutmix, 1e-6), max(mixup, 1e-6))
  lam = jax.random.beta(lam_rng, alpha, alpha)
  other_images, other_labels = jnp.roll(images, 1, axis=0), jnp.roll(labels, 1, axis=0)

  # CutMix: paste a box of area ~(1 - lam) from the neighbour; lam becomes the exact kept area.
  h, w = images.shape[1:3]
  cut = jnp.sqrt(1.0 - lam)
  cy, cx = jax.random.uniform(box_rng, (2,)) * jnp.array([h, w])
  y0, y1 = jnp.clip(cy - cut * h / 2, 0, h), jnp.clip(cy + cut * h / 2, 0, h)
  x0, x1 = jnp.clip(cx - cut * w / 2, 0, w), jnp.clip(cx + cut * w / 2, 0, w)
  ys, xs = jnp.arange(h)[:, None] + 0.5, jnp.arange(w)[None, :] + 0.5
  box = ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1))[None, :, :, None]
  box_lam = 1.0 - jnp.mean(box)

  mixed_images = jnp.where(use_cutmix, jnp.where(box, other_images, images),
                           lam * images + (1 - lam) * other_images)
  lam = jnp.where(use_cutmix, box_lam, lam)
  mixed_labels = lam * labels + (1 - lam) * other_labels
  apply = jax.random.bernoulli(apply_rng, float(train_cfg.get("mix_prob", 1.0)))
  return (jnp.where(apply, mixed_images, images).astype(images.dtype),
          jnp.where(apply, mixed_labels, labels))
