"""U-Net / Attention U-Net: parameter counts from the layer list, outputs against a PyTorch forward, sizes, learning.

The PyTorch reference (`_torch_forward`) is the paper's network written with
torch's functional ops (conv2d, conv_transpose2d, max_pool2d, centre crop,
concatenation, the attention gate's formula) on the jaxcnn model's random
variables, so the layer order, the crop, the concatenation order and the
transposed-convolution layout are checked, not only shapes.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import check_bn_axis_name, random_variables
from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.utils import abstract_variables, param_count


def _unet_count(in_channels=3, classes=2, base=64, depth=4, batch_norm=False, attention=False):
  """Parameters of the paper's layer list: per level two 3x3 convs, 2x2 up-convs, a 1x1 classifier."""
  def conv3(cin, cout):
    return 9 * cin * cout + (2 * cout if batch_norm else cout)   # BN scale + bias replace the conv bias
  widths = [base * 2 ** level for level in range(depth + 1)]
  total, channels = 0, in_channels
  for width in widths:                                          # contracting path and bottleneck
    total += conv3(channels, width) + conv3(width, width)
    channels = width
  for level, width in reversed(list(enumerate(widths[:-1], start=1))):
    total += 4 * channels * width + width                       # 2x2 up-convolution, with bias
    if attention and level >= 2:
      inter = width // 2
      total += 4 * width * inter                                # theta: 2x2/2, no bias
      total += channels * inter + inter                         # phi on the gating signal
      total += inter + 1                                        # psi
      total += width * width + width + 2 * width                # output 1x1 conv + BN
    total += conv3(2 * width, width) + conv3(width, width)
    channels = width
  return total + channels * classes + classes


def _count(name, input_shape, **kwargs):
  return param_count(abstract_variables(create_model(name, **kwargs), input_shape)["params"])


def test_unet_parameter_count_is_the_papers_layer_list():
  # 3 input channels, 2 classes (the paper's), biases, no BN: what "31.0M" U-Nets count.
  assert _count("unet", (1, 64, 64, 3)) == _unet_count() == 31_031_810
  # One input channel (the paper's grayscale cell images); padding does not change the count.
  assert _count("unet", (1, 572, 572, 1), padding="valid") == _unet_count(in_channels=1) == 31_030_658
  assert _count("unet", (1, 64, 64, 3), batch_norm=True) == _unet_count(batch_norm=True) == 31_037_698
  assert _count("unet", (1, 32, 32, 3), base=8, depth=3, num_classes=11) == _unet_count(
      base=8, depth=3, classes=11)


def test_attention_unet_parameter_count():
  assert _count("attention_unet", (1, 64, 64, 3)) == _unet_count(batch_norm=True, attention=True) == 32_417_541
  assert _count("attention_unet", (1, 32, 32, 3), base=8, depth=3) == _unet_count(
      base=8, depth=3, batch_norm=True, attention=True)


@pytest.mark.parametrize("name,kwargs,size,out", [
    ("unet", {}, (64, 96), (64, 96)),
    ("unet", dict(padding="valid"), (572, 572), (388, 388)),   # the paper's Fig. 1
    ("unet", dict(padding="valid"), (188, 204), (4, 20)),
    ("attention_unet", dict(num_classes=1), (48, 80), (48, 80)),
])
def test_output_sizes(name, kwargs, size, out):
  model = create_model(name, base=4, **kwargs)
  variables = abstract_variables(model, (1, *size, 3))
  result = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, *size, 3), jnp.float32))
  assert set(result) == {"out"}
  assert result["out"].shape == (2, *out, kwargs.get("num_classes", 2))


@pytest.mark.parametrize("kwargs,size,match", [
    ({}, (60, 64), r"divisible by 16, got 60x64"),
    (dict(depth=3), (36, 32), r"divisible by 8"),
    (dict(padding="valid"), (196, 188), r"188 \+ 16k .*572"),
    (dict(padding="valid"), (172, 172), r"188 \+ 16k"),
])
def test_size_rules(kwargs, size, match):
  model = create_model("unet", base=2, **kwargs)
  with pytest.raises(UserError, match=match):
    jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *size, 3), jnp.float32))


@pytest.mark.parametrize("kwargs,match", [(dict(padding="reflect"), "padding"), (dict(base=0), "base"),
                                          (dict(drop_rate=1.0), "drop_rate")])
def test_option_errors(kwargs, match):
  with pytest.raises(UserError, match=match):
    create_model("unet", **kwargs)


# ----------------------------------------------------------------------------- PyTorch reference

def _torch_forward(variables, x, depth, padding, batch_norm, attention):
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  params, stats = variables["params"], variables.get("batch_stats", {})
  t = lambda a: torch.from_numpy(np.array(a))

  def conv(p, h, pad=0, stride=1):
    bias = t(p["bias"]) if "bias" in p else None
    return F.conv2d(h, t(p["kernel"]).permute(3, 2, 0, 1), bias, stride=stride, padding=pad)

  def bn(p, s, h):
    return F.batch_norm(h, t(s["mean"]), t(s["var"]), t(p["scale"]), t(p["bias"]), False, 0.0, 1e-5)

  def double(name, h):
    for i in (1, 2):
      h = conv(params[name][f"conv{i}"], h, pad=1 if padding == "same" else 0)
      if batch_norm:
        h = bn(params[name][f"bn{i}"], stats[name][f"bn{i}"], h)
      h = F.relu(h)
    return h

  def gate(name, skip, g):
    p, s = params[name], stats[name]
    theta = conv(p["theta"], skip, stride=2)
    alpha = torch.sigmoid(conv(p["psi"], F.relu(theta + conv(p["phi"], g))))
    alpha = F.interpolate(alpha, size=skip.shape[2:], mode="bilinear", align_corners=False)
    return bn(p["out_bn"], s["out_bn"], conv(p["out_conv"], alpha * skip))

  h, skips = t(x).permute(0, 3, 1, 2), []
  for level in range(1, depth + 2):
    h = double(f"enc{level}", h)
    if level <= depth:
      skips.append(h)
      h = F.max_pool2d(h, 2)
  for level in range(depth, 0, -1):
    up_kernel = t(params[f"up{level}"]["kernel"]).flip(0, 1).permute(2, 3, 0, 1)  # HWIO -> torch's (in, out, kh, kw)
    up = F.conv_transpose2d(h, up_kernel, t(params[f"up{level}"]["bias"]), stride=2)
    skip = skips[level - 1]
    top, left = (skip.shape[2] - up.shape[2]) // 2, (skip.shape[3] - up.shape[3]) // 2
    skip = skip[:, :, top:top + up.shape[2], left:left + up.shape[3]]
    if attention and level >= 2:
      skip = gate(f"gate{level}", skip, h)
    h = double(f"dec{level}", torch.cat([skip, up], dim=1))
  return conv(params["classifier"], h).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("name,kwargs,size", [
    ("unet", dict(padding="valid", base=4), (188, 204)),
    ("unet", dict(batch_norm=True, base=4, num_classes=3), (48, 64)),
    ("attention_unet", dict(base=4, depth=3), (40, 56)),
])
def test_outputs_match_a_pytorch_forward(name, kwargs, size):
  pytest.importorskip("torch")
  model = create_model(name, **kwargs)
  x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
  variables = random_variables(model, x.shape)
  out = jax.jit(model.apply)(variables, x)["out"]
  expected = _torch_forward(variables, x, model.depth, model.padding, model.batch_norm, model.attention)
  assert out.shape == expected.shape
  diff, scale = float(np.max(np.abs(np.asarray(out) - expected))), float(np.max(np.abs(expected)))
  print(f"{name} {kwargs}: max |jax - torch| = {diff:.2e} (max |logit| {scale:.3f})")
  assert scale > 1e-2 and diff < 1e-4 * max(1.0, scale)


def test_attention_gates_change_the_output():
  model = create_model("attention_unet", base=4, depth=2)
  x = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype(np.float32)
  variables = random_variables(model, x.shape)
  shut = jax.tree_util.tree_map(lambda a: a, variables)
  shut["params"]["gate2"]["psi"]["bias"] = jnp.full((1,), -1e4)   # alpha = 0: the skip carries only BN's shift
  a, b = model.apply(variables, x)["out"], model.apply(shut, x)["out"]
  assert not np.allclose(a, b, atol=1e-3)


def test_dropout_only_in_training():
  model = create_model("unet", base=4, depth=2, drop_rate=0.5)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype(np.float32))
  variables = random_variables(model, x.shape)
  train = lambda key: model.apply(variables, x, train=True, rngs={"dropout": key})["out"]
  assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))
  chex.assert_trees_all_close(model.apply(variables, x)["out"],
                              create_model("unet", base=4, depth=2).apply(variables, x)["out"])


def test_small_unet_learns_digit_masks():
  """A base-8 U-Net fits the foreground masks of 16 digits (pixel > 0) within 40 Adam steps."""
  import optax
  from model_checks import digits_32x32
  images, _ = digits_32x32(16)
  masks = (images[..., 0] > -0.5).astype(jnp.int32)
  model = create_model("unet", base=8, depth=2)
  params = model.init(jax.random.key(0), images[:1])["params"]
  optimizer = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      logits = model.apply({"params": p}, images)["out"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, masks).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, losses = optimizer.init(params), []
  for _ in range(40):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  print(f"unet digit masks: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
  assert losses[-1] < 0.3 * losses[0]


def _check_bfloat16(model, size):
  variables = abstract_variables(model, (1, size, size, 3))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {np.dtype(jnp.float32)}
  out, state = jax.eval_shape(lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
                              variables, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  assert out["out"].dtype == jnp.bfloat16
  assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {np.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("name", ["unet", "attention_unet"])
def test_bfloat16_compute_and_bn_axis_name(name):
  _check_bfloat16(create_model(name, base=4, dtype=jnp.bfloat16), 32)
  check_bn_axis_name(name, size=32, base=4, batch_norm=True)
