"""Small helpers shared by the trainer, tools and tests."""
import jax
import jax.numpy as jnp
import numpy as np


def param_count(tree) -> int:
  """Number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def abstract_variables(model, input_shape, dtype=jnp.float32, **call_kwargs):
  """The model's variables as ShapeDtypeStructs: counts parameters at no compute cost."""
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1), "drop_path": jax.random.key(2)}
  x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
  return jax.eval_shape(lambda r, x: model.init(r, x, **call_kwargs), rngs, x)
