"""Fréchet distance and Inception Score in JAX, on features from any extractor.

FID (Heusel et al. 2017) between Gaussians fitted to two feature sets:

    ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

S1 S2 is not symmetric, so its square root is not taken directly (scipy's
`sqrtm` of the product, as in the reference TF/PyTorch code, needs a
Schur decomposition and often returns complex noise). It is similar to the
symmetric PSD matrix M = S1^(1/2) S2 S1^(1/2), so tr((S1 S2)^(1/2)) = sum of
sqrt(eigenvalues of M): two symmetric eigendecompositions, eigenvalues clipped
at 0 against round-off. Computed in float64 (inside `jax.enable_x64`).

A score depends on the extractor: never compare numbers across extractors
(`jaxcnn.eval.extractor` names the one used).
"""
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np


def sqrtm_psd(a: jax.Array) -> jax.Array:
  """Square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
  w, v = jnp.linalg.eigh(a)
  return (v * jnp.sqrt(jnp.clip(w, 0.0))) @ v.T


def sqrtm_product(s1: jax.Array, s2: jax.Array) -> jax.Array:
  """The principal square root of S1 S2 for SPD S1 and PSD S2: S1^(1/2) M^(1/2) S1^(-1/2)."""
  w, v = jnp.linalg.eigh(s1)
  w = jnp.clip(w, jnp.finfo(w.dtype).tiny)
  root = (v * jnp.sqrt(w)) @ v.T
  inv_root = (v / jnp.sqrt(w)) @ v.T
  return root @ sqrtm_psd(root @ s2 @ root) @ inv_root


def trace_sqrt_product(s1: jax.Array, s2: jax.Array) -> jax.Array:
  """tr((S1 S2)^(1/2)) for PSD S1, S2, via the symmetric S1^(1/2) S2 S1^(1/2)."""
  root = sqrtm_psd(s1)
  m = root @ s2 @ root
  return jnp.sum(jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh((m + m.T) / 2), 0.0)))


def statistics(features) -> Tuple[jax.Array, jax.Array]:
  """Mean and unbiased covariance (as `numpy.cov(rowvar=False)`) of [N, D] features, in float64."""
  with jax.enable_x64(True):
    f = jnp.asarray(np.asarray(features, np.float64))
    if f.ndim != 2 or f.shape[0] < 2:
      raise ValueError(f"features must be [N >= 2, D], got shape {f.shape}")
    mu = jnp.mean(f, axis=0)
    centered = f - mu
    return mu, centered.T @ centered / (f.shape[0] - 1)


@jax.jit
def _frechet(mu1, s1, mu2, s2):
  return jnp.sum(jnp.square(mu1 - mu2)) + jnp.trace(s1) + jnp.trace(s2) - 2.0 * trace_sqrt_product(s1, s2)


def frechet_distance(mu1, s1, mu2, s2) -> float:
  """Fréchet distance between N(mu1, s1) and N(mu2, s2), computed in float64."""
  with jax.enable_x64(True):
    args = [jnp.asarray(np.asarray(x, np.float64)) for x in (mu1, s1, mu2, s2)]
    return float(_frechet(*args))


def fid(features_a, features_b) -> float:
  """FID between two [N, D] feature sets (N may differ)."""
  return frechet_distance(*statistics(features_a), *statistics(features_b))


def inception_score(logits, splits: int = 1) -> Tuple[float, float]:
  """exp(E_x KL(p(y|x) || p(y))) from classifier logits [N, K]: mean and std over `splits` parts (Salimans et al. 2016)."""
  with jax.enable_x64(True):
    logp = jax.nn.log_softmax(jnp.asarray(np.asarray(logits, np.float64)), axis=-1)
    scores = []
    for part in jnp.array_split(logp, splits):
      marginal = jax.scipy.special.logsumexp(part, axis=0) - jnp.log(part.shape[0])
      kl = jnp.sum(jnp.exp(part) * (part - marginal), axis=-1)
      scores.append(float(jnp.exp(jnp.mean(kl))))
  return float(np.mean(scores)), float(np.std(scores))
