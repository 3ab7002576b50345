"""Checks every CNN family shares: compute dtype and the BatchNorm axis name reach every layer.

All by `jax.eval_shape`, so they cost no compute.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import create_model
from jaxcnn.utils import abstract_variables

RNGS = {"dropout": jax.random.key(0), "drop_path": jax.random.key(1)}


def check_bfloat16(name: str, size: int = 64, **kwargs):
  """bfloat16 compute: float32 parameters, every module output and the logits in bfloat16."""
  model = create_model(name, dtype=jnp.bfloat16, **kwargs)
  variables = abstract_variables(model, (1, size, size, 3))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {np.dtype(jnp.float32)}
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  logits, state = jax.eval_shape(lambda v, x: model.apply(v, x, capture_intermediates=True,
                                                          mutable=["intermediates"]), variables, x)
  assert logits.dtype == jnp.bfloat16
  assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {np.dtype(jnp.bfloat16)}


def check_bn_axis_name(name: str, size: int = 64, **kwargs):
  """With `bn_axis_name` set, training BatchNorms reduce over that axis: unbound outside a mapped axis."""
  model = create_model(name, bn_axis_name="batch", **kwargs)
  variables = abstract_variables(model, (1, size, size, 3))
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  train = lambda v, x: model.apply(v, x, train=True, rngs=RNGS, mutable=["batch_stats"])
  with pytest.raises(NameError, match="batch"):
    jax.eval_shape(train, variables, x)
  mapped = jax.vmap(train, in_axes=(None, 0), axis_name="batch")
  jax.eval_shape(mapped, variables, jax.ShapeDtypeStruct((2,) + x.shape, jnp.float32))
