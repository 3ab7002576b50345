"""Detection / multi-label losses appended to jaxcnn.losses, against torch and NumPy transcriptions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from jaxcnn import losses
from jaxcnn.errors import UserError


def data(shape=(4, 50), seed=0):
  rng = np.random.default_rng(seed)
  x = (rng.normal(size=shape) * 3).astype(np.float32)
  y = (rng.random(shape) < 0.2).astype(np.float32)
  return x, y


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1, 2.0), (0.5, 0.0), (0.75, 1.5)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_focal_loss_matches_torchvision(alpha, gamma, reduction):
  x, y = data()
  got = jax.jit(lambda a, b: losses.sigmoid_focal_loss(a, b, alpha, gamma, reduction))(x, y)
  tx = torch.from_numpy(x).requires_grad_(True)
  want = torchvision.ops.sigmoid_focal_loss(tx, torch.from_numpy(y), alpha, gamma, reduction)
  np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-6)
  want.sum().backward()
  grad = jax.grad(lambda a: jnp.sum(losses.sigmoid_focal_loss(a, y, alpha, gamma, reduction)))(x)
  np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_focal_loss_bad_alpha():
  with pytest.raises(UserError, match="alpha"):
    losses.sigmoid_focal_loss(np.zeros(3), np.zeros(3), alpha=1.5)


@pytest.mark.parametrize("beta", [1.0, 1 / 9, 0.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_smooth_l1_and_l1_match_torch(beta, reduction):
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(2, 64, 4)).astype(np.float32)
  got = losses.smooth_l1(a, b, beta=beta, reduction=reduction)
  want = F.smooth_l1_loss(torch.from_numpy(a), torch.from_numpy(b), beta=beta, reduction=reduction).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(losses.l1_loss(a, b, reduction),
                             F.l1_loss(torch.from_numpy(a), torch.from_numpy(b), reduction=reduction).numpy(),
                             rtol=1e-5)
  with pytest.raises(UserError, match="unknown reduction"):
    losses.l1_loss(a, b, "avg")


@pytest.mark.parametrize("epsilon", [2.0, -1.0, 0.0])
def test_poly1_cross_entropy_is_ce_plus_epsilon_one_minus_pt(epsilon):
  rng = np.random.default_rng(2)
  logits = (rng.normal(size=(16, 10)) * 2).astype(np.float32)
  labels = rng.integers(0, 10, 16)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  pt = p[np.arange(16), labels]
  want = -np.log(pt) + epsilon * (1 - pt)
  np.testing.assert_allclose(losses.poly1_cross_entropy(logits, labels, epsilon, "none"), want, rtol=1e-5)
  np.testing.assert_allclose(losses.poly1_cross_entropy(logits, labels, epsilon), want.mean(), rtol=1e-5)
  onehot = np.eye(10, dtype=np.float32)[labels]
  np.testing.assert_allclose(losses.poly1_cross_entropy(logits, onehot, epsilon, "sum"), want.sum(), rtol=1e-5)
  if epsilon == 0.0:  # Poly-1 with epsilon 0 is cross-entropy
    ce = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), reduction="mean").item()
    np.testing.assert_allclose(losses.poly1_cross_entropy(logits, labels, 0.0), ce, rtol=1e-5)


def np_apl(x, y, gamma_pos, gamma_neg, clip, e1, e2, e_neg, eps=1e-8):
  """APL from its formula: element-wise positive and negative terms, summed."""
  p = 1 / (1 + np.exp(-x.astype(np.float64)))
  p_m = np.maximum(p - clip, 0) if clip > 0 else p
  pc = np.maximum(p, eps)
  pos = -(1 - p) ** gamma_pos * (np.log(pc) + e1 * (1 - pc) + e2 / 2 * (1 - pc) ** 2)
  qc = np.maximum(1 - p_m, eps)
  neg = -(p_m ** gamma_neg) * (np.log(qc) + e_neg * qc)
  return np.sum(np.where(y == 1, pos, neg))


@pytest.mark.parametrize("params", [dict(), dict(gamma_pos=1.0, gamma_neg=2.0, clip=0.0, epsilon_pos=2.0,
                                                 epsilon_pos_pow=1.0, epsilon_neg=0.5)])
def test_asymmetric_polynomial_loss_matches_formula(params):
  x, y = data(seed=3)
  full = dict(gamma_pos=0.0, gamma_neg=4.0, clip=0.05, epsilon_pos=1.0, epsilon_pos_pow=-2.5, epsilon_neg=0.0)
  full.update(params)
  want = np_apl(x, y, full["gamma_pos"], full["gamma_neg"], full["clip"], full["epsilon_pos"],
                full["epsilon_pos_pow"], full["epsilon_neg"])
  got = jax.jit(lambda a, b: losses.asymmetric_polynomial_loss(a, b, **full))(x, y)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert got > 0
  # the focusing weight is a constant in the gradient (the reference's disable_torch_grad_focal_loss)
  g = jax.grad(lambda a: losses.asymmetric_polynomial_loss(a, y, **full))(x)
  assert np.isfinite(np.asarray(g)).all()


def test_apl_with_all_terms_off_is_bce_sum():
  x, y = data(seed=4)
  got = losses.asymmetric_polynomial_loss(x, y, gamma_pos=0, gamma_neg=0, clip=0, epsilon_pos=0,
                                          epsilon_pos_pow=0, epsilon_neg=0)
  want = F.binary_cross_entropy_with_logits(torch.from_numpy(x), torch.from_numpy(y), reduction="sum").item()
  np.testing.assert_allclose(got, want, rtol=1e-4)
