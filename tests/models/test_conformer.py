"""Conformer: the authors' parameter counts (also by formula), shapes, heads, rng use, errors, a short training run."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.utils import abstract_variables, param_count
from model_checks import Trainer, random_variables

# pengzhiliang/Conformer README: Conformer-Ti 23.5M, Conformer-S 37.7M, Conformer-B 83.3M.
OFFICIAL = {
    "conformer_tiny_patch16": 23_524_704,
    "conformer_small_patch16": 37_673_424,
    "conformer_base_patch16": 83_289_136,
}
TINY = dict(base_channel=8, channel_ratio=1, embed_dim=16, depth=3, num_heads=2, stem_width=8, num_classes=10,
            dropout=0.1, drop_path_rate=0.2)
RNGS = {"dropout": jax.random.key(1), "drop_path": jax.random.key(2)}


def expected_count(base_channel, channel_ratio, embed_dim, depth, mlp_ratio=4.0, patch=16, stem="imagenet",
                   stem_width=64, classes=1000):
  """The authors' architecture counted by hand (weights, biases, BN/LN scale and shift)."""
  e, mlp = embed_dim, int(embed_dim * mlp_ratio)
  stem_stride = 4 if stem == "imagenet" else 1
  dw = patch // stem_stride

  def bottleneck(cin, cout, projection):
    m = cout // 4
    count = cin * m + 2 * m + 9 * m * m + 2 * m + m * cout + 2 * cout
    return count + (cin * cout + 2 * cout if projection else 0)

  encoder = 2 * 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + (e * mlp + mlp) + (mlp * e + e)
  fcu_down = lambda m: m * e + e + 2 * e
  fcu_up = lambda m: e * m + m + 2 * m
  channels = [base_channel * channel_ratio * 2**i for i in range(3)]

  kernel = 7 if stem == "imagenet" else 3
  total = kernel * kernel * 3 * stem_width + 2 * stem_width                    # conv1, bn1
  total += bottleneck(stem_width, channels[0], True)                          # conv_1
  total += dw * dw * stem_width * e + e + e + encoder                         # trans_patch_conv, cls_token, trans_1
  per_stage = depth // 3
  for i in range(2, depth + 1):
    stage = (i - 1) // per_stage
    first = stage > 0 and (i - 1) % per_stage == 0
    cin = channels[stage - 1] if first else channels[stage]
    c = channels[stage]
    total += bottleneck(cin, c, first) + fcu_down(c // 4) + encoder + fcu_up(c // 4)
    total += bottleneck(c, c, i == depth)                                     # fusion_block
  total += channels[2] * classes + classes + 2 * e + e * classes + classes    # conv head, trans_norm, trans head
  return total


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_parameter_counts_are_the_authors(name):
  model = create_model(name)
  variables = abstract_variables(model, (1, 224, 224, 3))
  count = param_count(variables["params"])
  assert count == OFFICIAL[name]
  assert count == expected_count(model.base_channel, model.channel_ratio, model.embed_dim, model.depth)


def test_big_models_at_224_via_eval_shape():
  model = create_model("conformer_small_patch16")
  variables = abstract_variables(model, (1, 224, 224, 3))
  params = variables["params"]
  chex.assert_shape(params["trans_patch_conv"]["kernel"], (4, 4, 64, 384))  # 16-pixel patches after the stride-4 stem
  assert "residual_conv" in params["conv_trans_12"]["fusion_block"]          # the last fusion halves the map to 7x7
  assert "residual_conv" not in params["conv_trans_11"]["fusion_block"]
  logits = jax.eval_shape(functools.partial(model.apply, train=False), variables,
                          jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
  chex.assert_shape(logits, (2, 1000))


def test_cifar_variant_count_and_shape():
  model = create_model("conformer_cifar")
  variables = abstract_variables(model, (1, 32, 32, 3))
  assert param_count(variables["params"]) == expected_count(64, 1, 192, 12, patch=4, stem="cifar", classes=10)
  chex.assert_shape(variables["params"]["trans_patch_conv"]["kernel"], (4, 4, 64, 192))  # 8x8 tokens
  logits = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  chex.assert_shape(logits, (2, 10))


def test_bfloat16_compute_keeps_float32_params():
  model = create_model("conformer_cifar", dtype=jnp.bfloat16, **TINY)
  variables = abstract_variables(model, (1, 32, 32, 3))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
  logits = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert logits.dtype == jnp.bfloat16


@pytest.fixture(scope="module")
def tiny():
  """The tiny CIFAR variant with numpy-drawn variables and one compiled eval forward that also
  captures the two heads' outputs."""
  model = create_model("conformer_cifar", **TINY)
  variables = random_variables(model, (2, 32, 32, 3))
  is_head = lambda module, method: module.name in ("conv_cls_head", "trans_cls_head")
  forward = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=is_head, mutable=["intermediates"]))
  return model, variables, forward


@pytest.fixture(scope="module")
def trainer():
  return Trainer(create_model("conformer_cifar", **TINY))


def images(seed=3):
  return jax.random.normal(jax.random.key(seed), (2, 32, 32, 3))


def test_tiny_forward_is_the_sum_of_the_two_heads(tiny):
  model, variables, forward = tiny
  logits, state = forward(variables, images())
  chex.assert_shape(logits, (2, 10))
  chex.assert_tree_all_finite(logits)
  conv_logits = state["intermediates"]["conv_cls_head"]["__call__"][0]
  trans_logits = state["intermediates"]["trans_cls_head"]["__call__"][0]
  chex.assert_trees_all_close(logits, conv_logits + trans_logits, rtol=1e-5, atol=1e-6)
  assert float(jnp.max(jnp.abs(conv_logits - trans_logits))) > 1e-4  # two different heads
  chex.assert_trees_all_close(forward(variables, images())[0], logits)  # eval: no rng, deterministic
  heads = jax.eval_shape(model.clone(return_heads=True).apply, variables, images())
  chex.assert_shape(list(heads), [(2, 10), (2, 10)])


def test_train_heads_returns_both_heads_in_training_only(tiny):
  """The authors' criterion needs each head's logits in training; eval still gets their sum."""
  from jaxcnn.models.conformer import ConformerOutputs
  model, variables, forward = tiny
  heads_model = model.clone(train_heads=True, dropout=0.0, drop_path_rate=0.0)
  chex.assert_trees_all_close(jax.jit(heads_model.apply)(variables, images()), forward(variables, images())[0],
                              rtol=1e-5, atol=1e-6)
  outputs = jax.eval_shape(lambda v, x: heads_model.apply(v, x, train=True, rngs=RNGS, mutable=["batch_stats"])[0],
                           variables, images())
  assert isinstance(outputs, ConformerOutputs)
  chex.assert_shape(list(outputs), [(2, 10), (2, 10)])


def test_train_mode_uses_the_dropout_and_drop_path_rngs(tiny, trainer):
  model, variables, _ = tiny
  first = trainer.loss_at_start(RNGS)
  assert first == trainer.loss_at_start(RNGS)
  assert abs(first - trainer.loss_at_start({**RNGS, "dropout": jax.random.key(7)})) > 1e-6
  assert abs(first - trainer.loss_at_start({**RNGS, "drop_path": jax.random.key(7)})) > 1e-6
  for missing in RNGS:
    with pytest.raises(Exception, match=missing):
      jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                              rngs={k: r for k, r in RNGS.items() if k != missing}),
                     variables, images())


def test_bad_options_are_user_errors():
  with pytest.raises(UserError, match="multiple of 3"):
    create_model("conformer_cifar", depth=4)
  with pytest.raises(UserError, match="stem"):
    create_model("conformer_cifar", stem="tiny")
  with pytest.raises(UserError, match="patch_size"):
    create_model("conformer_tiny_patch16", patch_size=8)
  with pytest.raises(UserError, match="divisible by patch_size"):
    abstract_variables(create_model("conformer_cifar", **TINY), (1, 30, 30, 3))


def test_tiny_cifar_variant_learns_digits(trainer):
  losses = trainer.train(steps=25)
  assert np.isfinite(losses).all()
  assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:3]), losses
