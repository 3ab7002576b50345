"""Schedules, optimizers and the weight-decay mask."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxcnn.errors import UserError
from jaxcnn.train import optim


def _optim_cfg(**kw):
  c = ml_collections.ConfigDict(dict(name="sgd", lr=0.1, schedule="cosine", warmup_steps=10, end_lr_factor=0.0,
                                     step_at=(0.5, 0.75), step_factor=0.1, momentum=0.9, b1=0.9, b2=0.999, eps=1e-8,
                                     weight_decay=0.0, decay_all=False, grad_clip_norm=0.0))
  c.update(kw)
  return c


def test_warmup_then_cosine():
  s = optim.make_schedule(_optim_cfg(), total_steps=110)
  assert float(s(0)) == 0.0
  np.testing.assert_allclose(float(s(5)), 0.05, rtol=1e-6)
  np.testing.assert_allclose(float(s(10)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(s(60)), 0.05, rtol=1e-5)   # half-way through the cosine
  np.testing.assert_allclose(float(s(110)), 0.0, atol=1e-7)


def test_step_schedule_drops_at_fractions():
  s = optim.make_schedule(_optim_cfg(schedule="step", warmup_steps=0), total_steps=100)
  np.testing.assert_allclose([float(s(i)) for i in (49, 51, 76)], [0.1, 0.01, 0.001], rtol=1e-5)


def test_decay_mask_skips_biases_and_norm_scales():
  params = {"conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4)}, "bn": {"scale": jnp.ones(4)}}
  mask = optim.decay_mask(params)
  assert mask == {"conv": {"kernel": True, "bias": False}, "bn": {"scale": False}}


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adam", "adamw", "lamb"])
def test_weight_decay_only_touches_kernels(name):
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
  tx = optim.make_optimizer(_optim_cfg(name=name, weight_decay=0.1), optax.constant_schedule(0.1))
  zero = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}
  updates, _ = tx.update(zero, tx.init(params), params)
  assert float(jnp.abs(updates["bias"]).max()) == 0.0
  assert float(jnp.abs(updates["kernel"]).min()) > 0.0


def test_clipping_bounds_the_update():
  tx = optim.make_optimizer(_optim_cfg(momentum=0.0, grad_clip_norm=1.0), optax.constant_schedule(1.0))
  params = {"w": jnp.zeros(4)}
  updates, _ = tx.update({"w": jnp.full(4, 100.0)}, tx.init(params), params)
  np.testing.assert_allclose(float(optax.tree.norm(updates)), 1.0, rtol=1e-5)


def test_bad_values_are_user_errors():
  with pytest.raises(UserError, match="optim.schedule"):
    optim.make_schedule(_optim_cfg(schedule="wavy"), 100)
  with pytest.raises(UserError, match="optim.warmup_steps"):
    optim.make_schedule(_optim_cfg(warmup_steps=-1), 100)


def test_warmup_longer_than_a_shortened_run_still_peaks():
  s = optim.make_schedule(_optim_cfg(warmup_steps=200), total_steps=100)
  np.testing.assert_allclose(float(s(10)), 0.1, rtol=1e-6)
  with pytest.raises(UserError, match="optimizer"):
    optim.make_optimizer(_optim_cfg(name="adamax"), optax.constant_schedule(0.1))
