"""LeNet-5 (1998) and lenet5_modern: the paper's 60,000 parameters, C3's sparse table, RBF head, shapes."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.models.lenet import C3_TABLE, SparseConv, Subsample, rbf_codes, rbf_map_loss, squash
from jaxcnn.utils import abstract_variables, param_count
from model_checks import random_variables

# Table I of LeCun et al. 1998 as printed: rows S2 maps 0-5, columns C3 maps 0-15, X = connected.
PAPER_TABLE_I = (
    "X   XXX  XXXX XX",
    "XX   XXX  XXXX X",
    "XXX   XXX  X XXX",
    " XXX  XXXX  X XX",
    "  XXX  XXXX XX X",
    "   XXX  XXXX XXX",
)
# Section II-B: trainable parameters per layer (1 input channel).
PAPER_COUNTS = {"C1": 156, "S2": 12, "C3": 1516, "S4": 32, "C5": 48120, "F6": 10164}


@functools.lru_cache(maxsize=None)
def model_and_variables():
  """The one real init of the module (random initialisers compile slowly on a busy CPU)."""
  model = create_model("lenet5")
  return model, jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), jnp.zeros((1, 32, 32, 1)))


def output_struct(model, variables, x):
  """Logits shape and dtype without compiling anything."""
  return jax.eval_shape(model.apply, variables, x)


def normal(seed, shape):
  """Test inputs from numpy: no random-number kernels to compile."""
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def images(batch=3, size=32, channels=1):
  return normal(1, (batch, size, size, channels))


def test_exactly_60000_trainable_parameters_as_in_the_paper():
  _, variables = model_and_variables()
  assert set(variables) == {"params"}  # the RBF codes are constants, not variables
  assert param_count(variables) == 60_000
  assert {name: param_count(tree) for name, tree in variables["params"].items()} == PAPER_COUNTS


def test_c3_table_is_the_papers_table_one():
  for s2_map, row in enumerate(PAPER_TABLE_I):
    connected = {c3_map for c3_map, mark in enumerate(row) if mark == "X"}
    assert connected == {c3_map for c3_map, inputs in enumerate(C3_TABLE) if s2_map in inputs}


def test_c3_is_really_sparse():
  """d(C3 map j) / d(S2 map i) is exactly zero unless Table I connects them."""
  _, variables = model_and_variables()
  c3 = SparseConv(C3_TABLE)
  s2 = normal(2, (1, 14, 14, 6))
  map_sums = lambda x: c3.apply({"params": variables["params"]["C3"]}, x).sum(axis=(0, 1, 2))  # [16]
  jacobian = jax.jacrev(map_sums)(s2)  # [16, 1, 14, 14, 6]
  reach = np.abs(np.asarray(jacobian)).sum(axis=(1, 2, 3))  # [C3 map, S2 map]
  for c3_map, inputs in enumerate(C3_TABLE):
    for s2_map in range(6):
      if s2_map in inputs:
        assert reach[c3_map, s2_map] > 0
      else:
        assert reach[c3_map, s2_map] == 0.0


def test_more_input_channels_grow_c1_only():
  model = create_model("lenet5")
  variables = abstract_variables(model, (1, 32, 32, 3))
  chex.assert_shape(variables["params"]["C1"]["kernel"], (5, 5, 3, 6))
  assert param_count(variables) == 60_000 + 2 * 25 * 6
  chex.assert_shape(output_struct(model, variables, images(channels=3)), (3, 10))


def test_rbf_logits_are_minus_squared_distance_to_fixed_codes():
  model, variables = model_and_variables()
  x = images()
  logits, state = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]))(
      variables, x)
  f6 = squash(state["intermediates"]["F6"]["__call__"][0])
  codes = rbf_codes(10)
  expected = -np.sum((np.asarray(f6)[:, None, :] - codes[None]) ** 2, axis=-1)
  chex.assert_trees_all_close(logits, expected, atol=1e-4, rtol=1e-5)
  assert logits.dtype == jnp.float32


def test_rbf_codes_are_distinct_plus_minus_one():
  codes = rbf_codes(128)
  assert set(np.unique(codes)) == {-1.0, 1.0}
  distances = (codes[:, None] != codes[None]).sum(-1) + 84 * np.eye(128, dtype=int)
  assert distances.min() >= 20
  with pytest.raises(UserError, match="head='linear'"):
    rbf_codes(129)


def test_squash_and_subsampling_follow_the_paper():
  chex.assert_trees_all_close(squash(jnp.array([1.0, -1.0])), jnp.array([1.0, -1.0]), atol=1e-4)
  x = normal(3, (2, 4, 4, 3))
  params = {"coeff": jnp.array([0.5, -1.0, 2.0]), "bias": jnp.array([0.1, 0.0, -0.2])}
  sums = np.asarray(x).reshape(2, 2, 2, 2, 2, 3).sum(axis=(2, 4))
  expected = 1.7159 * np.tanh(2 / 3 * (sums * np.asarray(params["coeff"]) + np.asarray(params["bias"])))
  chex.assert_trees_all_close(Subsample().apply({"params": params}, x), expected, atol=1e-5)


def test_lecun98_init_ranges():
  _, variables = model_and_variables()
  params = variables["params"]
  for kernel, fan_in in [(params["C1"]["kernel"], 25), (params["C3"]["kernel_fanin4"], 100),
                         (params["C5"]["kernel"], 400), (params["F6"]["kernel"], 120),
                         (params["S4"]["coeff"], 4)]:
    limit = 2.4 / fan_in
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.5 * limit
  assert not np.any(params["C5"]["bias"])


def test_linear_head_and_bfloat16():
  model = create_model("lenet5", head="linear", dtype=jnp.bfloat16)
  variables = abstract_variables(model, (1, 32, 32, 1))
  assert param_count(variables) == 60_000 + 84 * 10 + 10
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  logits = output_struct(model, variables, images())
  chex.assert_shape(logits, (3, 10))
  assert logits.dtype == jnp.bfloat16
  float32_model, real_variables = model_and_variables()
  rbf_logits = jax.jit(create_model("lenet5", dtype=jnp.bfloat16).apply)(real_variables, images())
  assert rbf_logits.dtype == jnp.float32  # distances in float32 from bfloat16 features
  chex.assert_trees_all_close(rbf_logits, jax.jit(float32_model.apply)(real_variables, images()), rtol=0.05)


def test_train_flag_needs_no_rng_and_changes_nothing():
  model, variables = model_and_variables()
  apply = jax.jit(model.apply, static_argnames="train")
  chex.assert_trees_all_equal(apply(variables, images(), train=True), apply(variables, images()))


def test_user_errors():
  model, variables = model_and_variables()
  with pytest.raises(UserError, match="32x32"):
    model.apply(variables, images(size=28))
  with pytest.raises(UserError, match="head"):
    abstract_variables(create_model("lenet5", head="softmax"), (1, 32, 32, 1))
  with pytest.raises(UserError, match="12x12"):
    abstract_variables(create_model("lenet5_modern"), (1, 8, 8, 1))


@pytest.mark.parametrize("size,count", [(28, 61_706), (32, 82_826)])
def test_modern_lenet_takes_28_and_32(size, count):
  # C1 156 + C3 2,416 + C5 (flat * 120 + 120) + F6 10,164 + head 850; flat = 16 * 5 * 5 or 16 * 6 * 6.
  model = create_model("lenet5_modern")
  variables = abstract_variables(model, (1, size, size, 1))
  assert param_count(variables) == count
  chex.assert_shape(output_struct(model, variables, images(size=size)), (3, 10))
  bf16 = create_model("lenet5_modern", dtype=jnp.bfloat16)
  assert output_struct(bf16, variables, images(size=size)).dtype == jnp.bfloat16
  logits = jax.jit(model.apply)(random_variables(model, (1, size, size, 1)), images(size=size))
  assert np.all(np.isfinite(logits)) and np.std(logits) > 0


def test_rbf_map_loss_is_the_papers_eq_9():
  distances = np.array([[3.0, 40.0, 50.0], [30.0, 2.0, 70.0]], np.float32)
  labels = np.array([0, 2])
  loss = rbf_map_loss(-distances, labels, j=1.0)
  expected = [d[c] + np.log(np.exp(-1.0) + np.exp(-d).sum()) for d, c in zip(distances, labels)]
  chex.assert_trees_all_close(loss, np.array(expected, np.float32), rtol=1e-5)
  # Large j: softmax cross-entropy, which a shift shared by all logits leaves unchanged ...
  chex.assert_trees_all_close(rbf_map_loss(-distances, labels, j=1e4),
                              optax.softmax_cross_entropy_with_integer_labels(-distances, labels), rtol=1e-5)
  # ... while eq. 9 still pulls the features onto the right code.
  assert np.all(rbf_map_loss(-distances - 1.0, labels) > loss)


def test_lenet5_cifar_has_the_papers_geometry_on_rgb_32x32():
  """c1_padding=0: 32 -> 28 -> 14 -> 10 -> 5, as the paper; 62,006 params (kuangliu/pytorch-cifar's LeNet)."""
  model = create_model("lenet5_cifar")
  variables = abstract_variables(model, (1, 32, 32, 3))
  # C1 3*25*6+6, C3 6*25*16+16, C5 400*120+120, F6 120*84+84, head 84*10+10.
  assert param_count(variables) == 456 + 2_416 + 48_120 + 10_164 + 850 == 62_006
  assert variables["params"]["C5"]["kernel"].shape == (16 * 5 * 5, 120)
  x = jnp.zeros((2, 32, 32, 3))
  chex.assert_shape(output_struct(model, variables, x), (2, 10))
  with pytest.raises(UserError, match="16x16"):
    abstract_variables(model, (1, 14, 14, 3))
  with pytest.raises(UserError, match="c1_padding"):
    create_model("lenet5_modern", c1_padding=3)
