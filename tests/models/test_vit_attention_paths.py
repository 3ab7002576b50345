"""The CPU fast path of MultiHeadSelfAttention (head-major matmuls, token-flattened projections)
computes the same function and gradients as jax.nn.dot_product_attention (implementation='xla')."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.layers.attention import MultiHeadSelfAttention


def normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("with_bias", [False, True])
def test_head_major_path_equals_dot_product_attention(with_bias):
  assert jax.default_backend() == "cpu"  # where the head-major path is the default
  x = normal(0, (2, 3, 9, 12))  # two leading batch axes, as window attention passes
  bias = normal(1, (3, 9, 9)) if with_bias else None
  fast = MultiHeadSelfAttention(num_heads=3)
  fused = MultiHeadSelfAttention(num_heads=3, implementation="xla")
  params = fast.init(jax.random.key(0), x)
  params = jax.tree.map(lambda p: p + 0.1 * normal(2, p.shape), params)  # non-zero biases

  def loss(layer):
    return lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x, bias)))

  chex.assert_trees_all_close(fast.apply(params, x, bias), fused.apply(params, x, bias), atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(jax.grad(loss(fast), argnums=(0, 1))(params, x),
                              jax.grad(loss(fused), argnums=(0, 1))(params, x), atol=1e-5, rtol=1e-5)
