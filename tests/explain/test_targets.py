"""Target layers of the zoo's families, token grids, segmentation / detection scores, exact attributions
of a linear model, and the API's errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import create_model, explain
from jaxcnn.errors import UserError
from jaxcnn.explain import probe


def _abstract(name, size, **kwargs):
  model = create_model(name, **kwargs)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return model, jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x), x


@pytest.mark.parametrize("name, size, expected", [
    ("resnet18", 64, "layer4_1"),                      # the last block of the last stage
    pytest.param("densenet121", 64, "norm5", marks=pytest.mark.slow),  # torchvision's features.norm5
    ("vit_tiny_patch4_32", 32, "blocks_11/norm1"),     # pytorch-grad-cam's ViT choice
    ("maxvit_cifar", 32, "stages_2_1"),
    pytest.param("conformer_cifar", 32, "conv_trans_12", marks=pytest.mark.slow),  # CNN branch ((x, x_t) output)
    ("fcn_resnet50", 64, "backbone/layer4_2"),         # dense models: the backbone's last stage
    ("unet", 32, "dec1"),
])
def test_family_default_layers(name, size, expected):
  model, variables, x = _abstract(name, size)
  assert explain.resolve_layer(model, variables, x, None) == expected


def test_unknown_layer_lists_the_valid_ones():
  model, variables, x = _abstract("resnet18", 64)
  with pytest.raises(UserError, match=r"unknown target layer 'layer5'; did you mean .*\(known: bn1, conv1, "
                                       r"layer1_0, .*layer4_1\)"):
    explain.resolve_layer(model, variables, x, "layer5")
  assert explain.resolve_layer(model, variables, x, "layer4_1/conv2") == "layer4_1/conv2"  # nested ones work


def test_token_grids():
  a = jnp.arange(2 * 66 * 3.0).reshape(2, 66, 3)  # class + distillation tokens, 8 x 8 patches
  grid = probe.to_grid(a, (32, 32))
  assert grid.shape == (2, 8, 8, 3)
  np.testing.assert_array_equal(grid[:, 0, 1], a[:, 3])
  assert probe.to_grid(jnp.zeros((1, 1 + 4 * 8, 5)), (64, 128)).shape == (1, 4, 8, 5)


@pytest.fixture(scope="module")
def tiny_vit():
  model = create_model("vit_tiny_patch4_32", depth=2, width=32, num_heads=2, mlp_dim=64)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), x)
  head = variables["params"]["head"]
  head["kernel"] = jax.random.normal(jax.random.key(2), head["kernel"].shape)  # zero-initialised: no gradient
  return model, variables, x


@pytest.mark.slow
def test_vit_gradcam_is_the_formula_on_the_patch_token_grid(tiny_vit):
  model, variables, x = tiny_vit
  target = explain.Target("class", jnp.array([1, 4]))
  cam = explain.run(model, variables, x, target, method="gradcam")
  a, g, _ = jax.jit(lambda v, x, t: probe.activation_and_grad(model, v, x, t, "blocks_1/norm1"))(variables, x, target)
  a, g = np.asarray(a)[:, 1:].reshape(2, 8, 8, 32), np.asarray(g)[:, 1:].reshape(2, 8, 8, 32)
  expected = np.maximum(np.einsum("bhwc,bc->bhw", a, g.mean((1, 2))), 0)
  assert cam.shape == (2, 8, 8) and np.abs(g).max() > 0
  np.testing.assert_allclose(cam, expected, rtol=1e-5, atol=1e-6)


def test_layer_gradient_matches_finite_differences(tiny_vit):
  """d(score)/d(activation) through the interceptor: a step along it changes the score as predicted."""
  model, variables, x = tiny_vit
  target = explain.Target("class", jnp.array([1, 4]))
  a, g, s = probe.activation_and_grad(model, variables, x, target, "blocks_0")
  step = 1e-2 * g / jnp.linalg.norm(g)

  def shifted(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    return (out[0] + step, *out[1:]) if "/".join(context.module.path) == "blocks_0" else out
  with nn.intercept_methods(shifted):
    s2 = probe.scores(model, variables, x, target)
  np.testing.assert_allclose(jnp.sum(s2 - s), jnp.sum(g * step), rtol=2e-2)


def test_segmentation_pixels_target():
  model = create_model("unet", num_classes=3, base=4, depth=2)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  variables = model.init(jax.random.key(1), x)
  target = explain.Target("pixels", jnp.array([0, 2]))
  layer = explain.resolve_layer(model, variables, x, None)

  @jax.jit
  def run(v, x, t):
    return model.apply(v, x)["out"], probe.activation_and_grad(model, v, x, t, layer)
  logits, (_, g, scores) = run(variables, x, target)
  logits = np.asarray(logits)
  expected = [np.sum(np.where(logits[i].argmax(-1) == c, logits[i, ..., c], 0)) for i, c in enumerate([0, 2])]
  np.testing.assert_allclose(scores, expected, rtol=1e-5)
  assert layer == "dec1" and g.shape == (2, 16, 16, 4) and float(jnp.abs(g).max()) > 0


@pytest.mark.slow
def test_detection_box_target():
  """RetinaNet (ResNet-18 backbone, small heads): the score of the detection matching a reference box."""
  model = create_model("retinanet_resnet50_fpn", backbone_name="resnet18", num_classes=3, fpn_channels=16)
  x = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
  variables = model.init(jax.random.key(1), x)
  bias = variables["params"]["head"]["classification_head"]["cls_logits"]["bias"]
  variables["params"]["head"]["classification_head"]["cls_logits"]["bias"] = bias + 5.0  # confident detections
  det = model.postprocess(model.apply(variables, x), (64, 64))
  assert bool(det["valid"][0, 0])
  target = explain.Target("box", det["labels"][:, 0], det["boxes"][:, 0])
  np.testing.assert_allclose(probe.scores(model, variables, x, target), det["scores"][:, 0], rtol=1e-5)
  cam = explain.run(model, variables, x, target, method="gradcam")
  assert cam.shape == (1, 2, 2) and np.isfinite(cam).all()


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(3, name="fc")(x.reshape(x.shape[0], -1))


def test_input_attributions_of_a_linear_model_are_exact():
  model = Linear()
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 1))
  variables = model.init(jax.random.key(1), x)
  w = np.asarray(variables["params"]["fc"]["kernel"])[:, [2, 0]].T.reshape(2, 6, 6, 1)
  target = explain.Target("class", jnp.array([2, 0]))
  np.testing.assert_allclose(explain.run(model, variables, x, target, method="gradients"), w, rtol=1e-6)
  ig, gap = explain.run(model, variables, x, target, method="ig", steps=3)
  np.testing.assert_allclose(ig, w * np.asarray(x), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gap, 0, atol=1e-5)
  occ = explain.run(model, variables, x, target, method="occlusion", window=1, stride=1)
  np.testing.assert_allclose(occ, (w * np.asarray(x))[..., 0], rtol=1e-5, atol=1e-6)
  occ2 = explain.run(model, variables, x, target, method="occlusion", window=2, stride=2)
  blocks = (w * np.asarray(x))[..., 0].reshape(2, 3, 2, 3, 2).sum((2, 4))
  np.testing.assert_allclose(occ2, np.repeat(np.repeat(blocks, 2, 1), 2, 2), rtol=1e-5, atol=1e-6)
  sg = explain.run(model, variables, x, target, method="smoothgrad", samples=3)
  np.testing.assert_allclose(sg, w, rtol=1e-5)


def test_api_errors():
  model = Linear()
  x = jnp.zeros((1, 4, 4, 1))
  variables = model.init(jax.random.key(0), x)
  target = explain.Target("class", jnp.array([0]))
  with pytest.raises(UserError, match=r"unknown method 'gradcam\+'"):
    explain.run(model, variables, x, target, method="gradcam+")
  with pytest.raises(UserError, match="takes no target layer"):
    explain.run(model, variables, x, target, method="ig", layer="fc")
  with pytest.raises(UserError, match="unknown integration method 'simpson'"):
    explain.run(model, variables, x, target, method="ig", integration="simpson")
  with pytest.raises(UserError, match="no layer with a spatial output"):
    explain.run(model, variables, x, target, method="gradcam")
  with pytest.raises(UserError, match="class 3 is out of range: the model has classes 0..2"):
    explain.check_classes([0, 3], 3)
