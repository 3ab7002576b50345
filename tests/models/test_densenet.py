"""DenseNet: torchvision's / the paper's parameter counts, shapes, features, remat, dropout, learning."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import check_bfloat16, check_bn_axis_name, random_variables, train_losses
from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.utils import abstract_variables, param_count

# torchvision 0.29 parameter counts (1000 classes); densenet264 from its DenseNet(32, (6, 12, 64, 48), 64).
TORCHVISION_COUNTS = {"densenet121": 7_978_856, "densenet161": 28_681_000, "densenet169": 14_149_480,
                      "densenet201": 20_013_928, "densenet264": 33_337_704}


@pytest.mark.parametrize("name", sorted(TORCHVISION_COUNTS))
def test_parameter_count_is_torchvisions(name):
  variables = abstract_variables(create_model(name), (1, 224, 224, 3))
  assert param_count(variables["params"]) == TORCHVISION_COUNTS[name]


def _bc_count(depth=100, k=12, classes=10):
  """DenseNet-BC parameters written out from the paper's description (sec. 3, 4.1)."""
  n, channels = (depth - 4) // 6, 2 * k
  total = 3 * 3 * 3 * channels                                        # stem conv, no bias
  for block in range(3):
    for _ in range(n):
      total += 2 * channels + channels * 4 * k                        # BN, 1x1 conv to 4k
      total += 2 * 4 * k + 9 * 4 * k * k                              # BN, 3x3 conv to k
      channels += k
    if block < 2:
      total += 2 * channels + channels * (channels // 2)              # BN, 1x1 transition conv
      channels //= 2
  return total + 2 * channels + channels * classes + classes          # final BN, classifier


def test_densenet_bc_100_12_count_is_the_papers():
  variables = abstract_variables(create_model("densenet_bc_100_12"), (1, 32, 32, 3))
  count = param_count(variables["params"])
  assert count == _bc_count() == 769_162
  assert round(count / 1e5) == 8  # the paper's Table 2: 0.8M


@pytest.mark.parametrize("name,size,classes", [("densenet121", 32, 1000), ("densenet121", 224, 1000),
                                               ("densenet_bc_100_12", 32, 10), ("densenet_bc_100_12", 224, 10)])
def test_logit_shapes(name, size, classes):
  model = create_model(name)
  variables = abstract_variables(model, (1, size, size, 3))
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  chex.assert_shape(jax.eval_shape(model.apply, variables, x), (2, classes))


def test_features():
  model = create_model("densenet121", return_features=True)
  variables = abstract_variables(model, (1, 64, 64, 3))
  features = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  assert {k: v.shape for k, v in features.items()} == {
      "stem": (1, 32, 32, 64), "stage1": (1, 16, 16, 256), "stage2": (1, 8, 8, 512),
      "stage3": (1, 4, 4, 1024), "stage4": (1, 2, 2, 1024)}
  assert "classifier" not in variables["params"]


def _tiny(**kwargs):
  return create_model("densenet_bc_100_12", growth_rate=4, block_config=(2, 2), num_init_features=8,
                      num_classes=3, **kwargs)


def test_memory_efficient_gives_the_same_values_and_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  plain, remat = _tiny(), _tiny(memory_efficient=True)
  variables = random_variables(plain, x.shape)

  def loss(model):
    def f(params):
      logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return jnp.sum(logits ** 2)
    return jax.jit(jax.value_and_grad(f))(variables["params"])
  chex.assert_trees_all_close(loss(plain), loss(remat), rtol=1e-5, atol=1e-6)


def test_dropout_only_in_training():
  model = _tiny(drop_rate=0.5)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  variables = random_variables(model, x.shape)
  train = jax.jit(lambda key: model.apply(variables, x, train=True, rngs={"dropout": key},
                                          mutable=["batch_stats"])[0])
  assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))
  evaluate = jax.jit(lambda v: model.apply(v, x))
  # In eval the dropout layers are identities: the same as the model without them.
  chex.assert_trees_all_close(evaluate(variables), jax.jit(lambda v: _tiny().apply(v, x))(variables))


@pytest.mark.parametrize("kwargs,match", [(dict(stem="tiny"), "stem"), (dict(block_config=()), "block_config"),
                                          (dict(compression=0.0), "compression"), (dict(drop_rate=1.0), "drop_rate")])
def test_user_errors(kwargs, match):
  with pytest.raises(UserError, match=match):
    create_model("densenet121", **kwargs)


def test_small_densenet_bc_learns_digits():
  model = create_model("densenet_bc_100_12", growth_rate=8, block_config=(2, 2, 2), num_init_features=16)
  losses = train_losses(model, steps=25, learning_rate=1e-2)
  print(f"densenet-bc loss {losses[0]:.3f} -> {losses[-1]:.3f}")
  assert losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("name,kwargs", [("densenet121", {}), ("densenet_bc_100_12", {})])
def test_bfloat16_compute(name, kwargs):
  check_bfloat16(name, **kwargs)


@pytest.mark.parametrize("name,kwargs", [("densenet121", {}), ("densenet_bc_100_12", dict(memory_efficient=True))])
def test_bn_axis_name_reaches_the_batchnorms(name, kwargs):
  check_bn_axis_name(name, **kwargs)
