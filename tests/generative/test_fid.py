"""FID and Inception Score: the matrix square root against scipy, FID ~0 on the same data and growing with noise."""
import numpy as np
import pytest
import scipy.linalg

from jaxcnn.eval import fid as fid_lib


def random_spd(rng, n, jitter=0.1):
  a = rng.normal(size=(n, n))
  return a @ a.T + jitter * np.eye(n)


def test_sqrtm_product_matches_scipy():
  rng = np.random.default_rng(0)
  s1, s2 = random_spd(rng, 24), random_spd(rng, 24)
  ours = np.asarray(fid_lib.sqrtm_product(s1, s2))  # float32 outside enable_x64
  ref = scipy.linalg.sqrtm(s1 @ s2).real
  np.testing.assert_allclose(ours, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
  # And the trace FID uses, in float64.
  import jax
  with jax.enable_x64(True):
    trace = float(fid_lib.trace_sqrt_product(s1.astype(np.float64), s2.astype(np.float64)))
  assert trace == pytest.approx(np.trace(ref), rel=1e-9)


def test_sqrtm_psd_squares_back_and_tolerates_singular_matrices():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(10, 4))
  s = a @ a.T  # rank 4: eigenvalues of 0 that round-off makes slightly negative
  root = np.asarray(fid_lib.sqrtm_psd(s))
  assert np.all(np.isfinite(root))
  np.testing.assert_allclose(root @ root, s, atol=1e-4)


def test_frechet_distance_of_known_gaussians():
  # 1-D: (mu1 - mu2)^2 + (sigma1 - sigma2)^2.
  assert fid_lib.frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9.0 + 1.0)
  # Diagonal covariances: sum over dimensions.
  d = fid_lib.frechet_distance(np.zeros(3), np.diag([1.0, 4.0, 9.0]), np.ones(3), np.diag([4.0, 4.0, 1.0]))
  assert d == pytest.approx(3.0 + 1.0 + 0.0 + 4.0)


def test_fid_same_data_is_near_zero_and_grows_with_noise():
  rng = np.random.default_rng(2)
  mixing = rng.normal(size=(16, 16))
  data = rng.normal(size=(4000, 16)) @ mixing          # correlated features
  a, b = data[:2000], data[2000:]
  assert fid_lib.fid(a, a) == pytest.approx(0.0, abs=1e-6)
  same = fid_lib.fid(a, b)                            # two samples of one distribution
  scale = np.trace(np.cov(a, rowvar=False))
  assert same < 0.02 * scale
  noisy = [fid_lib.fid(a, b + s * rng.normal(size=b.shape) * np.std(b)) for s in (0.25, 0.5, 1.0, 2.0)]
  assert same < noisy[0] < noisy[1] < noisy[2] < noisy[3]


def test_fid_is_symmetric_and_takes_different_sample_sizes():
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(500, 8)), rng.normal(loc=0.5, size=(300, 8))
  assert fid_lib.fid(a, b) == pytest.approx(fid_lib.fid(b, a), rel=1e-9)
  with pytest.raises(ValueError, match="features"):
    fid_lib.statistics(np.zeros((1, 8)))


def test_inception_score_extremes():
  k = 10
  confident = np.eye(k)[np.arange(1000) % k] * 50.0     # sure and spread over every class: IS = k
  assert fid_lib.inception_score(confident)[0] == pytest.approx(k, rel=1e-3)
  one_class = np.tile(np.eye(k)[0] * 50.0, (1000, 1))    # sure but always the same class: IS = 1
  assert fid_lib.inception_score(one_class)[0] == pytest.approx(1.0, rel=1e-3)
  uniform = np.zeros((1000, k))                          # unsure: IS = 1
  assert fid_lib.inception_score(uniform)[0] == pytest.approx(1.0)
  mean, std = fid_lib.inception_score(confident, splits=4)
  assert mean == pytest.approx(k, rel=1e-3) and std < 1e-3
