"""EfficientNet-B0..B7: torchvision's parameter counts, compound scaling, shapes, features, blocks."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import check_bfloat16, check_bn_axis_name, random_variables
from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.utils import abstract_variables, param_count

# torchvision 0.29 efficientnet_b0..b7 parameter counts (1000 classes).
TORCHVISION_COUNTS = [5_288_548, 7_794_184, 9_109_994, 12_233_232, 19_341_616, 30_389_784, 43_040_704, 66_347_960]


@pytest.mark.parametrize("b", range(8))
def test_parameter_count_is_torchvisions(b):
  variables = abstract_variables(create_model(f"efficientnet_b{b}"), (1, 224, 224, 3))
  assert param_count(variables["params"]) == TORCHVISION_COUNTS[b]


def test_compound_scaling_of_b7():
  model = create_model("efficientnet_b7")
  # Channels x2.0 rounded to multiples of 8, blocks ceil(n x 3.1); torchvision's B5-B7 BatchNorm settings.
  assert model.stages() == [(1, 3, 1, 32, 4), (6, 3, 2, 48, 7), (6, 5, 2, 80, 7), (6, 3, 2, 160, 10),
                            (6, 5, 1, 224, 10), (6, 5, 2, 384, 13), (6, 3, 1, 640, 4)]
  assert (model.bn_epsilon, model.bn_momentum, model.dropout_rate) == (1e-3, 0.99, 0.5)
  assert create_model("efficientnet_b0").bn_epsilon == 1e-5


@pytest.mark.parametrize("size", [32, 224])
def test_logit_shapes(size):
  model = create_model("efficientnet_b0", num_classes=10)
  variables = abstract_variables(model, (1, size, size, 3))
  chex.assert_shape(jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)),
                    (2, 10))


def test_features_and_block_layout():
  model = create_model("efficientnet_b0", return_features=True)
  variables = abstract_variables(model, (1, 64, 64, 3))
  features = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  shapes = {k: v.shape[1:] for k, v in features.items()}
  assert shapes == {"stem": (32, 32, 32), "stage1": (32, 32, 16), "stage2": (16, 16, 24), "stage3": (8, 8, 40),
                    "stage4": (4, 4, 80), "stage5": (4, 4, 112), "stage6": (2, 2, 192), "stage7": (2, 2, 320)}
  params = variables["params"]
  assert "expand" not in params["stage1_block0"]                                  # expansion ratio 1
  assert params["stage3_block0"]["depthwise"]["conv"]["kernel"].shape == (5, 5, 1, 144)
  # Squeeze to a quarter of the block's *input* channels: 40 / 4 = 10 at the 2nd block of stage 3.
  assert params["stage3_block1"]["se"]["fc1"]["kernel"].shape == (1, 1, 240, 10)
  assert "head" not in params


def test_stochastic_depth_only_in_training():
  model = create_model("efficientnet_b0", width_mult=0.25, depth_mult=0.5, num_classes=3, drop_path_rate=0.9,
                       dropout_rate=0.0)
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = random_variables(model, x.shape)
  train = jax.jit(lambda key: model.apply(variables, x, train=True, rngs={"drop_path": key},
                                          mutable=["batch_stats"])[0])
  assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))
  evaluate = jax.jit(lambda v: model.apply(v, x))
  chex.assert_trees_all_close(evaluate(variables), evaluate(variables))
  chex.assert_tree_all_finite(evaluate(variables))


@pytest.mark.parametrize("kwargs,match", [(dict(width_mult=0), "width_mult"), (dict(drop_path_rate=2.0), "drop_path"),
                                          (dict(dropout_rate=-0.1), "dropout_rate")])
def test_user_errors(kwargs, match):
  with pytest.raises(UserError, match=match):
    create_model("efficientnet_b0", **kwargs)


@pytest.mark.parametrize("name,kwargs", [("efficientnet_b0", {})])
def test_bfloat16_compute(name, kwargs):
  check_bfloat16(name, **kwargs)


@pytest.mark.parametrize("name,kwargs", [("efficientnet_b0", {})])
def test_bn_axis_name_reaches_the_batchnorms(name, kwargs):
  check_bn_axis_name(name, **kwargs)
