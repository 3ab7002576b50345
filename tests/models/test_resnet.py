"""ResNet family: parameter counts, shapes, feature maps, options, errors, and a short training run."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.models.resnet import zero_pad_shortcut
from jaxcnn.utils import abstract_variables, param_count

# torchvision's own counts (1000 classes): weights, biases, BN scale/bias; no running statistics.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
}

# CIFAR models with 10 classes. He et al. 2015 Table 6 rounds option A's counts
# to 0.27M / 0.46M / 0.66M / 0.85M / 1.7M; WRN-28-10 36.5M (Zagoruyko &
# Komodakis Table 1 / xternalz/WideResNet-pytorch); ResNeXt-29 8x64d 34.4M
# (Xie et al. Table 7; prlz77/ResNeXt.pytorch layout). resnet18_cifar: the
# kuangliu/pytorch-cifar ResNet18.
CIFAR_PARAMS = {
    ("resnet20", "A"): 269_722,
    ("resnet20", "B"): 272_474,
    ("resnet32", "A"): 464_154,
    ("resnet44", "A"): 658_586,
    ("resnet56", "A"): 853_018,
    ("resnet56", "B"): 855_770,
    ("resnet110", "A"): 1_727_962,
    ("resnet110", "B"): 1_730_714,
}
# Pre-activation ResNets (He et al. 2016, fb.resnet.torch preresnet layout: BN-ReLU in the stem
# before the max-pool, the first unit skips its own). timm's resnetv2_50/101 (BiT layout: the
# BN-ReLU after the max-pool, in the first unit) have the same counts.
PREACT_PARAMS = {
    "preact_resnet50": 25_549_352,
    "preact_resnet101": 44_541_480,
}
OTHER_CIFAR_PARAMS = {
    "resnet18_cifar": 11_173_962,
    "wrn28_10": 36_479_194,
    "resnext29_8x64d": 34_426_698,
}


def _params(name, **overrides):
  return abstract_variables(create_model(name, **overrides), (1, 32, 32, 3))["params"]


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_torchvision_parameter_counts(name):
  assert param_count(_params(name)) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PREACT_PARAMS))
def test_preact_parameter_counts(name):
  assert param_count(_params(name)) == PREACT_PARAMS[name]


@pytest.mark.parametrize("name,shortcut", sorted(CIFAR_PARAMS))
def test_cifar_resnet_parameter_counts(name, shortcut):
  assert param_count(_params(name, shortcut=shortcut)) == CIFAR_PARAMS[(name, shortcut)]


@pytest.mark.parametrize("name", sorted(OTHER_CIFAR_PARAMS))
def test_other_cifar_parameter_counts(name):
  assert param_count(_params(name)) == OTHER_CIFAR_PARAMS[name]


def _abstract_logits(model, shape, dtype=jnp.float32):
  rngs = {"params": jax.random.key(0)}
  x = jax.ShapeDtypeStruct(shape, dtype)
  return jax.eval_shape(lambda x: model.init_with_output(rngs, x)[0], x)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2",
                                  "preact_resnet18", "preact_resnet50", "resnet20", "resnet18_cifar",
                                  "wrn28_10", "resnext29_8x64d"])
@pytest.mark.parametrize("size", [32, 224])
def test_logits_shape_at_32_and_224(name, size):
  logits = _abstract_logits(create_model(name, num_classes=7), (2, size, size, 3))
  chex.assert_shape(logits, (2, 7))
  assert logits.dtype == jnp.float32


def test_bfloat16_compute_keeps_float32_parameters():
  model = create_model("resnet50", dtype=jnp.bfloat16)
  variables = abstract_variables(model, (1, 64, 64, 3))
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert _abstract_logits(model, (1, 64, 64, 3)).dtype == jnp.bfloat16


def test_grouped_and_wide_bottleneck_widths():
  # int(planes * width_per_group / 64) * groups, as torchvision; the 3x3 conv is grouped.
  resnext = _params("resnext50_32x4d")
  chex.assert_shape(resnext["layer1_0"]["conv2"]["kernel"], (3, 3, 128 // 32, 128))
  chex.assert_shape(resnext["layer4_0"]["conv2"]["kernel"], (3, 3, 1024 // 32, 1024))
  wide = _params("wide_resnet50_2")
  chex.assert_shape(wide["layer1_0"]["conv2"]["kernel"], (3, 3, 128, 128))
  chex.assert_shape(wide["layer1_0"]["conv3"]["kernel"], (1, 1, 128, 256))


def test_cifar_depth_and_width():
  params = _params("resnet20", width=2)
  assert sorted(k for k in params if k.startswith("layer")) == [f"layer{s}_{b}" for s in (1, 2, 3) for b in range(3)]
  chex.assert_shape(params["conv1"]["kernel"], (3, 3, 3, 32))
  chex.assert_shape(params["layer3_2"]["conv2"]["kernel"], (3, 3, 128, 128))
  params = _params("resnet_cifar", depth=32, width=0.5)
  assert "layer2_4" in params and "layer2_5" not in params
  chex.assert_shape(params["layer1_0"]["conv1"]["kernel"], (3, 3, 8, 8))
  chex.assert_shape(params["fc"]["kernel"], (32, 10))
  # WRN-28-10: 16-channel stem, 4 blocks of 160/320/640; projections without BN.
  params = _params("wrn28_10")
  chex.assert_shape(params["layer1_0"]["downsample_conv"]["kernel"], (1, 1, 16, 160))
  assert "layer1_3" in params and "layer1_4" not in params
  assert "downsample_bn" not in params["layer1_0"] and "final_bn" in params


def test_option_a_shortcut_pads_zeros_after_a_subsampled_identity():
  x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
  y = zero_pad_shortcut(x, 8, 2)
  chex.assert_shape(y, (2, 2, 2, 8))
  np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2, :])
  np.testing.assert_array_equal(y[..., 3:], 0.0)
  assert not any("downsample" in k for block in _params("resnet20").values() for k in block)


def test_preact_layout():
  params = _params("preact_resnet18")
  # The stem ends in BN-ReLU, so the first unit skips its own; later units pre-activate.
  assert "bn1" in params and "bn1" not in params["layer1_0"] and "bn1" in params["layer1_1"]
  assert set(params["layer2_0"]) == {"bn1", "conv1", "bn2", "conv2", "downsample_conv"}
  assert "final_bn" in params
  assert set(params["layer1_0"]) == {"conv1", "bn2", "conv2"}


def _init(model, x):
  """Real initialisation, compiled with the non-partitionable threefry.

  jax's default (partitionable) threefry makes XLA:CPU compile a ResNet's
  init ~7x slower (15 s vs 2 s of CPU for three residual blocks); the
  values of the random numbers do not matter to these tests.
  """
  with jax.threefry_partitionable(False):
    return jax.jit(model.init)(jax.random.key(0), x)


def test_zero_init_residual():
  models = {
      "basic": create_model("resnet_cifar", depth=8, width=0.25, shortcut="B", zero_init_residual=True),
      "bottleneck": create_model("resnet50", stage_sizes=(1, 1), zero_init_residual=True),
      "preact": create_model("resnet_cifar", depth=8, width=0.25, preact=True, zero_init_residual=True),
  }
  params = {k: _init(m, jnp.zeros((1, 8, 8, 3)))["params"] for k, m in models.items()}
  for kind, last_bn in [("basic", "bn2"), ("bottleneck", "bn3")]:
    for block in ("layer1_0", "layer2_0"):
      np.testing.assert_array_equal(params[kind][block][last_bn]["scale"], 0.0)
      np.testing.assert_array_equal(params[kind][block]["bn1"]["scale"], 1.0)
    np.testing.assert_array_equal(params[kind]["layer2_0"]["downsample_bn"]["scale"], 1.0)
  # Pre-activation blocks end in a conv: that kernel starts at zero.
  np.testing.assert_array_equal(params["preact"]["layer2_0"]["conv2"]["kernel"], 0.0)
  assert np.abs(params["preact"]["layer2_0"]["conv1"]["kernel"]).sum() > 0


# Tiny models that run for real. Their variables are random numbers of a
# sensible scale made from the abstract shapes, which skips compiling init.
TINY = {
    "resnet": dict(name="resnet18", stage_sizes=(1, 1), num_classes=5),
    "resnext_preact": dict(name="resnext50_32x4d", stage_sizes=(1, 1), preact=True, num_classes=5),
    "cifar": dict(name="resnet20", depth=8, width=0.25, num_classes=5),
    "wrn": dict(name="wrn28_10", depth=10, width=1, dropout_rate=0.5, num_classes=5),
}


def _tiny_model(key, **extra):
  kwargs = dict(TINY[key])
  return create_model(kwargs.pop("name"), **kwargs, **extra)


def _random_value(path, leaf, rng):
  name = path[-1].key
  if name in ("scale", "var"):
    return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
  if name in ("bias", "mean"):
    return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
  fan_in = np.prod(leaf.shape[:-1])  # conv HWIO / dense (in, out)
  return rng.normal(0.0, fan_in**-0.5, leaf.shape).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _tiny(key):
  model = _tiny_model(key)
  rng = np.random.default_rng(0)
  abstract = abstract_variables(model, (1, 32, 32, 3))
  return model, jax.tree_util.tree_map_with_path(lambda p, leaf: _random_value(p, leaf, rng), abstract)


def _images(batch=4, size=32, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


@pytest.mark.parametrize("key", sorted(TINY))
def test_features_are_what_the_classifier_sees(key):
  model, variables = _tiny(key)
  backbone = _tiny_model(key, return_features=True)
  logits, features = jax.jit(lambda v, x: (model.apply(v, x), backbone.apply(v, x)))(variables, _images())
  assert sorted(features) == ["stage1", "stage2", "stage3"][:len(features) - 1] + ["stem"]
  last = features[f"stage{len(features) - 1}"]
  fc = variables["params"]["fc"]
  chex.assert_trees_all_close(jnp.mean(last, axis=(1, 2)) @ fc["kernel"] + fc["bias"], logits, atol=1e-5)
  assert "fc" not in abstract_variables(backbone, (1, 32, 32, 3))["params"]


def test_feature_strides_and_channels():
  features = _abstract_logits(create_model("resnet50", return_features=True), (1, 224, 224, 3))
  assert {k: v.shape for k, v in features.items()} == {
      "stem": (1, 112, 112, 64), "stage1": (1, 56, 56, 256), "stage2": (1, 28, 28, 512),
      "stage3": (1, 14, 14, 1024), "stage4": (1, 7, 7, 2048)}
  features = _abstract_logits(create_model("resnet20", return_features=True), (1, 32, 32, 3))
  assert {k: v.shape for k, v in features.items()} == {
      "stem": (1, 32, 32, 16), "stage1": (1, 32, 32, 16), "stage2": (1, 16, 16, 32), "stage3": (1, 8, 8, 64)}


@pytest.mark.parametrize("key", ["resnet", "cifar"])
def test_train_mode_updates_batch_stats_and_eval_needs_no_rng(key):
  model, variables = _tiny(key)

  @jax.jit
  def run(variables, x):
    train = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return train, model.apply(variables, x, train=False)

  (logits, updates), eval_logits = run(variables, _images())
  chex.assert_shape(logits, (4, 5))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed))
  assert not np.allclose(eval_logits, logits)  # eval uses the running statistics
  chex.assert_tree_all_finite(eval_logits)


def test_wide_resnet_dropout_is_random_in_training_only():
  model, variables = _tiny("wrn")

  @jax.jit
  def run(variables, x, key):
    train = model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])[0]
    return train, model.apply(variables, x)

  x = _images()
  train1, eval1 = run(variables, x, jax.random.key(1))
  train2, eval2 = run(variables, x, jax.random.key(2))
  assert not np.allclose(train1, train2)
  np.testing.assert_array_equal(train1, run(variables, x, jax.random.key(1))[0])
  np.testing.assert_array_equal(eval1, eval2)


@pytest.mark.parametrize("key", ["resnet", "cifar"])
def test_bn_axis_name_shares_statistics_across_the_mapped_axis(key):
  # Two shards under vmap with bn_axis_name compute what one model does on the whole batch.
  model, variables = _tiny(key)
  synced = _tiny_model(key, bn_axis_name="batch")

  def train_logits(module, v, x):
    return module.apply(v, x, train=True, mutable=["batch_stats"])[0]

  @jax.jit
  def run(variables, x):
    shards = x.reshape((2, 4) + x.shape[1:])
    return (train_logits(model, variables, x),
            jax.vmap(functools.partial(train_logits, synced, variables), axis_name="batch")(shards),
            jax.vmap(functools.partial(train_logits, model, variables))(shards))

  whole, per_shard_synced, per_shard_alone = run(variables, _images(batch=8))
  chex.assert_trees_all_close(per_shard_synced.reshape(8, 5), whole, atol=1e-4)
  assert not np.allclose(per_shard_alone.reshape(8, 5), whole, atol=1e-4)


@pytest.mark.parametrize("name,overrides,message", [
    ("resnet20", dict(depth=21), "depth=21"),
    ("wrn28_10", dict(depth=26), "6n \\+ 4"),
    ("resnet20", dict(shortcut="C"), "shortcut='C'"),
    ("resnet20", dict(width=0), "width=0"),
    ("resnet20", dict(width=0.5, stem_channels=16), "cannot zero-pad"),
    ("resnet18", dict(groups=32), "block='basic'"),
    ("resnet50", dict(stem="tiny"), "stem='tiny'"),
    ("resnet50", dict(stage_sizes=()), "stage_sizes"),
    ("resnet50", dict(depth=50), "no option depth"),
])
def test_bad_options_are_user_errors(name, overrides, message):
  with pytest.raises(UserError, match=message):
    create_model(name, **overrides)


def _digits(n=512):
  """sklearn's 8x8 digits as 32x32x3 images in [0, 1]."""
  from sklearn.datasets import load_digits
  data = load_digits()
  images = data.images[:n].astype(np.float32) / 16.0
  images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)  # nearest-neighbour 8x8 -> 32x32
  return np.repeat(images[..., None], 3, axis=-1), data.target[:n].astype(np.int32)


def test_resnet20_learns_digits():
  model = create_model("resnet20", width=0.5)  # 8/16/32 channels
  images, labels = _digits()
  variables = _init(model, images[:1])
  params, batch_stats = variables["params"], variables["batch_stats"]
  tx = optax.adam(5e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, batch_stats, opt_state, x, y):
    def loss_fn(params):
      logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                    mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates["batch_stats"]
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  losses = []
  for i in range(30):
    batch = slice((i % 16) * 32, (i % 16 + 1) * 32)
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, images[batch], labels[batch])
    losses.append(float(loss))
  first, last = np.mean(losses[:4]), np.mean(losses[-4:])
  assert first > 1.8  # ~ln(10) at the start
  assert last < 0.5 * first, losses
