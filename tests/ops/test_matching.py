"""jaxcnn.ops.hungarian_match against scipy.optimize.linear_sum_assignment: exact, padding-invariant,
under jit and vmap, rectangular both ways, empty targets, non-finite costs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

scipy_optimize = pytest.importorskip("scipy.optimize")

from jaxcnn import ops  # noqa: E402


def padded_problem(batch=4, queries=10, max_targets=6, seed=0):
  """Random costs with garbage in the padded columns; image i has counts[i] real targets at random slots."""
  rng = np.random.default_rng(seed)
  cost = rng.normal(size=(batch, queries, max_targets)).astype(np.float32)
  counts = [3, 0, max_targets, 1][:batch]
  valid = np.zeros((batch, max_targets), bool)
  for i, n in enumerate(counts):
    valid[i, rng.permutation(max_targets)[:n]] = True
  cost[~np.broadcast_to(valid[:, None, :], cost.shape)] = -100.0   # padding would win everything if it counted
  return cost, valid


def scipy_reference(cost, valid):
  """Per image: {query: padded target index} of scipy on the real columns."""
  out = []
  for c, v in zip(cost, valid):
    columns = np.flatnonzero(v)
    rows, cols = scipy_optimize.linear_sum_assignment(c[:, columns]) if columns.size else ([], [])
    out.append({int(r): int(columns[k]) for r, k in zip(rows, cols)})
  return out


def check(pred_to_target, target_to_pred, reference, valid):
  pred_to_target, target_to_pred = np.asarray(pred_to_target), np.asarray(target_to_pred)
  for i, expected in enumerate(reference):
    got = {q: int(t) for q, t in enumerate(pred_to_target[i]) if t >= 0}
    assert got == expected
    for q, t in expected.items():
      assert target_to_pred[i, t] == q
    assert (target_to_pred[i][~valid[i]] == -1).all()
    assert (target_to_pred[i] >= 0).sum() == len(expected)


def test_matches_scipy_on_the_real_columns_under_jit():
  cost, valid = padded_problem()
  p2t, t2p = jax.jit(ops.hungarian_match)(cost, valid)
  assert p2t.shape == (4, 10) and t2p.shape == (4, 6) and p2t.dtype == jnp.int32
  check(p2t, t2p, scipy_reference(cost, valid), valid)
  # every real target is matched when the queries outnumber them
  assert ((np.asarray(t2p) >= 0) == valid).all()


def test_padding_never_changes_the_assignment():
  cost, valid = padded_problem(seed=1)
  base = jax.device_get(ops.hungarian_match(cost, valid))
  garbage = cost.copy()
  pad = ~np.broadcast_to(valid[:, None, :], cost.shape)
  garbage[pad] = np.random.default_rng(2).normal(size=pad.sum()) * 1e3
  np.testing.assert_array_equal(jax.device_get(ops.hungarian_match(garbage, valid))[0], base[0])
  # more padded columns: the same matches (indices in the padded axis stay those of the real slots)
  wider = np.concatenate([cost, np.full(cost.shape[:2] + (5,), -1e6, np.float32)], axis=2)
  wider_valid = np.concatenate([valid, np.zeros((4, 5), bool)], axis=1)
  p2t, t2p = jax.device_get(ops.hungarian_match(wider, wider_valid))
  np.testing.assert_array_equal(p2t, base[0])
  assert (t2p[:, 6:] == -1).all()


def test_more_targets_than_predictions_vmap_and_batched_leading_axes():
  rng = np.random.default_rng(3)
  cost = rng.normal(size=(2, 3, 4, 7)).astype(np.float32)        # [layers, images, 4 queries, 7 targets]
  valid = np.array([[True] * 7, [True] * 5 + [False] * 2, [False] * 7])
  p2t, t2p = jax.jit(ops.hungarian_match)(cost, valid[None])
  for layer in range(2):
    check(p2t[layer], t2p[layer], scipy_reference(cost[layer], valid), valid)
  assert (np.asarray(p2t)[:, 0] >= 0).all()                       # 4 of 7 targets matched, every query used
  vmapped = jax.jit(jax.vmap(ops.hungarian_match, in_axes=(0, None)))(cost, valid)
  np.testing.assert_array_equal(np.asarray(vmapped[0]), np.asarray(p2t))
  np.testing.assert_array_equal(np.asarray(vmapped[1]), np.asarray(t2p))


def test_no_target_slots_no_gradient_and_non_finite_costs():
  p2t, t2p = ops.hungarian_match(np.zeros((2, 5, 0), np.float32), np.zeros((2, 0), bool))
  assert p2t.shape == (2, 5) and (np.asarray(p2t) == -1).all() and t2p.shape == (2, 0)
  # the cost carries no gradient: differentiating through the matching gives zeros, not an error
  cost, valid = padded_problem(batch=2)
  grad = jax.grad(lambda c: jnp.sum(jnp.take_along_axis(
      c, jnp.maximum(ops.hungarian_match(c, valid)[0], 0)[..., None], -1)))(jnp.asarray(cost))
  assert np.isfinite(np.asarray(grad)).all()
  # NaN / inf would make scipy raise: they become the worst (best for -inf) costs
  bad = np.array([[[np.nan, 1.0], [0.0, np.inf], [5.0, -np.inf]]], np.float32)
  p2t, _ = jax.device_get(ops.hungarian_match(bad, np.ones((1, 2), bool)))
  np.testing.assert_array_equal(p2t, [[-1, 0, 1]])
  assert ops.assign_on_host(np.full((1, 2, 2), np.nan), np.ones((1, 2), bool))[0].tolist() in ([[0, 1]], [[1, 0]])
