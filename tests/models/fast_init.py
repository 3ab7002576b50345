"""Random variables for a model without compiling its initialisers.

On a busy 2-core CPU, compiling `model.init` of a full-width CNN takes
seconds per layer (each random initializer is its own computation), while
the forward pass compiles in one. Tests of forward/train behaviour draw
variables with numpy in the shapes `jax.eval_shape(model.init)` gives.
"""
import jax
import jax.numpy as jnp
import numpy as np


def random_variables(model, input_shape, seed: int = 0):
  abstract = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x),
                            jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name in ("scale", "var"):
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    if leaf.ndim <= 1:  # biases, BN means, layer scales
      return jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)
