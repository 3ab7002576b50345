"""DeepLabV3 models: deeplabv3_densenet121 (count from its layer list, parity with a torch composition of
torchvision's dilated DenseNet-121 and ASPP), backbone trees, output strides and rates, dtypes, train mode."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.utils import abstract_variables, param_count


def densenet121_deeplab_count(num_classes):
  """DenseNet-121 without its classifier + ASPP (256 channels, rates irrelevant) + the 1x1 classifier."""
  growth, bn_size, channels, backbone = 32, 4, 64, 7 * 7 * 3 * 64 + 2 * 64   # conv0, norm0
  for i, layers in enumerate((6, 12, 24, 16)):
    for _ in range(layers):
      backbone += 2 * channels + channels * bn_size * growth                    # norm1, conv1 (1x1)
      backbone += 2 * bn_size * growth + 9 * bn_size * growth * growth          # norm2, conv2 (3x3)
      channels += growth
    if i < 3:
      backbone += 2 * channels + channels * (channels // 2)                     # transition norm, conv
      channels //= 2
  backbone += 2 * channels                                                      # norm5
  assert (backbone, channels) == (7_978_856 - 1_025_000, 1024)                  # torchvision's densenet121
  aspp = 1024 * 256 + 3 * 9 * 1024 * 256 + 1024 * 256 + 5 * 256 * 256 + 6 * 2 * 256
  return backbone + aspp + 256 * num_classes + num_classes


@pytest.mark.parametrize("num_classes,total", [(21, 14_892_181), (1, 14_887_041)])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_densenet121_parameter_count(num_classes, total, output_stride):
  assert densenet121_deeplab_count(num_classes) == total
  model = create_model("deeplabv3_densenet121", num_classes=num_classes, output_stride=output_stride)
  assert param_count(abstract_variables(model, (1, 64, 64, 3))["params"]) == total


def _shapes(tree):
  return jax.tree_util.tree_map(lambda leaf: leaf.shape, tree)


@pytest.mark.parametrize("name,backbone,head", [("deeplabv3_densenet121", "densenet121", "classifier"),
                                                ("deeplabv3_resnet50", "resnet50", "fc")])
def test_backbone_tree_is_the_classifiers(name, backbone, head):
  classifier = abstract_variables(create_model(backbone), (1, 64, 64, 3))
  model = abstract_variables(create_model(name, aux_loss=True), (1, 64, 64, 3))
  for collection in ("params", "batch_stats"):
    expected = {k: v for k, v in classifier[collection].items() if k != head}
    assert _shapes(model[collection]["backbone"]) == _shapes(expected)


@pytest.mark.parametrize("output_stride,rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_densenet121_output_stride_and_rates(output_stride, rates):
  model = create_model("deeplabv3_densenet121", num_classes=1, output_stride=output_stride)
  variables = abstract_variables(model, (1, 64, 64, 3))
  x = jax.ShapeDtypeStruct((2, 66, 98, 3), jnp.float32)
  out, state = jax.eval_shape(lambda v, x: model.apply(v, x, capture_intermediates=True,
                                                       mutable=["intermediates"]), variables, x)
  assert {k: v.shape for k, v in out.items()} == {"out": (2, 66, 98, 1)}
  stage4 = state["intermediates"]["backbone"]["__call__"][0]["stage4"]
  assert stage4.shape == (2, 66 // output_stride, 98 // output_stride, 1024)
  from jaxcnn.models.deeplab import default_atrous_rates
  assert default_atrous_rates(output_stride) == rates
  assert "head" not in variables["params"]["classifier"]  # ASPP straight into the 1x1 classifier


def test_bad_options():
  with pytest.raises(UserError, match=r"output_stride=4 is not supported \(allowed: 8, 16, 32\)"):
    create_model("deeplabv3_densenet121", output_stride=4)
  with pytest.raises(UserError, match=r"output_stride=12 is not supported"):
    create_model("deeplabv3_resnet50", output_stride=12)
  with pytest.raises(UserError, match=r"output_stride=8 is not supported \(allowed: 16, 32\)"):
    create_model("deeplabv3_mobilenet_v3_large", output_stride=8)
  with pytest.raises(UserError, match="atrous_rates"):
    create_model("deeplabv3_resnet50", atrous_rates=(0, 6))
  with pytest.raises(UserError, match="num_classes=0"):
    create_model("fcn_resnet50", num_classes=0)
  with pytest.raises(UserError, match="unknown backbone_name 'resnet5'"):
    create_model("deeplabv3_resnet50", backbone_name="resnet5")
  with pytest.raises(UserError, match="cannot dilate"):  # the backbone is built (and checked) at init
    abstract_variables(create_model("deeplabv3_resnet50", backbone_name="resnet18_cifar"), (1, 32, 32, 3))


def test_bfloat16_compute_and_train_mode():
  model = create_model("deeplabv3_resnet50", dtype=jnp.bfloat16, aux_loss=True, output_stride=16)
  variables = abstract_variables(model, (1, 64, 64, 3))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {np.dtype(jnp.float32)}
  x = jax.ShapeDtypeStruct((2, 64, 80, 3), jnp.float32)
  train = lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])
  out, state = jax.eval_shape(train, variables, x)
  assert {k: (v.shape, v.dtype) for k, v in out.items()} == {k: ((2, 64, 80, 21), jnp.bfloat16) for k in ("out", "aux")}
  assert _shapes(state["batch_stats"]) == _shapes(variables["batch_stats"])


def test_densenet121_matches_torch_composition():
  """torchvision's densenet121, dilated as the scheme says (OS16: transition3 unpooled, block 4 dilated 2),
  then torchvision's ASPP (rates 6/12/18) and a 1x1 conv, bilinear resize: the same numbers as jaxcnn's."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  from test_deeplab_torch_parity import randomize_batchnorms
  from jaxcnn.convert import torch_to_flax
  from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights
  from jaxcnn.convert.segmentation import aspp

  class Reference(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.densenet = torchvision.models.densenet121(weights=None)
      self.densenet.features.transition3.pool = torch.nn.Identity()
      for layer in self.densenet.features.denseblock4.children():
        layer.conv2.dilation, layer.conv2.padding = (2, 2), (2, 2)
      self.aspp = torchvision.models.segmentation.deeplabv3.ASPP(1024, (6, 12, 18))
      self.logits = torch.nn.Conv2d(256, 3, 1)

    def forward(self, x):
      y = self.logits(self.aspp(torch.relu(self.densenet.features(x))))
      return torch.nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

  torch.manual_seed(0)
  reference = Reference()
  randomize_batchnorms(reference, torch.Generator().manual_seed(1), size=(48, 80))
  images = np.random.default_rng(0).normal(size=(2, 3, 48, 80)).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(images)).numpy().transpose(0, 2, 3, 1)
  state = {k: v.numpy() for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
  backbone = torch_to_flax("densenet121", {k[len("densenet."):]: v for k, v in state.items() if k.startswith("densenet.")})
  backbone["params"].pop("classifier")
  weights, head = TorchWeights("head", state), FlaxVariables()
  aspp(head, weights, "aspp", ("classifier", "aspp"))
  head.put(("classifier", "logits"), weights.conv("logits"))
  variables = {c: {"backbone": backbone[c], **head.tree[c]} for c in ("params", "batch_stats")}
  got = jax.jit(create_model("deeplabv3_densenet121", num_classes=3).apply)(variables, images.transpose(0, 2, 3, 1))
  diff, scale = float(np.max(np.abs(np.asarray(got["out"]) - expected))), float(np.max(np.abs(expected)))
  print(f"deeplabv3_densenet121 OS16: max |jax - torch| = {diff:.2e} (max |logit| {scale:.3f})")
  assert scale > 0.1
  assert diff < 1e-4


@pytest.mark.parametrize("output_stride,high", [(16, (4, 5)), (32, (2, 3))])
def test_mobilenet_v3_output_strides(output_stride, high):
  model = create_model("deeplabv3_mobilenet_v3_large", aux_loss=True, output_stride=output_stride)
  variables = abstract_variables(model, (1, 64, 64, 3))
  x = jax.ShapeDtypeStruct((1, 64, 80, 3), jnp.float32)
  out, state = jax.eval_shape(lambda v, x: model.apply(v, x, capture_intermediates=True,
                                                       mutable=["intermediates"]), variables, x)
  assert {k: v.shape for k, v in out.items()} == {"out": (1, 64, 80, 21), "aux": (1, 64, 80, 21)}
  features = state["intermediates"]["backbone"]["__call__"][0]
  assert features["high"].shape[1:] == high + (960,) and features["low"].shape[1:] == (8, 10, 40)


@pytest.mark.slow  # an end-to-end learning run; the segmentation task's tests train through the trainer
def test_learns_digit_masks():
  """A small DeepLabV3 (ResNet-18 backbone at output stride 8) fits per-pixel labels of one batch of digits."""
  import optax
  from model_checks import digits_32x32
  images, _ = digits_32x32(16)
  labels = (images[..., 0] > 0).astype(jnp.int32)          # ink vs background
  model = create_model("deeplabv3_resnet50", backbone_name="resnet18", num_classes=2, atrous_rates=(1, 2, 3))
  variables = jax.jit(model.init)(jax.random.key(0), images[:1])
  tx = optax.adam(3e-3)
  params, stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)

  @jax.jit
  def step(params, stats, opt_state, key):
    def loss_fn(params):
      out, new = model.apply({"params": params, "batch_stats": stats}, images, train=True,
                             rngs={"dropout": key}, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(out["out"], labels).mean(), new["batch_stats"]
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  losses = []
  for key in jax.random.split(jax.random.key(1), 25):
    params, stats, opt_state, loss = step(params, stats, opt_state, key)
    losses.append(float(loss))
  ink = float(labels.mean())
  constant = -(ink * np.log(ink) + (1 - ink) * np.log(1 - ink))  # the best loss without looking at pixels
  print(f"ink {ink:.2f}, constant-predictor loss {constant:.3f}, losses {losses[0]:.3f} -> {losses[-1]:.3f}")
  assert losses[-1] < 0.7 * constant and losses[-1] < 0.5 * losses[0], losses
