"""ViT: timm's parameter counts, shapes/dtypes, scan == unrolled, remat, dropout / drop path, posemb resampling."""
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.models.vit import drop_path, resample_posemb, scan_params, unscan_params
from jaxcnn.utils import abstract_variables, param_count

# timm 1.0.31 `sum(p.numel() for p in m.parameters())` with num_classes=1000 (torchvision's
# vit_b_16 / b_32 / l_16 / l_32 agree).
TIMM_COUNTS = {
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_base_patch16_224": 86_567_656,
    "vit_large_patch16_224": 304_326_632,
    "vit_small_patch32_224": 22_878_952,
    "vit_base_patch32_224": 88_224_232,
    "vit_large_patch32_224": 306_535_400,
}

TINY = dict(num_classes=7, patch_size=4, width=16, depth=3, num_heads=2, mlp_dim=32)

def key(seed):
  """rbg keys: their dropout masks compile ~3x faster than threefry's on CPU."""
  return jax.random.key(seed, impl="unsafe_rbg")


TRAIN_RNGS = {"dropout": key(10), "drop_path": key(11)}


def expected_count(width, depth, mlp_dim, patch, tokens, classes, channels=3):
  """ViT parameters by hand: patch conv, class token, position embedding, blocks, final LN, head."""
  block = 2 * 2 * width + (width * 3 * width + 3 * width) + (width * width + width) \
      + (width * mlp_dim + mlp_dim) + (mlp_dim * width + width)
  return (patch * patch * channels * width + width) + width + tokens * width \
      + depth * block + 2 * width + (width * classes + classes)


@pytest.mark.parametrize("name", sorted(TIMM_COUNTS))
def test_parameter_count_is_timms(name):
  variables = abstract_variables(create_model(name), (1, 224, 224, 3))
  assert param_count(variables) == TIMM_COUNTS[name]


def test_scanned_parameter_count_is_the_same():
  variables = abstract_variables(create_model("vit_base_patch16_224", scan_layers=True), (1, 224, 224, 3))
  assert param_count(variables) == TIMM_COUNTS["vit_base_patch16_224"]
  chex.assert_shape(variables["params"]["blocks"]["attn"]["qkv"]["kernel"], (12, 768, 3 * 768))


@pytest.mark.parametrize("name,width,mlp_dim", [("vit_tiny_patch4_32", 192, 768), ("vit_small_patch4_32", 384, 1536)])
def test_cifar_variants(name, width, mlp_dim):
  model = create_model(name)
  variables = abstract_variables(model, (1, 32, 32, 3))
  assert param_count(variables) == expected_count(width, 12, mlp_dim, 4, 65, 10)
  chex.assert_shape(variables["params"]["pos_embed"], (1, 65, width))  # 8x8 patches + class token
  logits = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  chex.assert_shape(logits, (2, 10))


@functools.lru_cache(maxsize=None)
def fresh_tiny_variables():
  """The one real init of a tiny ViT (random initialisers compile slowly on a busy CPU)."""
  return jax.jit(create_model("vit", **TINY).init)(key(0), jnp.zeros((1, 16, 16, 3)))


def tiny(**overrides):
  """A tiny ViT and variables with a random head (the zero-initialised one would hide differences)."""
  variables = fresh_tiny_variables()
  head = variables["params"]["head"]
  head = {"kernel": normal(1, head["kernel"].shape), "bias": head["bias"]}
  return create_model("vit", **{**TINY, **overrides}), {"params": {**variables["params"], "head": head}}


@functools.lru_cache(maxsize=None)
def jitted_apply(model):
  return jax.jit(model.apply, static_argnames="train")


def normal(seed, shape):
  """Test inputs from numpy: no random-number kernels to compile."""
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def images(batch=4, size=16):
  return normal(3, (batch, size, size, 3))


def test_tiny_count_shape_and_zero_head():
  model, variables = tiny()
  assert param_count(variables) == expected_count(16, 3, 32, 4, 17, 7)
  fresh = fresh_tiny_variables()
  assert not np.any(fresh["params"]["head"]["kernel"]) and not np.any(fresh["params"]["head"]["bias"])
  logits = jitted_apply(model)(variables, images())
  chex.assert_shape(logits, (4, 7))
  assert np.std(logits) > 0


def test_gap_pool_has_no_class_token():
  model = create_model("vit", **TINY, pool="gap")
  variables = abstract_variables(model, (1, 16, 16, 3))
  assert "cls_token" not in variables["params"]
  chex.assert_shape(variables["params"]["pos_embed"], (1, 16, 16))
  assert param_count(variables) == expected_count(16, 3, 32, 4, 16, 7) - 16


def test_bfloat16_compute_gives_bfloat16_logits_and_float32_params():
  model, variables = tiny(dtype=jnp.bfloat16)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  logits = jitted_apply(model)(variables, images())
  assert logits.dtype == jnp.bfloat16
  reference = jitted_apply(tiny()[0])(variables, images())
  chex.assert_trees_all_close(logits.astype(jnp.float32), reference, atol=0.15, rtol=0.1)


def squared_logits_loss(model):
  return jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(model.apply({"params": p}, x) ** 2)))


@functools.lru_cache(maxsize=None)
def unrolled_loss_and_grads():
  model, variables = tiny()
  return squared_logits_loss(model)(variables["params"], images())


def test_scan_layers_matches_unrolled_given_the_same_weights():
  _, variables = tiny()
  scanned = create_model("vit", **TINY, scan_layers=True)
  scanned_params = scan_params(variables["params"])
  # Same tree as the scanned model's own init.
  own = abstract_variables(scanned, (1, 16, 16, 3))["params"]
  chex.assert_trees_all_equal_shapes(own, scanned_params)
  loss, grads = unrolled_loss_and_grads()
  scanned_loss, scanned_grads = squared_logits_loss(scanned)(scanned_params, images())
  chex.assert_trees_all_close(scanned_loss, loss, rtol=1e-5)
  chex.assert_trees_all_close(unscan_params(scanned_grads), grads, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scan", [False, True])
def test_remat_gives_the_same_gradients(scan):
  """remat only changes what the backward pass recomputes."""
  _, variables = tiny()
  params = scan_params(variables["params"]) if scan else variables["params"]
  remat = create_model("vit", **TINY, scan_layers=scan, remat=True)
  loss, grads = squared_logits_loss(remat)(params, images())
  expected_loss, expected_grads = unrolled_loss_and_grads()
  chex.assert_trees_all_close(loss, expected_loss, rtol=1e-5)
  chex.assert_trees_all_close(unscan_params(grads) if scan else grads, expected_grads, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scan", [False, True])
def test_remat_training_without_drop_path_needs_no_rng(scan):
  """A zero drop-path rate stays static under remat: no 'drop_path' rng, no mask, same logits as eval."""
  _, variables = tiny()
  params = scan_params(variables["params"]) if scan else variables["params"]
  model = create_model("vit", **TINY, scan_layers=scan, remat=True)
  train_logits = jax.jit(lambda p, x: model.apply({"params": p}, x, train=True))(params, images())
  chex.assert_trees_all_close(train_logits, model.apply({"params": params}, images()), atol=1e-5, rtol=1e-5)


def test_unscan_inverts_scan():
  _, variables = tiny()
  chex.assert_trees_all_equal(unscan_params(scan_params(variables["params"])), variables["params"])


@pytest.mark.parametrize("scan", [False, True])
def test_eval_needs_no_rng_and_ignores_dropout_and_drop_path(scan):
  model, variables = tiny()
  noisy = create_model("vit", **TINY, dropout=0.3, attention_dropout=0.3, drop_path_rate=0.5, scan_layers=scan)
  params = scan_params(variables["params"]) if scan else variables["params"]
  x = images()
  chex.assert_trees_all_close(jitted_apply(noisy)({"params": params}, x), jitted_apply(model)(variables, x),
                              atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_train_is_deterministic_given_rngs_and_random_across_them(scan):
  _, variables = tiny()
  noisy = create_model("vit", **TINY, dropout=0.1, attention_dropout=0.1, drop_path_rate=0.3, scan_layers=scan)
  params = {"params": scan_params(variables["params"]) if scan else variables["params"]}
  run = jax.jit(lambda rngs: noisy.apply(params, images(), train=True, rngs=rngs))
  first = run(TRAIN_RNGS)
  chex.assert_trees_all_equal(first, run(TRAIN_RNGS))
  other = run({"dropout": key(20), "drop_path": key(21)})
  assert not np.allclose(first, other, atol=1e-4)


@pytest.mark.parametrize("scan", [False, True])
def test_drop_path_acts_only_in_train(scan):
  model, variables = tiny()
  params = {"params": scan_params(variables["params"]) if scan else variables["params"]}
  x = images(16)
  # Without dropout or drop path, train == eval (nothing else differs in a ViT).
  plain = jitted_apply(create_model("vit", **TINY, scan_layers=scan))
  chex.assert_trees_all_close(plain(params, x, train=True, rngs=TRAIN_RNGS), plain(params, x), atol=1e-5, rtol=1e-5)
  # Drop path alone (rates 0, 0.45, 0.9 over the three blocks) changes the training output.
  dropping = jitted_apply(create_model("vit", **TINY, drop_path_rate=0.9, scan_layers=scan))
  train = dropping(params, x, train=True, rngs={"drop_path": key(4)})
  evaluation = dropping(params, x)
  assert not np.allclose(train, evaluation, atol=1e-4)


def test_drop_path_masks_whole_samples_with_traced_rate():
  class Branch(nn.Module):
    @nn.compact
    def __call__(self, x, rate, train):
      return drop_path(self, x, rate, train)

  x = jnp.ones((256, 3, 5))
  apply = jax.jit(lambda rate: Branch().apply({}, x, rate, True, rngs={"drop_path": key(0)}))
  out = np.asarray(apply(jnp.float32(0.25)))
  per_sample = out.reshape(256, -1)
  assert np.all(per_sample == per_sample[:, :1])  # one decision per sample
  assert set(np.unique(per_sample)) == {0.0, np.float32(1 / 0.75)}
  assert 0.15 < np.mean(per_sample[:, 0] == 0) < 0.35
  # Eval, or a static zero rate, is the identity without any rng.
  chex.assert_trees_all_equal(Branch().apply({}, x, 0.5, False), x)
  chex.assert_trees_all_equal(Branch().apply({}, x, 0.0, True), x)


def test_user_errors():
  model, variables = tiny()
  with pytest.raises(UserError, match="resample_posemb"):
    jax.eval_shape(model.apply, variables, images(size=24))  # 6x6 patches, params for 4x4
  with pytest.raises(UserError, match="divisible by patch_size"):
    jax.eval_shape(model.apply, variables, images(size=18))
  with pytest.raises(UserError, match="pool"):
    abstract_variables(create_model("vit", **TINY, pool="max"), (1, 16, 16, 3))
  with pytest.raises(UserError, match="num_heads"):
    abstract_variables(create_model("vit", **{**TINY, "num_heads": 3}), (1, 16, 16, 3))


def test_resample_posemb_bilinear_by_hand():
  # 2x2 -> 4x4, half-pixel centres: output coordinate i maps to (i + 0.5) / 2 - 0.5, clamped,
  # i.e. source positions 0, 0.25, 0.75, 1 along each axis.
  grid = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
  weights = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], np.float32)  # [new, old]
  expected = weights @ grid @ weights.T
  cls = np.full((1, 1, 1), 7.0, np.float32)
  posemb = np.concatenate([cls, grid.reshape(1, 4, 1)], axis=1)
  out = resample_posemb(posemb, 4)
  chex.assert_shape(out, (1, 17, 1))
  assert out[0, 0, 0] == 7.0  # class token kept
  chex.assert_trees_all_close(out[0, 1:, 0], expected.reshape(-1), atol=1e-6)
  # Without a class token the prefix is inferred as empty; same size is the identity.
  chex.assert_trees_all_close(resample_posemb(grid.reshape(1, 4, 1), 2), grid.reshape(1, 4, 1))
  chex.assert_shape(resample_posemb(posemb, (3, 5)), (1, 16, 1))
  with pytest.raises(UserError, match="square"):
    resample_posemb(np.zeros((1, 7, 2)), 4)


def test_resampled_posemb_runs_at_the_new_resolution():
  model, variables = tiny()
  params = dict(variables["params"])
  params["pos_embed"] = resample_posemb(params["pos_embed"], 6)
  chex.assert_shape(jax.eval_shape(model.apply, {"params": params}, images(2, 24)), (2, 7))


@pytest.mark.parametrize("scan", [False, True])
def test_train_without_drop_path_needs_no_drop_path_rng(scan):
  model = create_model("vit", **TINY, dropout=0.1, scan_layers=scan)
  variables = abstract_variables(model, (1, 16, 16, 3))
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": key(0)}), variables, images())
  chex.assert_shape(logits, (4, 7))
