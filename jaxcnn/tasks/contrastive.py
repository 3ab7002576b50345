"""Image-text contrastive learning (CLIP, SigLIP), zero-shot classification and retrieval recall.

Batches of an image-text dataset (`jaxcnn.data.captions`) carry `image` [B, H, W, 3], `captions` int32
[B, K, L] (K caption slots, all-zero rows empty, slot 0 always a caption) and `label` where the dataset has
classes. Models follow the CLIP contract (`jaxcnn/models/clip.py`): `encode_image`, `encode_text` (not
normalised) and the parameters 'logit_scale' (log of the temperature) and, for SigLIP, 'logit_bias'.

Training: each step draws one valid caption slot per image with the step's key (uniformly among the
image's captions; drawn for the global batch, so 1 device, 8 devices and pmap pick the same ones) and
minimises, over the global batch (`jaxcnn.losses`):
  clip    the symmetric softmax cross-entropy, temperature exp(logit_scale) clamped at 100;
  siglip  the pairwise sigmoid loss with the learned bias (needs a model with init_logit_bias, e.g.
          clip_tiny_siglip).

Eval (keys `eval/...`):
  zeroshot_accuracy  on datasets with classes: each class name is put into every template of the template
                     set (`jaxcnn.eval.templates`), the text embeddings normalised, averaged per class and
                     normalised again (CLIP's prompt ensembling); an image's class is the class embedding
                     closest to its image embedding. The class classifier is computed once per evaluation
                     (`eval_context`), not per batch.
  i2t_recall@k, t2i_recall@k  on datasets with captions: exact recall over the whole split
                     (`jaxcnn.eval.retrieval`), image i's right answers its own valid captions.
The headline (`best_metric`) is eval/zeroshot_accuracy when the dataset has classes, else eval/t2i_recall@1.
After each eval plots/ gets the zero-shot confusion matrix (classes) or the image-caption similarity matrix
of the first 16 eval pairs.

LiT (Zhai et al. 2022, "locked-image text tuning"): `contrastive.lock_image=True` keeps the image tower
fixed (no updates, run in inference mode, no gradient through it) and trains the text tower and the
temperature. Start it from pretrained image weights with the fine-tuning options (`jaxcnn.train.finetune`):
  from a contrastive workdir or converted CLIP weights:  finetune.weights=PATH  finetune.from_subtree=visual
                                                         finetune.into=visual
  from a classifier with the same tower's layout:       finetune.weights=PATH  finetune.into=visual

Options (config section `contrastive`):
  loss          clip | siglip
  chunk         > 0: the loss's B x B logits in blocks of this many rows (must divide train.batch_size):
                bounded memory, the same loss
  templates     zero-shot template set ('' = the dataset's: digits for digits_captions, cifar10, cifar100,
                mnist; imagenet otherwise)
  class_names   zero-shot class names (() = the dataset's, or CLIP's for the datasets templates.py knows)
  recall_ks     the k of recall@k
  lock_image    LiT: the image tower stays fixed
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import losses
from jaxcnn.errors import UserError, unknown
from jaxcnn.eval import retrieval, templates
from jaxcnn.registry import create_model
from jaxcnn.tasks.base import Task, model_kwargs

LOSSES = ("clip", "siglip")
DATASET_TEMPLATES = {"digits_captions": "digits", "digits": "digits", "cifar10": "cifar10",
                     "cifar100": "cifar100", "mnist": "mnist"}
PREVIEW = 16


def default_config():
  import ml_collections
  return ml_collections.ConfigDict({"loss": "clip", "chunk": 0, "templates": "", "class_names": (),
                                    "recall_ks": (1, 5, 10), "lock_image": False})


def normalise(x):
  x = x.astype(jnp.float32)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def zero_shot_tokens(class_names, template_set: str, context_length: int) -> np.ndarray:
  """int32 [C, T, L]: every class name in every template of the set."""
  from jaxcnn.data import tokenizer
  prompts = templates.templates(template_set)
  texts = [t.format(c) for c in class_names for t in prompts]
  return tokenizer.tokenize(texts, context_length).reshape(len(class_names), len(prompts), context_length)


class Contrastive(Task):

  def __init__(self, config, data_info, axis_name=None):
    super().__init__(config, axis_name)
    options = default_config()
    options.update(dict(config.get("contrastive", {})))
    self.options = options
    if options.loss not in LOSSES:
      raise unknown("contrastive.loss", options.loss, LOSSES)
    kinds = data_info.field_kinds
    self.captions = kinds.get("captions") == "text"
    self.zero_shot = kinds.get("label") == "class" and int(data_info.num_classes) > 0
    if not (self.captions or self.zero_shot):
      raise UserError(f"task 'contrastive' needs image-text pairs (a 'captions' field, e.g. digits_captions, "
                      f"coco_captions, image_text_csv) or classes for zero-shot eval; '{data_info.name}' has "
                      f"fields {sorted(kinds)}")
    self.model = create_model(config.model.name, **model_kwargs(config.model, config.train, axis_name))
    self.context_length = int(config.data.get("context_length", 77))
    model_length = getattr(self.model, "context_length", self.context_length)
    if model_length != self.context_length:
      raise UserError(f"data.context_length={self.context_length} but model '{config.model.name}' reads "
                      f"{model_length} tokens: set data.context_length={model_length}")
    if options.loss == "siglip" and getattr(self.model, "init_logit_bias", None) is None:
      raise UserError(f"contrastive.loss='siglip' needs a model with a logit bias (e.g. {config.model.name}_siglip, "
                      f"or model.init_logit_bias=-10.0 with model.init_logit_scale=2.3026)")
    self.chunk = int(options.chunk)
    batch = int(config.train.batch_size) // int(config.train.grad_accum_steps)
    if self.chunk < 0 or (self.chunk and batch % self.chunk):
      raise UserError(f"contrastive.chunk={self.chunk} must be 0 (off) or divide the step's batch {batch}")
    self.ks = tuple(int(k) for k in options.recall_ks)
    if not self.ks or min(self.ks) < 1:
      raise UserError(f"contrastive.recall_ks must be positive integers, got {tuple(options.recall_ks)}")
    self.class_names, self.class_tokens = (), None
    if self.zero_shot:
      self.class_names = (tuple(options.class_names) or tuple(data_info.class_names)
                          or templates.class_names(data_info.name) or ())
      if len(self.class_names) != int(data_info.num_classes):
        raise UserError(f"zero-shot eval on '{data_info.name}' needs its {data_info.num_classes} class names: set "
                        f"contrastive.class_names (got {len(self.class_names)})")
      template_set = options.templates or DATASET_TEMPLATES.get(data_info.name, "imagenet")
      self.class_tokens = zero_shot_tokens(self.class_names, template_set, self.context_length)
    self.best_metric = ("eval/zeroshot_accuracy", "max") if self.zero_shot else ("eval/t2i_recall@1", "max")
    self._confusion, self._similarity = None, None

  def describe(self):
    return {**super().describe(), "loss": self.options.loss}

  def optimizer(self, make_tx):
    tx = make_tx(self.config.optim)
    if self.options.lock_image:
      from jaxcnn.train.finetune import freeze
      tx = freeze(tx, "^visual/")
    return tx

  # --- training -------------------------------------------------------------------------------------------
  def init_batch(self, spec):
    batch = super().init_batch(spec)
    if "captions" not in batch:   # zero-shot evaluation of a classification dataset: tokens for init only
      batch["captions"] = jnp.zeros((2, 1, self.context_length), jnp.int32)
    return batch

  def init(self, rng, batch):
    return self.model.init({"params": rng}, batch["image"], batch["captions"][:, 0], train=False)

  def pick_captions(self, captions, rng):
    """[b, L]: one valid slot per image, uniform over its valid slots, drawn for the global batch."""
    valid = jnp.any(captions != 0, axis=-1)                          # [b, K]
    b, k = valid.shape
    if self.axis_name:   # pmap: draw for the global batch and keep this device's rows
      n = jax.lax.psum(1, self.axis_name)
      u = jax.random.uniform(rng, (n * b, k))
      u = jax.lax.dynamic_slice_in_dim(u, jax.lax.axis_index(self.axis_name) * b, b)
    else:
      u = jax.random.uniform(rng, (b, k))
    slot = jnp.argmax(jnp.where(valid, u, -1.0), axis=-1)
    return jnp.take_along_axis(captions, slot[:, None, None], axis=1)[:, 0]

  def embed(self, variables, images, tokens, train: bool, mutable=False):
    """L2-normalised image and text embeddings (the image tower in inference mode and without gradient when
    locked)."""
    lock = bool(self.options.lock_image)

    def fn(module, images, tokens):
      image = module.encode_image(images, train=train and not lock)
      image = jax.lax.stop_gradient(image) if lock else image
      return normalise(image), normalise(module.encode_text(tokens, train=train))
    return self.model.apply(variables, images, tokens, method=fn, mutable=mutable)

  def contrastive_loss(self, params, image, text):
    scale = jnp.exp(params["logit_scale"])
    if self.options.loss == "clip":
      return losses.clip_loss(image, text, scale, axis_name=self.axis_name, chunk=self.chunk), {}
    bias = params["logit_bias"]
    return (losses.siglip_loss(image, text, scale, bias, axis_name=self.axis_name, chunk=self.chunk),
            {"train/logit_bias": bias})

  def loss(self, params, model_state, batch, rng):
    tokens = self.pick_captions(batch["captions"], rng)
    (image, text), new_state = self.embed({"params": params, **model_state}, batch["image"], tokens, train=True,
                                          mutable=list(model_state))
    loss, metrics = self.contrastive_loss(params, image, text)
    return loss, (new_state, {"train/loss": loss, "train/logit_scale": jnp.exp(params["logit_scale"]), **metrics})

  # --- evaluation -----------------------------------------------------------------------------------------
  def classifier(self, variables):
    """[C, D] zero-shot class embeddings: per class, the normalised mean of its normalised template embeddings."""
    def one_class(tokens):
      text = normalise(self.model.apply(variables, tokens, method="encode_text"))
      return normalise(jnp.mean(text, axis=0))
    return jax.lax.map(one_class, jnp.asarray(self.class_tokens))

  def eval_context(self, variables):
    return self.classifier(variables) if self.zero_shot else None

  def encode_images(self, variables, images):
    return normalise(self.model.apply(variables, images, method="encode_image"))

  def eval_step(self, variables, batch, context=None):
    image = self.encode_images(variables, batch["image"])
    real = batch["mask"] > 0
    out = {"count": jnp.sum(real)}
    if self.zero_shot:
      pred = jnp.argmax(image @ context.T, axis=-1)
      label = batch["label"]
      out["correct"] = jnp.sum((pred == label) & real)
      c = len(self.class_names)
      if c <= 100:
        out["confusion"] = jnp.zeros((c, c), jnp.int32).at[label, pred].add(real.astype(jnp.int32))
    if self.captions and "captions" in batch:
      captions = batch["captions"]
      b, k, length = captions.shape
      text = normalise(self.model.apply(variables, captions.reshape(b * k, length), method="encode_text"))
      out.update({"per_example/image": image, "per_example/text": text.reshape(b, k, -1),
                  "per_example/text_valid": jnp.any(captions != 0, axis=-1), "per_example/mask": batch["mask"]})
    return out

  def eval_metrics(self, sums):
    count = max(float(sums.pop("count")), 1.0)
    self._confusion = sums.pop("confusion", None)
    return {"eval/zeroshot_accuracy": float(sums["correct"]) / count} if "correct" in sums else {}

  def host_eval(self, outputs):
    n = min(PREVIEW, len(outputs["image"]))
    self._similarity = outputs["image"][:n] @ outputs["text"][:n, 0].T
    metrics = retrieval.recall_at_k(outputs["image"], outputs["text"], outputs["text_valid"], self.ks)
    return {f"eval/{k}": v for k, v in metrics.items()}

  def on_eval(self, variables, step, workdir):
    if jax.process_index() != 0:
      return {}
    plots = os.path.join(workdir, "plots")
    if self._confusion is not None:
      names = [str(c) for c in self.class_names]
      retrieval.save_matrix(os.path.join(plots, f"zeroshot_confusion_step{step:07d}.png"), self._confusion, names,
                            names, f"zero-shot confusion (step {step})", "predicted class", "true class")
    elif self._similarity is not None:
      ids = range(len(self._similarity))
      retrieval.save_matrix(os.path.join(plots, f"similarity_step{step:07d}.png"), self._similarity, ids, ids,
                            f"image-caption cosine similarity (step {step})", "caption of eval pair", "eval image")
    return {}
