"""DeconvNet: the paper's parameter count from its layer list, the vgg16_bn backbone tree, sizes, a PyTorch forward.

The PyTorch reference (`_torch_forward`) writes the paper's network with
torch's functional ops on the jaxcnn model's random variables, with torch's
own `max_pool2d(return_indices=True)` switches and `max_unpool2d`, so the
encoder, the switch routing and the mirrored decoder are checked end to end.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import check_bn_axis_name, random_variables
from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.models.deconvnet import deconvnet_variables
from jaxcnn.utils import abstract_variables, param_count

VGG16 = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
DECONV = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, 64))   # stages 5..1


def _deconvnet_count(classes=21, fc_size=7, fc_width=4096, batch_norm=True):
  """Table 1 of the paper, layer by layer: every (de)convolution has a bias and, but the last, a BN."""
  def layer(cin, cout, k):
    return k * k * cin * cout + cout + (2 * cout if batch_norm else 0)
  total, channels = 0, 3
  for convs, width in VGG16:
    for _ in range(convs):
      total += layer(channels, width, 3)
      channels = width
  total += layer(512, fc_width, fc_size) + layer(fc_width, fc_width, 1)    # fc6, fc7
  total += layer(fc_width, 512, fc_size)                                   # deconv-fc6
  channels = 512
  for widths in DECONV:
    for width in widths:
      total += layer(channels, width, 3)
      channels = width
  return total + channels * classes + classes                              # the 1x1 classifier


def test_parameter_count_is_the_papers():
  variables = abstract_variables(create_model("deconvnet"), (1, 224, 224, 3))
  assert param_count(variables["params"]) == _deconvnet_count() == 251_805_653
  assert _deconvnet_count(batch_norm=False) == 251_772_245     # the paper's "252M", BN aside
  small = abstract_variables(create_model("deconvnet", fc_size=1, fc_width=64, num_classes=11), (1, 64, 64, 3))
  assert param_count(small["params"]) == _deconvnet_count(classes=11, fc_size=1, fc_width=64)


def _shapes(tree):
  return jax.tree_util.tree_map(lambda a: a.shape, tree)


def test_backbone_is_vgg16_bn_and_takes_its_weights():
  variables = abstract_variables(create_model("deconvnet"), (1, 224, 224, 3))
  vgg = abstract_variables(create_model("vgg16_bn"), (1, 224, 224, 3))
  features_only = {k: v for k, v in vgg["params"].items() if not k.startswith("fc")}
  assert _shapes(variables["params"]["backbone"]) == _shapes(features_only)
  assert _shapes(variables["batch_stats"]["backbone"]) == _shapes(vgg["batch_stats"])

  loaded = jax.eval_shape(deconvnet_variables, vgg)
  assert _shapes(loaded["params"]["backbone"]) == _shapes(variables["params"]["backbone"])
  for layer in ("fc6", "fc7"):
    assert _shapes(loaded["params"][layer]) == _shapes(variables["params"][layer])
  assert _shapes(loaded["batch_stats"]["backbone"]) == _shapes(variables["batch_stats"]["backbone"])
  with pytest.raises(UserError, match="not vgg16_bn"):
    deconvnet_variables({"params": features_only})


def test_fc6_of_the_loaded_weights_reads_what_vgg_fc1_reads():
  rng = np.random.default_rng(0)
  fc1 = {"kernel": rng.normal(size=(7 * 7 * 512, 8)).astype(np.float32), "bias": np.zeros(8, np.float32)}
  fc2 = {"kernel": rng.normal(size=(8, 8)).astype(np.float32), "bias": np.zeros(8, np.float32)}
  loaded = deconvnet_variables({"params": {"fc1": fc1, "fc2": fc2}, "batch_stats": {}})
  pool5 = rng.normal(size=(1, 7, 7, 512)).astype(np.float32)
  fc6 = jnp.einsum("bhwc,hwco->bo", pool5, loaded["params"]["fc6"]["kernel"])
  np.testing.assert_allclose(fc6, pool5.reshape(1, -1) @ fc1["kernel"], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kwargs,size", [({}, (224, 224)), ({}, (256, 288)),
                                         (dict(fc_size=1, num_classes=1), (32, 64))])
def test_output_is_at_the_input_size(kwargs, size):
  model = create_model("deconvnet", **kwargs)
  variables = abstract_variables(model, (1, 224, 224, 3) if not kwargs else (1, 32, 32, 3))
  out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, *size, 3), jnp.float32))
  assert set(out) == {"out"}
  assert out["out"].shape == (2, *size, kwargs.get("num_classes", 21))


@pytest.mark.parametrize("kwargs,size,match", [
    ({}, (224, 200), r"multiples of 32 and at least 224 .*got 224x200"),
    ({}, (192, 256), r"at least 224"),
    (dict(fc_size=2), (32, 64), r"at least 64"),
])
def test_size_rule(kwargs, size, match):
  model = create_model("deconvnet", fc_width=8, **kwargs)
  with pytest.raises(UserError, match=match):
    jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *size, 3), jnp.float32))


def _torch_forward(variables, x, fc_size):
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  params, stats = variables["params"], variables["batch_stats"]
  t = lambda a: torch.from_numpy(np.array(a))

  def bn(p, s, h):
    return F.relu(F.batch_norm(h, t(s["mean"]), t(s["var"]), t(p["scale"]), t(p["bias"]), False, 0.0, 1e-5))

  def conv(p, h, pad):
    return F.conv2d(h, t(p["kernel"]).permute(3, 2, 0, 1), t(p["bias"]), padding=pad)

  def deconv(p, h, pad):   # flax's HWIO transposed-conv kernel = torch's (in, out, kh, kw) flipped
    return F.conv_transpose2d(h, t(p["kernel"]).flip(0, 1).permute(2, 3, 0, 1), t(p["bias"]), padding=pad)

  h, switches, sizes = t(x).permute(0, 3, 1, 2), {}, {}
  backbone, backbone_stats = params["backbone"], stats["backbone"]
  for stage, (convs, _) in enumerate(VGG16, start=1):
    for i in range(1, convs + 1):
      h = bn(backbone[f"block{stage}_bn{i}"], backbone_stats[f"block{stage}_bn{i}"],
             conv(backbone[f"block{stage}_conv{i}"], h, 1))
    sizes[stage] = h.shape[2:]
    h, switches[stage] = F.max_pool2d(h, 2, 2, return_indices=True)
  h = bn(params["fc6_bn"], stats["fc6_bn"], conv(params["fc6"], h, 0))
  h = bn(params["fc7_bn"], stats["fc7_bn"], conv(params["fc7"], h, 0))
  h = bn(params["deconv_fc6_bn"], stats["deconv_fc6_bn"], deconv(params["deconv_fc6"], h, 0))
  for stage, widths in zip((5, 4, 3, 2, 1), DECONV):
    h = F.max_unpool2d(h, switches[stage], 2, 2, output_size=sizes[stage])
    for i in range(1, len(widths) + 1):
      name = f"deconv{stage}_{i}"
      h = bn(params[f"{name}_bn"], stats[f"{name}_bn"], deconv(params[name], h, 1))
  return conv(params["classifier"], h, 0).permute(0, 2, 3, 1).numpy()


def test_outputs_match_a_pytorch_forward():
  pytest.importorskip("torch")
  model = create_model("deconvnet", fc_size=2, fc_width=32, num_classes=5)
  x = np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype(np.float32)
  variables = random_variables(model, x.shape)
  out = np.asarray(jax.jit(model.apply)(variables, x)["out"])
  expected = _torch_forward(variables, x, fc_size=2)
  assert out.shape == expected.shape == (2, 64, 96, 5)
  diff, scale = float(np.max(np.abs(out - expected))), float(np.max(np.abs(expected)))
  print(f"deconvnet: max |jax - torch| = {diff:.2e} (max |logit| {scale:.3f})")
  assert scale > 1e-2 and diff < 1e-4 * max(1.0, scale)


def test_training_mode_updates_batch_stats():
  model = create_model("deconvnet", fc_size=1, fc_width=16, num_classes=3)
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  variables = random_variables(model, x.shape)
  out, updates = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
  assert out["out"].shape == (2, 32, 32, 3)
  before = variables["batch_stats"]["deconv1_2_bn"]["mean"]
  assert not np.allclose(updates["batch_stats"]["deconv1_2_bn"]["mean"], before)


def test_bfloat16_compute_and_bn_axis_name():
  model = create_model("deconvnet", fc_size=1, fc_width=8, dtype=jnp.bfloat16)
  variables = abstract_variables(model, (1, 32, 32, 3))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {np.dtype(jnp.float32)}
  out, state = jax.eval_shape(lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
                              variables, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert out["out"].dtype == jnp.bfloat16
  assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {np.dtype(jnp.bfloat16)}
  check_bn_axis_name("deconvnet", size=32, fc_size=1, fc_width=8)
