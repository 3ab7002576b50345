"""Classification with several heads in training: GoogLeNet's weighted auxiliary losses, Conformer's two heads."""
import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs.common import base_config
from jaxcnn.data import dataset_info
from jaxcnn.errors import UserError
from jaxcnn.tasks.classification import Classification
from jaxcnn.train import train_and_evaluate


SIZE = 16  # GoogLeNet's smallest input is 15x15


def _config(name, **model_options):
  c = base_config()
  c.model.name = name
  with c.model.unlocked():
    c.model.update(model_options)
  return c


def _batch(num=4, seed=0):
  images = jax.random.normal(jax.random.key(seed), (num, SIZE, SIZE, 3))
  return {"image": images, "label": jnp.arange(num) % 10}


def _task(name, weight=None, **model_options):
  config = _config(name, **model_options)
  if weight is not None:
    config.train.aux_loss_weight = weight
  return Classification(config, dataset_info("digits"))


@functools.lru_cache(maxsize=None)
def _task_and_variables(name, **model_options):
  task = _task(name, **model_options)
  return task, jax.jit(task.init)(jax.random.key(0), _batch())


def _outputs_and_loss(task, variables, rng):
  """The model's training outputs under the task's rng split, each head's mean cross-entropy, and the task's
  loss and metrics (one compiled function)."""
  state = {k: v for k, v in variables.items() if k != "params"}
  dropout_rng, drop_path_rng, _ = jax.random.split(rng, 3)

  @jax.jit
  def run(variables, batch):
    outputs, _ = task.model.apply(variables, batch["image"], train=True, mutable=list(state),
                                  rngs={"dropout": dropout_rng, "drop_path": drop_path_rng})
    loss, (_, metrics) = task.loss(variables["params"], state, batch, rng)
    return outputs, loss, metrics

  outputs, loss, metrics = run(variables, _batch())
  ce = lambda logits: float(optax.softmax_cross_entropy_with_integer_labels(logits, _batch()["label"]).mean())
  return outputs, [ce(o) for o in outputs], float(loss), metrics


def test_googlenet_loss_is_main_plus_weighted_aux_losses():
  task, variables = _task_and_variables("googlenet", aux_logits=True)
  rng = jax.random.key(5)
  outputs, (main, aux2, aux1), loss, metrics = _outputs_and_loss(task, variables, rng)
  assert type(outputs).__name__ == "GoogLeNetOutputs"
  assert len({round(v, 4) for v in (main, aux1, aux2)}) == 3  # three different heads
  np.testing.assert_allclose(loss, main + 0.3 * (aux1 + aux2), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["train/main_loss"]), main, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["train/aux_loss"]), aux1 + aux2, rtol=1e-5)
  # train.aux_loss_weight sets the weight.
  labels = jax.nn.one_hot(_batch()["label"], 10)
  other, _, _ = _task("googlenet", 0.5, aux_logits=True).training_loss(outputs, labels, _batch()["label"])
  np.testing.assert_allclose(float(other), main + 0.5 * (aux1 + aux2), rtol=1e-5)


def test_googlenet_eval_uses_the_main_logits_only():
  task, variables = _task_and_variables("googlenet", aux_logits=True)
  batch = dict(_batch(), mask=jnp.ones(4))
  sums, logits = jax.jit(lambda v, b: (task.eval_step(v, b), task.model.apply(v, b["image"])))(variables, batch)
  chex.assert_shape(logits, (4, 10))
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).sum()
  np.testing.assert_allclose(float(sums["loss"]), float(nll), rtol=1e-5)


def test_conformer_loss_is_the_mean_of_the_two_heads():
  tiny = dict(base_channel=8, channel_ratio=1, embed_dim=16, depth=3, num_heads=2, stem_width=8)
  task, variables = _task_and_variables("conformer_cifar", train_heads=True, **tiny)
  rng = jax.random.key(6)
  outputs, (conv, trans), loss, metrics = _outputs_and_loss(task, variables, rng)
  assert type(outputs).__name__ == "ConformerOutputs" and abs(conv - trans) > 1e-6
  np.testing.assert_allclose(loss, (conv + trans) / 2, rtol=1e-5)
  np.testing.assert_allclose([float(metrics["train/conv_loss"]), float(metrics["train/trans_loss"])],
                             [conv, trans], rtol=1e-5)
  summed = outputs.conv_logits + outputs.trans_logits
  accuracy = np.mean(np.argmax(summed, -1) == np.asarray(_batch()["label"]))
  np.testing.assert_allclose(float(metrics["train/accuracy"]), accuracy)


def test_option_errors_are_user_errors():
  config = _config("googlenet", aux_logits=True)
  config.train.aux_loss_weight = -0.3
  with pytest.raises(UserError, match="aux_loss_weight"):
    Classification(config, dataset_info("digits"))
  with pytest.raises(UserError, match="train_heads"):
    Classification(_config("conformer_cifar", return_heads=True), dataset_info("digits"))


@pytest.mark.slow  # ~1 CPU-min; test_googlenet_loss_is_main_plus_weighted_aux_losses keeps the aux loss in CI
def test_googlenet_with_aux_heads_trains_through_the_trainer(tmp_path):
  c = _config("googlenet", aux_logits=True)
  c.data.name = "digits"
  c.data.image_size = SIZE
  c.data.channels = 3
  c.train.steps = 2
  c.train.batch_size = 8
  c.train.log_every = 1
  c.eval.every = 0
  c.eval.batch_size = 64
  c.checkpoint.every = 0
  c.checkpoint.use_async = False
  summary = train_and_evaluate(c, str(tmp_path), devices=jax.devices()[:1])
  assert summary["step"] == 2 and np.isfinite(summary["eval/loss"])
  from jaxcnn.train.writers import read_metrics
  records = [r for r in read_metrics(os.path.join(str(tmp_path), "metrics.jsonl")) if "train/aux_loss" in r]
  assert [r["step"] for r in records] == [1, 2]
