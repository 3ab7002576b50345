"""MaxViT: timm's parameter counts, partitions and relative positions, locality of block vs grid
attention, MBConv count by formula, shapes, rng use, errors, a short training run."""
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import Trainer, random_variables
from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.layers import Conv
from jaxcnn.models.maxvit import (MBConv, PartitionAttention, grid_partition, grid_reverse,
                                  relative_position_index, window_partition, window_reverse)
from jaxcnn.utils import abstract_variables, param_count

# timm 1.0.31 `sum(p.numel() for p in m.parameters())`, 224x224, 1000 classes.
TIMM_COUNTS = {
    "maxvit_tiny": 30_916_528,   # maxvit_tiny_tf_224
    "maxvit_small": 68_927_956,  # maxvit_small_tf_224
    "maxvit_base": 119_467_708,  # maxvit_base_tf_224
}
# One stage of one block: the cheapest model that still has every part (stem, MBConv, both attentions, head).
TINY = dict(embed_dim=(16,), depths=(1,), dim_head=8, stem_width=8, head_hidden_size=16, dropout=0.1)
RNGS = {"dropout": jax.random.key(1), "drop_path": jax.random.key(2)}


@pytest.mark.parametrize("name", sorted(TIMM_COUNTS))
def test_parameter_counts_are_timms(name):
  assert param_count(abstract_variables(create_model(name), (1, 224, 224, 3))["params"]) == TIMM_COUNTS[name]


def test_tiny_at_224_via_eval_shape():
  model = create_model("maxvit_tiny")
  variables = abstract_variables(model, (1, 224, 224, 3))
  table = variables["params"]["stages_3_1"]["attn_grid"]["rel_pos"]["relative_position_bias_table"]
  chex.assert_shape(table, (16, 13, 13))  # 512 / 32 heads, window 7
  logits = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
  chex.assert_shape(logits, (2, 1000))


def test_cifar_variant_shape_and_bfloat16():
  model = create_model("maxvit_cifar", dtype=jnp.bfloat16)
  variables = abstract_variables(model, (1, 32, 32, 3))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
  chex.assert_shape(variables["params"]["stages_0_0"]["attn_block"]["rel_pos"]["relative_position_bias_table"],
                    (2, 7, 7))  # window 4
  logits = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  chex.assert_shape(logits, (2, 10))
  assert logits.dtype == jnp.bfloat16


def test_mbconv_parameter_count_by_formula():
  cin, cout = 16, 32
  mid, rd = 4 * cout, cout // 4
  norm = functools.partial(nn.BatchNorm, use_running_average=True)
  conv = functools.partial(Conv, use_bias=False, padding="SAME")
  variables = jax.eval_shape(MBConv(cout, conv, norm, strides=2).init, jax.random.key(0),
                             jax.ShapeDtypeStruct((1, 8, 8, cin), jnp.float32))
  expected = (cin * cout + cout) + 2 * cin + cin * mid + 2 * mid + 9 * mid + 2 * mid \
      + (mid * rd + rd + rd * mid + mid) + (mid * cout + cout)
  assert param_count(variables["params"]) == expected


def test_window_and_grid_partitions():
  x = jnp.arange(8 * 8).reshape(1, 8, 8, 1).astype(jnp.float32)  # value = 8 * row + col
  windows = window_partition(x, 4)
  chex.assert_shape(windows, (4, 16, 1))
  np.testing.assert_array_equal(windows[1, :, 0], (np.arange(4)[:, None] * 8 + np.arange(4, 8)).ravel())
  grids = grid_partition(x, 4)
  chex.assert_shape(grids, (4, 16, 1))
  # Group (1, 0): rows 1, 3, 5, 7 and columns 0, 2, 4, 6 - a 4x4 grid spread over the map, 2 apart.
  np.testing.assert_array_equal(grids[2, :, 0], (np.arange(1, 8, 2)[:, None] * 8 + np.arange(0, 8, 2)).ravel())
  chex.assert_trees_all_close(window_reverse(windows, 4, 8, 8), x)
  chex.assert_trees_all_close(grid_reverse(grids, 4, 8, 8), x)


def test_relative_position_index_is_key_minus_query():
  index = relative_position_index(3)
  chex.assert_shape(index, (9, 9, 2))
  # query (0, 0) -> key (2, 1): offset (+2, +1), stored at (2 + 2, 1 + 2).
  np.testing.assert_array_equal(index[0, 2 * 3 + 1], [4, 3])
  # Pairs with the same offset share one entry: (1, 1) -> (2, 2) as (0, 0) -> (1, 1).
  np.testing.assert_array_equal(index[1 * 3 + 1, 2 * 3 + 2], index[0, 1 * 3 + 1])


@pytest.mark.parametrize("partition", ["block", "grid"])
def test_block_attention_is_local_and_grid_attention_is_dilated(partition):
  """Perturbing pixel (0, 0) of an 8x8 map changes, with windows of 4, only its 4x4 window (block)
  or the pixels 2 apart on its grid (grid)."""
  module = PartitionAttention(partition, size=4, dim_head=8)
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 16))
  variables = module.init(jax.random.key(1), x)
  delta = module.apply(variables, x.at[0, 0, 0, 0].add(5.0)) - module.apply(variables, x)
  changed = np.asarray(jnp.max(jnp.abs(delta[0]), axis=-1) > 1e-6)
  rows, cols = np.indices((8, 8))
  expected = (rows < 4) & (cols < 4) if partition == "block" else (rows % 2 == 0) & (cols % 2 == 0)
  np.testing.assert_array_equal(changed, expected)


def test_relative_position_bias_enters_the_attention():
  module = PartitionAttention("block", size=4, dim_head=8)
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 16))
  variables = module.init(jax.random.key(1), x)
  shifted = jax.tree_util.tree_map_with_path(
      lambda path, v: v + 1.0 if "relative_position_bias_table" in str(path) else v, variables)
  # A constant shift of every logit cancels in the softmax; a position-dependent one does not.
  chex.assert_trees_all_close(module.apply(shifted, x), module.apply(variables, x), rtol=1e-5, atol=1e-5)
  table = variables["params"]["rel_pos"]["relative_position_bias_table"]
  tilted = {"params": {**variables["params"], "rel_pos": {
      "relative_position_bias_table": table + 3.0 * jnp.arange(table.shape[1])[None, :, None]}}}
  assert float(jnp.max(jnp.abs(module.apply(tilted, x) - module.apply(variables, x)))) > 1e-3


@pytest.fixture(scope="module")
def tiny():
  model = create_model("maxvit_cifar", **TINY)
  return model, random_variables(model, (2, 32, 32, 3)), jax.jit(model.apply)


@pytest.fixture(scope="module")
def trainer():
  return Trainer(create_model("maxvit_cifar", **TINY))


def images(seed=3):
  return jax.random.normal(jax.random.key(seed), (2, 32, 32, 3))


def test_tiny_cifar_forward(tiny):
  _, variables, forward = tiny
  logits = forward(variables, images())
  chex.assert_shape(logits, (2, 10))
  chex.assert_tree_all_finite(logits)
  chex.assert_trees_all_close(forward(variables, images()), logits)  # eval: no rng, deterministic


def test_train_mode_uses_the_dropout_rng(tiny, trainer):
  model, variables, _ = tiny
  first = trainer.loss_at_start(RNGS)
  assert first == trainer.loss_at_start(RNGS)
  assert abs(first - trainer.loss_at_start({**RNGS, "dropout": jax.random.key(7)})) > 1e-6
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, images())


def test_drop_path_uses_its_rng_in_every_sub_block():
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 16))
  norm = functools.partial(nn.BatchNorm, use_running_average=False)
  conv = functools.partial(Conv, use_bias=False, padding="SAME")
  for module in (MBConv(16, conv, norm, drop_path_rate=0.5), PartitionAttention("grid", 4, 8, drop_path_rate=0.5)):
    variables = module.init(jax.random.key(1), x)
    run = lambda key: module.apply(variables, x, train=True, rngs={"drop_path": key}, mutable=["batch_stats"])[0]
    chex.assert_trees_all_close(run(jax.random.key(2)), run(jax.random.key(2)))
    assert float(jnp.max(jnp.abs(run(jax.random.key(2)) - run(jax.random.key(3))))) > 1e-4
  # The model hands the rates down: the second of two blocks drops (timm's linear rule gives the first 0).
  model = create_model("maxvit_cifar", **{**TINY, "depths": (2,), "drop_path_rate": 0.3, "dropout": 0.0})
  variables = abstract_variables(model, (2, 32, 32, 3))
  with pytest.raises(Exception, match="drop_path"):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, images())
  no_drop = create_model("maxvit_cifar", **{**TINY, "depths": (2,), "drop_path_rate": 0.0, "dropout": 0.0})
  jax.eval_shape(lambda v, x: no_drop.apply(v, x, train=True, mutable=["batch_stats"]), variables, images())


def test_bad_options_are_user_errors():
  with pytest.raises(UserError, match="dim_head"):
    create_model("maxvit_cifar", embed_dim=(16, 40, 64))
  with pytest.raises(UserError, match="one positive depth per stage"):
    create_model("maxvit_cifar", depths=(2, 2))
  with pytest.raises(UserError, match="window"):
    abstract_variables(create_model("maxvit_tiny"), (1, 200, 200, 3))
  with pytest.raises(UserError, match="window"):
    abstract_variables(create_model("maxvit_cifar", **TINY), (1, 36, 36, 3))


def test_tiny_cifar_variant_learns_digits(trainer):
  losses = trainer.train(steps=25)
  assert np.isfinite(losses).all()
  assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:3]), losses
