"""Adebayo et al. 2018's sanity checks and the completeness axiom of Integrated Gradients.

Model-parameter randomisation: a method whose maps hardly change when the trained weights are replaced
by random ones explains the input, not the model. On LeNet-5 trained on digits (conftest), the median
Spearman rank correlation between the trained and the randomised model's maps over 32 held-out digits
must be low for vanilla gradients and Grad-CAM (< 0.4; measured ~0.1 and ~-0.1), while a 1% weight
perturbation keeps them (> 0.9): the measure tells the two apart, so the check can fail.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxcnn import explain


def _maps(model, variables, x, labels, method):
  out = np.asarray(explain.run(model, variables, x, explain.Target("class", jnp.asarray(labels)), method=method))
  return np.abs(out).max(-1) if out.ndim == 4 else out


def _median_rank_correlation(a, b):
  return float(np.nanmedian([scipy.stats.spearmanr(p.ravel(), q.ravel())[0] for p, q in zip(a, b)]))


@pytest.mark.parametrize("method", ["gradients", "gradcam"])
def test_maps_depend_on_the_trained_weights(digits_model, method):
  model, variables, x, labels = digits_model
  accuracy = np.mean(np.argmax(jax.jit(model.apply)(variables, x), -1) == labels)
  assert accuracy > 0.85, accuracy  # the model did learn
  randomized = model.init(jax.random.key(1), x[:1])
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  nudged = jax.tree.unflatten(tree, [w * (1 + 0.01 * jax.random.normal(k, w.shape)) for w, k in zip(leaves, keys)])
  trained = _maps(model, variables, x, labels, method)
  assert trained.std() > 0
  assert _median_rank_correlation(trained, _maps(model, randomized, x, labels, method)) < 0.4
  assert _median_rank_correlation(trained, _maps(model, nudged, x, labels, method)) > 0.9


def test_integrated_gradients_completeness_gap_shrinks_with_steps(digits_model):
  """With the trapezoid rule (Gauss-Legendre, the default, converges faster; its parity with captum is tested)."""
  model, variables, x, labels = digits_model
  target = explain.Target("class", jnp.asarray(labels[:8]))
  delta = explain.probe.scores(model, variables, x[:8], target) - explain.probe.scores(
      model, variables, jnp.zeros_like(x[:8]), target)
  gaps = []
  for steps in (4, 64):
    attributions, gap = explain.run(model, variables, x[:8], target, method="ig", steps=steps,
                                   integration="riemann_trapezoid")
    np.testing.assert_allclose(np.asarray(gap), np.asarray(attributions.sum((1, 2, 3)) - delta), rtol=1e-4,
                               atol=1e-4)
    gaps.append(float(np.max(np.abs(gap))))
  assert gaps[1] < gaps[0]
  assert gaps[1] <= 0.02 * float(np.max(np.abs(delta))), (gaps, np.asarray(delta))
