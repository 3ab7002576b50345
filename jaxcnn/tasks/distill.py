"""Knowledge distillation: a frozen teacher's outputs train a student classifier, on the same augmented batch.

    --config.task=distill --config.distill.teacher=runs/resnet_digits      # a jaxcnn workdir (its latest checkpoint)
    --config.distill.teacher=deit_base.pth --config.distill.teacher_model=vit_base_patch16_224   # or weights

The teacher is a jaxcnn workdir (its config.json names the model and its options) or a torchvision / timm /
big_vision weight file converted by `jaxcnn.convert` (`distill.teacher_model` names the architecture,
`distill.teacher_options` its create_model options); both load through `jaxcnn.train.finetune.load_pretrained`.
Its variables sit in the train state's non-trained collections (model_state['teacher']): never updated,
checkpointed with the student, in eval mode (BatchNorm running statistics, no dropout). A teacher whose
number of classes differs from the student's dataset is refused (one line).

Loss, with the student's logits s, the teacher's t and the label loss L (train.loss, label smoothing, Mixup /
CutMix, class weights: as the classification task):
  soft  (Hinton et al. 2015)   (1 - alpha) L + alpha T^2 KL(softmax(t / T) || softmax(s / T)), KL summed over
                               classes and averaged over examples (torch's reduction='batchmean'; DeiT's own
                               soft variant divides by B x K instead)
  hard  (Touvron et al. 2021)  (1 - alpha) L + alpha CE(s, argmax t)   (DeiT's hard distillation, alpha 0.5)
A distilled ViT student (`deit_*_distilled`, `model.distilled=True`) takes L on its class token's head and
the distillation term on its distillation token's head; it is evaluated on the mean of the two heads.
Teacher and student see the same augmented, mixed images (the "consistent teaching" of Beyer et al. 2022,
big_vision's distillation configs). Eval adds eval/teacher_accuracy and eval/agreement (student and teacher
predict the same class).
"""
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxcnn.data import dataset_info
from jaxcnn.errors import UserError, unknown
from jaxcnn.registry import create_model
from jaxcnn.tasks.base import model_kwargs
from jaxcnn.tasks.classification import Classification, mix_batch

log = logging.getLogger("jaxcnn")
TYPES = ("soft", "hard")
TEACHER = "teacher"


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "teacher": "",            # a jaxcnn workdir or a weight file
      "teacher_model": "",      # the architecture of a weight file (a workdir's config.json names its own)
      "teacher_options": {},    # create_model options of a weight file's teacher
      "type": "soft",           # soft (Hinton) | hard (DeiT)
      "temperature": 4.0,       # T of the soft loss
      "alpha": 0.5,             # weight of the distillation term; 0: the label loss alone (the baseline)
  })


def soft_distillation_loss(student_logits, teacher_logits, temperature: float):
  """T^2 * mean over examples of KL(softmax(t / T) || softmax(s / T)) (Hinton et al. 2015)."""
  s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature)
  return temperature ** 2 * jnp.mean(optax.losses.kl_divergence_with_log_targets(s, t))


def hard_distillation_loss(student_logits, teacher_logits):
  """Cross-entropy against the teacher's top class (DeiT)."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(student_logits.astype(jnp.float32),
                                                                  jnp.argmax(teacher_logits, -1)))


def _teacher_spec(cfg, student_config):
  """(model name, create_model options, number of classes or None) of the teacher."""
  path = cfg.teacher
  if not path:
    raise UserError("task 'distill' needs distill.teacher: a jaxcnn workdir or a weight file")
  if not os.path.exists(path):
    raise UserError(f"distill.teacher: no such file or directory: {path}")
  config_file = os.path.join(path, "config.json")
  if os.path.isdir(path):
    if not os.path.exists(config_file):
      raise UserError(f"distill.teacher {path} is a directory without config.json (not a jaxcnn workdir)")
    with open(config_file) as f:
      teacher_cfg = json.load(f)
    model = dict(teacher_cfg["model"])
    name = model.pop("name")
    normalize = teacher_cfg.get("data", {}).get("normalize")
    if normalize and normalize != student_config.data.normalize:
      raise UserError(f"the teacher in {path} was trained on data.normalize='{normalize}', the student's data "
                      f"is '{student_config.data.normalize}': set data.normalize='{normalize}'")
    return name, model, dataset_info(teacher_cfg["data"]["name"]).num_classes
  if not cfg.teacher_model:
    raise UserError("distill.teacher is a weight file: set distill.teacher_model to its architecture")
  return cfg.teacher_model, dict(cfg.teacher_options), None


class Distill(Classification):

  def __init__(self, config, data_info, axis_name=None):
    super().__init__(config, data_info, axis_name)
    self.distill = default_config()
    self.distill.update(dict(config.get("distill", {})))
    d = self.distill
    if d.type not in TYPES:
      raise unknown("distill.type", d.type, TYPES)
    if not 0 <= float(d.alpha) <= 1:
      raise UserError(f"distill.alpha must be in [0, 1], got {d.alpha}")
    if not float(d.temperature) > 0:
      raise UserError(f"distill.temperature must be > 0, got {d.temperature}")
    name, options, classes = _teacher_spec(d, config)
    if classes is not None and classes != self.num_classes:
      raise UserError(f"the teacher ({name} in {d.teacher}) has {classes} classes, the student's data "
                      f"'{config.data.name}' has {self.num_classes}: they must be the same")
    self.teacher_name = name
    options.setdefault("num_classes", self.num_classes)
    self.teacher = create_model(name, **model_kwargs(ml_collections.ConfigDict({"name": name, **options}),
                                                     config.train, axis_name))
    self.distilled_student = bool(getattr(self.model, "distilled", False))
    # Read now, on the host: the trainer calls `init` inside a jitted function, where no file may be read.
    from jaxcnn.train import finetune
    self._teacher_variables = jax.tree.map(np.asarray, finetune.load_pretrained(d.teacher, name))
    self._checked = False

  def teacher_variables(self, image_shape):
    """The teacher's variables (numpy); refused if its classifier is not the student's size."""
    variables = self._teacher_variables
    if not self._checked:
      dummy = jax.ShapeDtypeStruct((1,) + tuple(image_shape[1:]), jnp.float32)
      try:
        out = jax.eval_shape(lambda v, x: self.teacher.apply(v, x, train=False), variables, dummy)
      except Exception as e:  # flax's shape errors: the weights are not a `num_classes` classifier
        raise UserError(f"the teacher's weights ({self.distill.teacher}) do not fit '{self.teacher_name}' "
                        f"with the student's {self.num_classes} classes: {str(e).splitlines()[0]}") from None
      if out.shape[-1] != self.num_classes:
        raise UserError(f"the teacher gives {out.shape[-1]} classes, the student's data has {self.num_classes}")
      self._checked = True
    return variables

  def describe(self):
    return {**super().describe(), "teacher": self.teacher_name}

  def init(self, rng, batch):
    variables = dict(super().init(rng, batch))
    variables[TEACHER] = jax.tree.map(jnp.asarray, self.teacher_variables(batch["image"].shape))
    return variables

  def _teacher_logits(self, model_state, images):
    logits = self.teacher.apply(model_state[TEACHER], images, train=False)
    return jax.lax.stop_gradient(logits.astype(jnp.float32))

  def loss(self, params, model_state, batch, rng):
    dropout_rng, drop_path_rng, mix_rng = jax.random.split(rng, 3)
    labels = optax.smooth_labels(jax.nn.one_hot(batch["label"], self.num_classes),
                                 float(self.config.train.label_smoothing))
    images, labels = mix_batch(mix_rng, batch["image"], labels, self.config.train)
    teacher_logits = self._teacher_logits(model_state, images)   # the same augmented batch
    student_state = {k: v for k, v in model_state.items() if k != TEACHER}
    extra = {"heads": True} if self.distilled_student else {}
    outputs, new_state = self.model.apply(
        {"params": params, **student_state}, images, train=True, **extra,
        rngs={"dropout": dropout_rng, "drop_path": drop_path_rng}, mutable=list(student_state))
    if self.distilled_student:   # DeiT: labels on the class head, the teacher on the distillation head
      cls_logits, student_logits = outputs
      label_loss = self.criterion(cls_logits, labels, batch["label"])
      logits, metrics = (cls_logits.astype(jnp.float32) + student_logits.astype(jnp.float32)) / 2, {}
    else:
      label_loss, logits, metrics = self.training_loss(outputs, labels, batch["label"])
      student_logits = logits
    d = self.distill
    if d.type == "soft":
      distill_loss = soft_distillation_loss(student_logits, teacher_logits, float(d.temperature))
    else:
      distill_loss = hard_distillation_loss(student_logits, teacher_logits)
    alpha = float(d.alpha)
    loss = (1 - alpha) * label_loss + alpha * distill_loss
    metrics = {**metrics, "train/loss": loss, "train/label_loss": label_loss, "train/distill_loss": distill_loss,
               "train/accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
               "train/agreement": jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1))}
    return loss, ({**new_state, TEACHER: model_state[TEACHER]}, metrics)

  def eval_step(self, variables, batch):
    student = {k: v for k, v in variables.items() if k != TEACHER}
    sums = super().eval_step(student, batch)
    student_pred = jnp.argmax(self.model.apply(student, batch["image"], train=False), -1)
    teacher_pred = jnp.argmax(self._teacher_logits(variables, batch["image"]), -1)
    mask = batch["mask"]
    return {**sums, "teacher_accuracy": jnp.sum((teacher_pred == batch["label"]) * mask),
            "agreement": jnp.sum((teacher_pred == student_pred) * mask)}
