"""torchvision's FCN / DeepLabV3 segmentation models and jaxcnn's, with converted weights: same 'out' and 'aux'.

Random torchvision weights, BN affine parameters and running statistics set
from a measured batch (see `randomize_batchnorms`), eval mode, batch 2 at
65x81 (non-square, not a multiple of the output stride), |difference| < 1e-4
on both outputs at the input resolution. ResNet-50 and MobileNetV3 models are in the
fast set; the ResNet-101 ones (same code, deeper) are marked slow. Parameter
counts of all five (with and without the auxiliary head) are torchvision's.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn import create_model  # noqa: E402
from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from jaxcnn.utils import abstract_variables, param_count  # noqa: E402

# sum(p.numel() for p in torchvision.models.segmentation.<name>(aux_loss=...).parameters())
TORCHVISION_PARAMS = {
    ("fcn_resnet50", False): 32_957_013,
    ("fcn_resnet50", True): 35_322_218,
    ("fcn_resnet101", False): 51_949_141,
    ("fcn_resnet101", True): 54_314_346,
    ("deeplabv3_resnet50", False): 39_638_869,
    ("deeplabv3_resnet50", True): 42_004_074,
    ("deeplabv3_resnet101", False): 58_630_997,
    ("deeplabv3_resnet101", True): 60_996_202,
    ("deeplabv3_mobilenet_v3_large", False): 11_025_477,
    ("deeplabv3_mobilenet_v3_large", True): 11_029_328,
}
SIZE = (65, 81)


def randomize_batchnorms(model, generator, size=SIZE):
  """Random BN affine parameters; running statistics measured on a random batch, then made distinct.

  Made-up statistics compound over ~100 layers into huge logits, so each BN
  takes the mean m and variance v of its input on a random batch and keeps
  var = v + m^2, mean = m * U(0, 1): activations stay O(1) and every channel
  has its own numbers (a mis-mapped statistic shows).
  """
  with torch.no_grad():
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batchnorms:
      bn.weight.uniform_(0.5, 1.5, generator=generator)
      bn.bias.normal_(0.0, 0.2, generator=generator)
      bn.momentum = 1.0
    model.train()
    model(torch.randn(4, 3, *size, generator=generator))
    for bn in batchnorms:
      bn.running_var.add_(bn.running_mean**2)
      bn.running_mean.mul_(torch.rand(bn.num_features, generator=generator))
  return model.eval()


def torch_segmentation_model(name, **kwargs):
  torch.manual_seed(0)
  model = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, **kwargs)
  with torch.no_grad():  # the logits biases: nonzero, so a dropped bias shows
    for key, p in model.named_parameters():
      if key.endswith("4.bias"):
        p.normal_(0.0, 0.5)
  return randomize_batchnorms(model, torch.Generator().manual_seed(1))


def max_diffs(name, aux_loss, size=SIZE):
  """{output: (max |jax - torch|, max |torch|)} on one random batch of 2."""
  model = torch_segmentation_model(name, aux_loss=aux_loss)
  images = np.random.default_rng(0).normal(size=(2, 3) + tuple(size)).astype(np.float32)
  with torch.no_grad():
    expected = {k: v.numpy().transpose(0, 2, 3, 1) for k, v in model(torch.from_numpy(images)).items()}
  variables = torch_to_flax(name, model.state_dict())
  # Op by op: faster here than compiling the whole network once.
  got = create_model(name, aux_loss=aux_loss).apply(variables, images.transpose(0, 2, 3, 1))
  assert sorted(got) == sorted(expected)
  result = {}
  for key, value in expected.items():
    assert got[key].shape == value.shape
    result[key] = (float(np.max(np.abs(np.asarray(got[key]) - value))), float(np.max(np.abs(value))))
  return result


@pytest.mark.parametrize("name,aux_loss", sorted(TORCHVISION_PARAMS))
def test_parameter_counts_match_torchvision(name, aux_loss):
  params = abstract_variables(create_model(name, aux_loss=aux_loss), (1, 64, 64, 3))["params"]
  assert param_count(params) == TORCHVISION_PARAMS[(name, aux_loss)]


# fcn_resnet50's FCNHead is deeplabv3_resnet50's aux head, and the dilated MobileNetV3 is checked by the LR-ASPP
# parity test: both stay out of the fast set (they ran before this was marked).
@pytest.mark.parametrize("name", ["deeplabv3_resnet50",
                                  pytest.param("fcn_resnet50", marks=pytest.mark.slow),
                                  pytest.param("deeplabv3_mobilenet_v3_large", marks=pytest.mark.slow),
                                  pytest.param("fcn_resnet101", marks=pytest.mark.slow),
                                  pytest.param("deeplabv3_resnet101", marks=pytest.mark.slow)])
def test_out_and_aux_match_torchvision(name):
  for key, (diff, scale) in max_diffs(name, aux_loss=True).items():
    print(f"{name} {key}: max |jax - torch| = {diff:.2e} (max |logit| {scale:.2f})")
    assert scale > 0.1
    assert diff < 1e-4


def test_converter_reads_head_size_and_checks_layout():
  state_dict = torch_segmentation_model("fcn_resnet50", num_classes=3).state_dict()
  variables = torch_to_flax("fcn_resnet50", state_dict)
  assert variables["params"]["classifier"]["logits"]["kernel"].shape == (1, 1, 512, 3)
  assert "aux_classifier" not in variables["params"]
  with pytest.raises(UserError, match="does not fit 'deeplabv3_resnet50'"):
    torch_to_flax("deeplabv3_resnet50", state_dict)
  with pytest.raises(UserError, match="does not fit 'fcn_resnet101'"):
    torch_to_flax("fcn_resnet101", state_dict)
