"""GoogLeNet: torchvision's parameter counts, shapes, features, auxiliary heads, options."""
import chex
import jax
import jax.numpy as jnp
import pytest

from model_checks import check_bfloat16, check_bn_axis_name
from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.models.googlenet import GoogLeNet, GoogLeNetOutputs
from jaxcnn.utils import abstract_variables, param_count


def _count(**kwargs):
  return param_count(abstract_variables(create_model("googlenet", **kwargs), (1, 224, 224, 3))["params"])


def test_parameter_counts_are_torchvisions():
  assert _count() == 6_624_904                    # googlenet(aux_logits=False)
  assert _count(aux_logits=True) == 13_004_888    # googlenet() with its two auxiliary heads
  # The paper's 5x5 convolutions in the third branch: (25 - 9) * c5_reduce * c5 more weights per module.
  extra = 16 * sum(r * c for r, c in [(16, 32), (32, 96), (16, 48), (24, 64), (24, 64), (32, 64), (32, 128),
                                       (32, 128), (48, 128)])
  assert _count(branch3_kernel=5) == 6_624_904 + extra


@pytest.mark.parametrize("size", [15, 32, 224])
def test_logit_shapes(size):
  model = create_model("googlenet", num_classes=10)
  variables = abstract_variables(model, (1, size, size, 3))
  chex.assert_shape(jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)),
                    (2, 10))


def test_features():
  model = create_model("googlenet", return_features=True)
  variables = abstract_variables(model, (1, 224, 224, 3))
  features = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert {k: v.shape[1:] for k, v in features.items()} == {
      "stem": (112, 112, 64), "stage1": (56, 56, 192), "stage2": (28, 28, 480), "stage3": (14, 14, 832),
      "stage4": (7, 7, 1024)}


def test_aux_heads_only_in_training():
  model = create_model("googlenet", aux_logits=True, num_classes=7)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  abstract = abstract_variables(model, x.shape)  # init creates the aux parameters although train=False
  assert {"aux1", "aux2"} <= set(abstract["params"])
  train = jax.eval_shape(lambda v: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)},
                                               mutable=["batch_stats"]), abstract)
  outputs, _ = train
  assert isinstance(outputs, GoogLeNetOutputs)
  assert [o.shape for o in outputs] == [(2, 7)] * 3
  chex.assert_shape(jax.eval_shape(model.apply, abstract, x), (2, 7))


def test_transform_input_renormalises_imagenet_inputs_to_half_range():
  """ImageNet mean/std normalised pixels -> (p - 0.5) / 0.5: pixels 0 and 1 land on -1 and 1."""
  mean, std = jnp.array([0.485, 0.456, 0.406]), jnp.array([0.229, 0.224, 0.225])
  pixels = jnp.array([0.0, 1.0, 0.25])[:, None] * jnp.ones(3)
  got = GoogLeNet._transform_input(((pixels - mean) / std).reshape(1, 3, 1, 3))
  chex.assert_trees_all_close(got.reshape(3, 3), (pixels - 0.5) / 0.5, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [(dict(branch3_kernel=7), "branch3_kernel"),
                                          (dict(aux_dropout_rate=1.0), "aux_dropout_rate")])
def test_user_errors(kwargs, match):
  with pytest.raises(UserError, match=match):
    create_model("googlenet", **kwargs)


@pytest.mark.parametrize("name,kwargs", [("googlenet", dict(aux_logits=True))])
def test_bfloat16_compute(name, kwargs):
  check_bfloat16(name, **kwargs)


@pytest.mark.parametrize("name,kwargs", [("googlenet", dict(aux_logits=True))])
def test_bn_axis_name_reaches_the_batchnorms(name, kwargs):
  check_bn_axis_name(name, **kwargs)
