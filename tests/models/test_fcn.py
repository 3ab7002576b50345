"""The paper's FCN-32s/16s/8s on VGG-16: parameter counts from the layer list, shapes at any size,
upsampling alignment, the VGG-16 backbone tree and the convolutionalized classifier.

Counts: the layer list of the paper's Caffe nets (voc-fcn{32,16,8}s/net.py,
shelhamer/fcn.berkeleyvision.org) summed by hand below; FCN-32s's total is
the paper's Table 1 "134M". The fixed final upsampling (lr_mult 0 in Caffe)
is not a parameter unless `learn_final_upsampling=True`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.layers import ConvTranspose
from jaxcnn.models.fcn import (_interpolation_matrix, bilinear_kernel_1d, bilinear_transpose_init,
                               fcn_vgg16_variables)
from jaxcnn.utils import abstract_variables, param_count

VGG16_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
               (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def expected_count(stride, classes=21, learn_final=False):
  count = sum(9 * cin * cout + cout for cin, cout in VGG16_CONVS)   # 14,714,688
  count += 7 * 7 * 512 * 4096 + 4096                                 # fc6 as a 7x7 conv
  count += 4096 * 4096 + 4096                                        # fc7 as a 1x1 conv
  count += 4096 * classes + classes                                  # score_fr
  if stride <= 16:
    count += 512 * classes + classes + classes * classes * 4 * 4     # score_pool4, upscore2
  if stride == 8:
    count += 256 * classes + classes + classes * classes * 4 * 4     # score_pool3, upscore_pool4
  if learn_final:
    count += classes * classes * (2 * stride) ** 2                   # upscore
  return count


@pytest.mark.parametrize("name,stride,total", [("fcn32s", 32, 134_346_581), ("fcn16s", 16, 134_364_410),
                                               ("fcn8s", 8, 134_376_863)])
def test_parameter_counts(name, stride, total):
  assert expected_count(stride) == total
  assert round(expected_count(32) / 1e6) == 134  # the paper's Table 1
  params = abstract_variables(create_model(name), (1, 64, 64, 3))["params"]
  assert param_count(params) == total
  params = abstract_variables(create_model(name, num_classes=1, learn_final_upsampling=True), (1, 64, 64, 3))
  assert param_count(params["params"]) == expected_count(stride, classes=1, learn_final=True)


def _shapes(tree):
  return jax.tree_util.tree_map(lambda leaf: leaf.shape, tree)


def test_backbone_is_vgg16_without_its_classifier():
  vgg = abstract_variables(create_model("vgg16"), (1, 64, 64, 3))["params"]
  fcn = abstract_variables(create_model("fcn8s"), (1, 64, 64, 3))["params"]
  assert _shapes(fcn["backbone"]) == _shapes({k: v for k, v in vgg.items() if not k.startswith("fc")})


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
@pytest.mark.parametrize("size", [(1, 1), (17, 50), (65, 81), (96, 64)])
def test_output_has_the_input_size(name, size):
  model = create_model(name, num_classes=3)
  variables = abstract_variables(model, (1, 32, 32, 3))
  out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2,) + size + (3,), jnp.float32))
  assert {k: v.shape for k, v in out.items()} == {"out": (2,) + size + (3,)}


def test_bilinear_filter_is_caffes():
  np.testing.assert_allclose(bilinear_kernel_1d(4), [0.25, 0.75, 0.75, 0.25])
  np.testing.assert_allclose(bilinear_kernel_1d(3), [0.5, 1.0, 0.5])
  kernel = np.asarray(bilinear_transpose_init(None, (4, 4, 3, 3)))
  np.testing.assert_allclose(kernel[:, :, 1, 1], np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]))
  assert np.all(kernel[:, :, 0, 1] == 0)  # no mixing between classes


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_final_upsampling_puts_values_at_their_pixel_centres(factor):
  # A coarse cell i covers pixels [factor * i, factor * (i + 1)): its centre is factor * i + (factor - 1) / 2.
  # Upsampling a linear ramp must give the same ramp at every pixel between the first and last centres.
  n = 5
  matrix = _interpolation_matrix(n, factor, n * factor)
  centres = factor * np.arange(n) + (factor - 1) / 2
  pixels = np.arange(n * factor)
  inside = (pixels >= centres[0]) & (pixels <= centres[-1])
  np.testing.assert_allclose((matrix @ np.arange(n, dtype=np.float32))[inside],
                             ((pixels - (factor - 1) / 2) / factor)[inside], atol=1e-6)


def test_learned_2x_upsampling_starts_aligned():
  # upscore2 / upscore_pool4: a kernel-4 stride-2 transposed conv, cropped by 1, lands on the finer map's cells.
  n = 6
  ramp = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32)[None, :, None, None], (1, n, n, 2))
  layer = ConvTranspose(2, (4, 4), strides=(2, 2), padding="VALID", use_bias=False,
                        kernel_init=bilinear_transpose_init)
  up = layer.apply(layer.init(jax.random.key(0), ramp), ramp)[:, 1:1 + 2 * n, 1:1 + 2 * n]
  rows = np.arange(2 * n)
  inside = (rows >= 0.5) & (rows <= 2 * n - 1.5)
  np.testing.assert_allclose(np.asarray(up[0, :, 3, 0])[inside], ((rows - 0.5) / 2)[inside], atol=1e-6)


@pytest.mark.slow  # whole FCN-8s twice at a 65x81 input
def test_fixed_and_learned_final_upsampling_agree_at_initialisation():
  from model_checks import random_variables
  learned = create_model("fcn8s", num_classes=3, learn_final_upsampling=True)
  variables = random_variables(learned, (1, 36, 44, 3))
  upscore = variables["params"]["upscore"]
  variables["params"]["upscore"] = {"kernel": bilinear_transpose_init(None, upscore["kernel"].shape)}
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 36, 44, 3)), jnp.float32)
  with_layer = learned.apply(variables, x)["out"]
  params = {k: v for k, v in variables["params"].items() if k != "upscore"}
  fixed = create_model("fcn8s", num_classes=3).apply({"params": params}, x)["out"]
  assert fixed.shape == (1, 36, 44, 3) and np.all(np.isfinite(fixed))
  assert float(jnp.std(fixed)) > 1e-3
  np.testing.assert_allclose(np.asarray(with_layer), np.asarray(fixed), rtol=1e-5, atol=1e-5)


def test_convolutionalized_classifier():
  # fc1 reads the 7x7x512 map flattened in NHWC order; as a 7x7 conv centred on that map it gives the same numbers.
  rng = np.random.default_rng(0)
  features = rng.normal(size=(1, 7, 7, 512)).astype(np.float32)
  fc1 = {"kernel": rng.normal(size=(7 * 7 * 512, 4)).astype(np.float32), "bias": rng.normal(size=4).astype(np.float32)}
  fc2 = {"kernel": rng.normal(size=(4, 4)).astype(np.float32), "bias": np.zeros(4, np.float32)}
  out = fcn_vgg16_variables({"params": {"block1_conv1": {}, "fc1": fc1, "fc2": fc2, "fc3": {}}})["params"]
  assert set(out) == {"backbone", "fc6", "fc7"} and set(out["backbone"]) == {"block1_conv1"}
  conv = jax.lax.conv_general_dilated(features, out["fc6"]["kernel"], (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))[0, 0, 0] + out["fc6"]["bias"]
  np.testing.assert_allclose(conv, features.reshape(1, -1)[0] @ fc1["kernel"] + fc1["bias"], rtol=1e-4)
  assert out["fc7"]["kernel"].shape == (1, 1, 4, 4)
  # The whole vgg16 tree fits an FCN's.
  vgg = abstract_variables(create_model("vgg16"), (1, 32, 32, 3))
  converted = jax.eval_shape(fcn_vgg16_variables, vgg)["params"]
  fcn = abstract_variables(create_model("fcn32s"), (1, 32, 32, 3))["params"]
  assert _shapes(converted) == _shapes({k: fcn[k] for k in ("backbone", "fc6", "fc7")})
  with pytest.raises(UserError, match="not vgg16 classification weights"):
    fcn_vgg16_variables({"params": {"block1_conv1": {}}})


def test_bad_options():
  with pytest.raises(UserError, match=r"stride=4 .*allowed: 8, 16, 32"):
    create_model("fcn8s", stride=4)
  with pytest.raises(UserError, match="num_classes=0"):
    create_model("fcn8s", num_classes=0)
