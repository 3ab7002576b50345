"""train.loss choices, class weights and the optim.l1 / optim.l2 penalties, against torch / timm / formulas."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxcnn.errors import UserError
from jaxcnn.tasks.classification import per_example_loss, weighted_mean
from jaxcnn.train import optim

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(6, 5)).astype(np.float32) * 2
HARD = np.array([0, 1, 2, 3, 4, 1])
ONE_HOT = np.eye(5, dtype=np.float32)[HARD]


def test_focal_is_torchvision_sigmoid_focal_summed_over_classes():
  from torchvision.ops import sigmoid_focal_loss
  want = sigmoid_focal_loss(torch.tensor(LOGITS), torch.tensor(ONE_HOT), alpha=0.25, gamma=2.0,
                            reduction="sum").item() / len(HARD)
  got = jnp.mean(per_example_loss("focal", LOGITS, ONE_HOT, {"alpha": 0.25, "gamma": 2.0}))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_poly1_is_cross_entropy_plus_epsilon_one_minus_pt():
  p = np.exp(LOGITS) / np.exp(LOGITS).sum(-1, keepdims=True)
  pt = p[np.arange(6), HARD]
  want = -np.log(pt) + 2.0 * (1 - pt)
  np.testing.assert_allclose(per_example_loss("poly1", LOGITS, ONE_HOT, {"epsilon": 2.0}), want, rtol=1e-5)
  np.testing.assert_allclose(per_example_loss("poly1", LOGITS, ONE_HOT, {"epsilon": 0.0}),
                             per_example_loss("softmax_ce", LOGITS, ONE_HOT), rtol=1e-6)


def test_bce_with_smoothing_is_timms_binary_cross_entropy():
  from timm.loss import BinaryCrossEntropy
  want = BinaryCrossEntropy(smoothing=0.1)(torch.tensor(LOGITS), torch.tensor(HARD)).item()
  labels = optax.smooth_labels(jnp.asarray(ONE_HOT), 0.1)
  np.testing.assert_allclose(jnp.mean(per_example_loss("bce", LOGITS, labels)), want, rtol=1e-5)


def test_apl_is_its_formula_summed_over_classes():
  p = 1 / (1 + np.exp(-LOGITS.astype(np.float64)))
  pm = np.maximum(p - 0.05, 0)   # the shifted probability of the negatives
  pos = ONE_HOT * (np.log(p) + (1 - p) - 1.25 * (1 - p) ** 2)
  neg = (1 - ONE_HOT) * pm ** 4 * np.log(1 - pm)
  want = -(pos + neg).sum(-1)
  np.testing.assert_allclose(per_example_loss("apl", LOGITS, ONE_HOT), want, rtol=1e-4)


def test_class_weights_are_torch_weighted_cross_entropy():
  w = np.array([1.0, 2.0, 0.5, 3.0, 1.0], np.float32)
  want = torch.nn.functional.cross_entropy(torch.tensor(LOGITS), torch.tensor(HARD), weight=torch.tensor(w)).item()
  got = weighted_mean(per_example_loss("cross_entropy", LOGITS, ONE_HOT), jnp.asarray(ONE_HOT), w)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_loss_names_options_and_class_weights_are_checked():
  from experiments.configs.common import base_config
  from jaxcnn.data import dataset_info
  from jaxcnn.tasks.classification import Classification
  c = base_config()
  c.model.name, c.train.loss, c.train.loss_options = "lenet5", "focal", {"epsilon": 1.0}
  with pytest.raises(UserError, match="allowed: alpha, gamma"):
    Classification(c, dataset_info("digits"))
  c.train.loss_options, c.train.class_weights = {}, (1.0, 2.0)
  with pytest.raises(UserError, match="class_weights must be 10"):
    Classification(c, dataset_info("digits"))
  c.train.class_weights = (1.0,) * 10
  task = Classification(c, dataset_info("digits"))
  assert task.class_weights.shape == (10,)


def _params():
  return {"conv": {"kernel": jnp.asarray(RNG.normal(size=(3, 3, 2, 4)), jnp.float32),
                   "bias": jnp.asarray(RNG.normal(size=(4,)), jnp.float32)},
          "scale": jnp.asarray(RNG.normal(size=(4,)), jnp.float32)}


def _optim(**kw):
  c = ml_collections.ConfigDict(dict(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, decay_all=False,
                                     grad_clip_norm=0.0, l1=0.0, l2=0.0))
  c.update(kw)
  return c


def test_l1_l2_penalty_gradient_is_that_of_the_penalised_loss_on_kernels_only():
  params = _params()
  data_loss = lambda p: jnp.sum(p["conv"]["kernel"] ** 3) + jnp.sum(p["conv"]["bias"] ** 2)
  penalised = lambda p: data_loss(p) + 1e-2 * sum(jnp.abs(p["conv"]["kernel"]).ravel()) \
      + 1e-3 * jnp.sum(p["conv"]["kernel"] ** 2)
  tx = optim.make_optimizer(_optim(l1=1e-2, l2=1e-3), optax.constant_schedule(1.0))
  updates, _ = tx.update(jax.grad(data_loss)(params), tx.init(params), params)
  want = jax.grad(penalised)(params)  # biases and the 1-D scale have no penalty
  jax.tree.map(lambda u, g: np.testing.assert_allclose(-u, g, rtol=1e-5, atol=1e-7), updates, want)


def test_l2_penalty_differs_from_decoupled_weight_decay_under_adam_and_matches_coupled_sgd():
  params = _params()
  grads = jax.tree.map(jnp.ones_like, params)

  def update(**kw):
    tx = optim.make_optimizer(_optim(**kw), optax.constant_schedule(0.1))
    return tx.update(grads, tx.init(params), params)[0]["conv"]["kernel"]

  # SGD: the penalty l2 * w^2 has gradient 2 l2 w, as coupled weight decay wd = 2 l2.
  np.testing.assert_allclose(update(l2=0.05), update(weight_decay=0.1), rtol=1e-6)
  # Adam + penalty vs AdamW: the penalty's gradient goes through the moments, AdamW's decay does not.
  assert not np.allclose(update(name="adam", l2=0.05, b1=0.9, b2=0.999, eps=1e-8),
                         update(name="adamw", weight_decay=0.1, b1=0.9, b2=0.999, eps=1e-8), atol=1e-4)
  with pytest.raises(UserError, match="optim.l1"):
    optim.make_optimizer(_optim(l1=-1.0), optax.constant_schedule(0.1))
