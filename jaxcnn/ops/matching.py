"""Exact one-to-one (Hungarian) matching of predictions to padded targets, inside jit.

`hungarian_match(cost [..., N, M], valid [..., M])` solves, for every leading index, the linear sum
assignment of the N predictions (rows) to the valid targets (columns) with
`scipy.optimize.linear_sum_assignment` on the host, through one `jax.pure_callback` for the whole batch
(any leading shape, vmap-able: the callback is called once with the batch axes in front). The padded
columns (valid False) are dropped on the host before solving, so padding can never change the
assignment: the result is exactly scipy's on `cost[..., valid]`, the matrix DETR's HungarianMatcher
solves for an image with that many targets. When the valid targets outnumber the predictions, N of
them are matched (scipy's rectangular rule) and the rest stay -1.

Returns fixed shapes: `pred_to_target` int32 [..., N] (the matched target's index in the padded
target axis, -1 when unmatched) and `target_to_pred` int32 [..., M] (-1 for padding and unmatched).
The cost carries no gradient (the assignment is piecewise constant); NaN / +-inf entries, which scipy
refuses, are replaced on the host by a cost above (below) every finite one, so a diverging run gets an
assignment rather than an error from inside the compiled step.

This is a host round trip: the callback blocks the compiled program while the cost matrices go to
the host and the indices come back. A DETR training step calls it once for all decoder layers and
images (jaxcnn.models.detr stacks them); its measured cost is in the README's DETR section. Under a
jit whose batch is sharded over several devices, the costs are gathered to one device for the call
and the indices scattered back (XLA's SPMD partitioner logs "Involuntary full rematerialization" for
it); the legacy pmap path calls it once per device on that device's images.
"""
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np


def _finite(cost: np.ndarray) -> np.ndarray:
  """NaN and +inf above every finite cost, -inf below: scipy accepts only finite matrices here."""
  finite = np.isfinite(cost)
  if finite.all():
    return cost
  values = cost[finite]
  high = float(values.max()) + 1.0 if values.size else 1.0
  low = float(values.min()) - 1.0 if values.size else -1.0
  return np.where(np.isneginf(cost), low, np.where(finite, cost, high))


def assign_on_host(cost: np.ndarray, valid: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """NumPy: (pred_to_target [..., N], target_to_pred [..., M]) int32 by scipy, padded columns dropped."""
  from scipy.optimize import linear_sum_assignment

  cost = np.asarray(cost)
  n, m = cost.shape[-2:]
  batch = cost.shape[:-2]
  costs = cost.reshape((-1, n, m))
  valids = np.broadcast_to(np.asarray(valid, bool), batch + (m,)).reshape((-1, m))
  pred_to_target = np.full((costs.shape[0], n), -1, np.int32)
  target_to_pred = np.full((costs.shape[0], m), -1, np.int32)
  for i, (c, v) in enumerate(zip(costs, valids)):
    columns = np.flatnonzero(v)
    if not columns.size or not n:
      continue
    rows, cols = linear_sum_assignment(_finite(c[:, columns]))
    pred_to_target[i, rows] = columns[cols]
    target_to_pred[i, columns[cols]] = rows
  return pred_to_target.reshape(batch + (n,)), target_to_pred.reshape(batch + (m,))


def hungarian_match(cost, valid=None) -> Tuple[jax.Array, jax.Array]:
  """Minimum-cost one-to-one assignment of rows to valid columns (see the module docstring).

  cost: [..., N, M] float; valid: bool [..., M] (broadcastable; None: every column is real).
  Returns (pred_to_target int32 [..., N], target_to_pred int32 [..., M]), -1 where unmatched.
  """
  cost = jax.lax.stop_gradient(jnp.asarray(cost))
  if not jnp.issubdtype(cost.dtype, jnp.floating):
    cost = cost.astype(jnp.float32)
  n, m = cost.shape[-2:]
  batch = cost.shape[:-2]
  valid = jnp.ones((m,), bool) if valid is None else jnp.asarray(valid, bool)
  valid = jnp.broadcast_to(valid, batch + (m,))
  if n == 0 or m == 0:
    return jnp.full(batch + (n,), -1, jnp.int32), jnp.full(batch + (m,), -1, jnp.int32)
  shapes = (jax.ShapeDtypeStruct(batch + (n,), jnp.int32), jax.ShapeDtypeStruct(batch + (m,), jnp.int32))
  return jax.pure_callback(assign_on_host, shapes, cost, valid, vmap_method="broadcast_all")
