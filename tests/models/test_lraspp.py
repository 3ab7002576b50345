"""lraspp_mobilenet_v3_large: torchvision's parameter counts, the segmentation contract (shapes at the input
size, the backbone's variables), output strides, options refused, train mode."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import random_variables
from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.utils import abstract_variables, param_count

NAME = "lraspp_mobilenet_v3_large"


@pytest.mark.parametrize("kwargs,count", [({}, 3_221_538), (dict(num_classes=1), 3_218_138),
                                          (dict(output_stride=32), 3_221_538)])
def test_counts_are_torchvisions(kwargs, count):
  # torchvision.models.segmentation.lraspp_mobilenet_v3_large(num_classes=21 / 1); dilation adds nothing
  assert param_count(abstract_variables(create_model(NAME, **kwargs), (1, 64, 64, 3))["params"]) == count


def test_backbone_variables_are_mobilenet_v3_larges_minus_classifier():
  seg = abstract_variables(create_model(NAME), (1, 64, 64, 3))
  cls = abstract_variables(create_model("mobilenet_v3_large"), (1, 64, 64, 3))
  shapes = lambda tree: jax.tree.map(lambda v: v.shape, tree)
  assert shapes(seg["params"]["backbone"]) == shapes({k: v for k, v in cls["params"].items() if k != "classifier"})
  assert shapes(seg["batch_stats"]["backbone"]) == shapes(cls["batch_stats"])
  assert set(seg["params"]) == {"backbone", "classifier"}
  assert set(seg["params"]["classifier"]) == {"cbr", "scale", "low_classifier", "high_classifier"}


@pytest.mark.parametrize("size", [(65, 81), (32, 48)])
@pytest.mark.parametrize("num_classes", [21, 1])
def test_out_at_the_input_size(size, num_classes):
  model = create_model(NAME, num_classes=num_classes)
  variables = abstract_variables(model, (1, 64, 64, 3))
  out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2,) + size + (3,), jnp.float32))
  assert set(out) == {"out"}
  assert out["out"].shape == (2,) + size + (num_classes,)


def test_bfloat16_compute_keeps_float32_variables():
  model = create_model(NAME, dtype=jnp.bfloat16)
  variables = abstract_variables(model, (1, 64, 64, 3))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {np.dtype(jnp.float32)}
  out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32))
  assert out["out"].dtype == jnp.bfloat16


def test_output_stride_32_leaves_the_backbone_undilated():
  """At 16 the 'high' map is twice as large as at 32; at both the head resizes to the input."""
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  sixteen, thirty_two = create_model(NAME, num_classes=3), create_model(NAME, num_classes=3, output_stride=32)
  variables = abstract_variables(sixteen, x.shape)
  captured = {}
  for name, model in (("16", sixteen), ("32", thirty_two)):
    out, state = jax.eval_shape(lambda v, x, m=model: m.apply(v, x, capture_intermediates=True,
                                                              mutable=["intermediates"]), variables, x)
    captured[name] = state["intermediates"]["backbone"]["last_conv"]["__call__"][0].shape
    assert out["out"].shape == (1, 64, 64, 3)
  assert captured == {"16": (1, 4, 4, 960), "32": (1, 2, 2, 960)}


def test_train_mode_updates_head_and_backbone_batch_stats():
  model = create_model(NAME, num_classes=2)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = random_variables(model, x.shape)
  out, state = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
  assert out["out"].shape == (2, 32, 32, 2)
  for path in (("classifier", "cbr", "bn"), ("backbone", "last_conv", "bn")):
    new, old = state["batch_stats"], variables["batch_stats"]
    for key in path:
      new, old = new[key], old[key]
    assert not np.allclose(new["mean"], old["mean"])


@pytest.mark.parametrize("kwargs,match", [(dict(output_stride=8), "output_stride=8 .*allowed: 16, 32"),
                                          (dict(aux_loss=True), "aux_loss=True"),
                                          (dict(num_classes=0), "num_classes=0")])
def test_user_errors(kwargs, match):
  with pytest.raises(UserError, match=match):
    create_model(NAME, **kwargs)
