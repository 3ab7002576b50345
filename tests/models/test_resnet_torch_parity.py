"""jaxcnn ResNets with converted torchvision weights compute torchvision's logits.

Random torchvision weights with random BN affine parameters and running
statistics (a fresh BN is the identity in eval mode and would hide a
mis-mapped statistic), eval mode, batch 2 at 64x64, |difference| < 1e-4.
The six deeper/wider models are marked slow (`-m "not slow"` skips them).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn import create_model  # noqa: E402
from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402

FAST = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"]
# Same code paths as FAST at 2-5x the depth or width: most of the run time.
SLOW = ["resnet34", "resnet101", "resnet152", "wide_resnet101_2", "resnext101_32x8d", "resnext101_64x4d"]


def _randomize_batchnorms(model, generator):
  """Random BN affine parameters and running statistics of the right scale.

  Made-up statistics (mean ~0, var ~1) compound over 50-150 random layers
  into logits of 1e6 and more; statistics measured on a batch (mean m,
  variance v) centre channels whose |m| >> sqrt(v), which amplifies float32
  rounding by that ratio. So: measure (m, v) on a random batch, then use
  var = v + m^2 (the second moment) and mean = m * U(0, 1): activations stay
  O(1), the amplification stays <= 1, and every channel has its own numbers.
  """
  with torch.no_grad():
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batchnorms:
      bn.weight.uniform_(0.5, 1.5, generator=generator)
      bn.bias.normal_(0.0, 0.2, generator=generator)
      bn.momentum = 1.0  # the running statistics become those of the next batch
    model.train()
    model(torch.randn(4, 3, 64, 64, generator=generator))
    for bn in batchnorms:
      bn.running_var.add_(bn.running_mean**2)
      bn.running_mean.mul_(torch.rand(bn.num_features, generator=generator))


def _torch_model(name, num_classes=1000):
  torch.manual_seed(0)
  model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
  _randomize_batchnorms(model, torch.Generator().manual_seed(1))
  return model.eval()


def _timm_model(name):
  """timm's layout of `name`: seresnet18/50, and its ResNet-50 with ECA blocks (no registered name)."""
  timm = pytest.importorskip("timm")
  from timm.models.resnet import Bottleneck, ResNet
  torch.manual_seed(0)
  if name == "eca_resnet50":
    model = ResNet(block=Bottleneck, layers=(3, 4, 6, 3), block_args=dict(attn_layer="eca"))
  else:
    model = timm.create_model(name.replace("se_resnet", "seresnet"), pretrained=False)
  with torch.no_grad():  # timm zero-inits nothing here, but randomise the gates' biases too
    for key, p in model.named_parameters():
      if ".se." in key and key.endswith("bias"):
        p.normal_(0.0, 0.5)
  _randomize_batchnorms(model, torch.Generator().manual_seed(1))
  return model.eval()


def _max_abs_diff(name, model=None):
  model = model if model is not None else _torch_model(name)
  images = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    expected = model(torch.from_numpy(images)).numpy()
  variables = torch_to_flax(name, model.state_dict())
  # Op by op: faster here than compiling each network whole, and later models reuse the ops.
  logits = create_model(name).apply(variables, images.transpose(0, 2, 3, 1))
  assert logits.shape == expected.shape
  return float(np.max(np.abs(np.asarray(logits) - expected))), float(np.max(np.abs(expected)))


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_logits_match_torchvision(name):
  diff, scale = _max_abs_diff(name)
  print(f"{name}: max |jax - torch| = {diff:.2e} (max |logit| {scale:.2f})")
  assert scale > 0.1  # the comparison means something
  assert diff < 1e-4


@pytest.mark.parametrize("name", ["se_resnet18", "eca_resnet50", pytest.param("se_resnet50", marks=pytest.mark.slow)])
def test_attention_resnets_match_timm(name):
  diff, scale = _max_abs_diff(name, _timm_model(name))
  print(f"{name}: max |jax - timm| = {diff:.2e} (max |logit| {scale:.2f})")
  assert scale > 0.1
  assert diff < 1e-4


def test_fine_tuned_head_size_is_taken_from_the_state_dict():
  variables = torch_to_flax("resnet18", _torch_model("resnet18", num_classes=7).state_dict())
  assert variables["params"]["fc"]["kernel"].shape == (512, 7)
  assert variables["batch_stats"]["layer2_0"]["downsample_bn"]["var"].shape == (128,)


def test_wrong_architecture_is_a_user_error():
  state_dict = _torch_model("resnet18").state_dict()
  with pytest.raises(UserError, match="does not fit 'resnet34'"):
    torch_to_flax("resnet34", state_dict)
  with pytest.raises(UserError, match="no torchvision/timm weights layout for 'resnet20'"):
    torch_to_flax("resnet20", state_dict)
