"""Image classification: softmax cross-entropy with label smoothing, accuracy (top-1/top-5)."""
import jax
import jax.numpy as jnp
import optax

from jaxcnn.registry import create_model
from jaxcnn.tasks.base import Task, model_kwargs


class Classification(Task):
  best_metric = ("eval/accuracy", "max")

  def __init__(self, config, data_info, axis_name=None):
    super().__init__(config, axis_name)
    self.num_classes = data_info.num_classes
    self.model = create_model(config.model.name,
                              **model_kwargs(config.model, config.train, axis_name,
                                             num_classes=self.num_classes))

  def init(self, rng, batch):
    params_rng, dropout_rng, drop_path_rng = jax.random.split(rng, 3)
    return self.model.init({"params": params_rng, "dropout": dropout_rng, "drop_path": drop_path_rng},
                           batch["image"], train=False)

  def loss(self, params, model_state, batch, rng):
    dropout_rng, drop_path_rng = jax.random.split(rng)
    logits, new_state = self.model.apply(
        {"params": params, **model_state}, batch["image"], train=True,
        rngs={"dropout": dropout_rng, "drop_path": drop_path_rng}, mutable=list(model_state))
    logits = logits.astype(jnp.float32)  # the loss is always computed in float32
    labels = optax.smooth_labels(jax.nn.one_hot(batch["label"], self.num_classes),
                                 float(self.config.train.label_smoothing))
    loss = optax.softmax_cross_entropy(logits, labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, (new_state, {"train/loss": loss, "train/accuracy": accuracy})

  def eval_step(self, variables, batch):
    logits = self.model.apply(variables, batch["image"], train=False).astype(jnp.float32)
    mask, labels = batch["mask"], batch["label"]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    sums = {"loss": jnp.sum(nll * mask),
            "accuracy": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
            "count": jnp.sum(mask)}
    if self.num_classes > 5:
      top5 = jnp.any(jax.lax.top_k(logits, 5)[1] == labels[:, None], axis=-1)
      sums["top5_accuracy"] = jnp.sum(top5 * mask)
    return sums
