"""DropPath: per-sample masks from the 'drop_path' rng, unbiased, identity in eval."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import UserError
from jaxcnn.layers import DropPath


def _apply(rate, x, key, deterministic=False):
  return DropPath(rate).apply({}, x, deterministic=deterministic, rngs={"drop_path": key})


def test_drops_whole_samples_and_rescales_the_rest():
  x = jnp.ones((512, 4, 4, 3))
  y = np.asarray(_apply(0.25, x, jax.random.key(0)))
  per_sample = y.reshape(512, -1)
  # Each sample is all zeros or all 1 / 0.75.
  assert np.all((per_sample == 0).all(1) | np.isclose(per_sample, 1 / 0.75).all(1))
  dropped = float((per_sample == 0).all(1).mean())
  assert 0.18 < dropped < 0.32
  assert abs(float(y.mean()) - 1.0) < 0.1


def test_masks_depend_on_the_drop_path_key():
  x = jnp.ones((64, 2))
  a, b = _apply(0.5, x, jax.random.key(0)), _apply(0.5, x, jax.random.key(1))
  assert not np.array_equal(a, b)
  chex.assert_trees_all_equal(a, _apply(0.5, x, jax.random.key(0)))


def test_identity_when_deterministic_or_rate_zero():
  x = jax.random.normal(jax.random.key(3), (8, 5))
  chex.assert_trees_all_equal(DropPath(0.5).apply({}, x, deterministic=True), x)  # no rng needed
  chex.assert_trees_all_equal(_apply(0.0, x, jax.random.key(0)), x)
  chex.assert_trees_all_equal(_apply(1.0, x, jax.random.key(0)), jnp.zeros_like(x))


def test_rate_outside_unit_interval_is_a_user_error():
  with pytest.raises(UserError, match="drop path rate"):
    DropPath(1.5)
