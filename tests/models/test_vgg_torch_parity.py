"""jaxcnn VGGs with converted torchvision weights compute torchvision's logits (eval, 32x32, batch 2)."""
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from torchvision_parity import compare_logits, torchvision_model  # noqa: E402

FAST = ["vgg11", "vgg11_bn"]
SLOW = ["vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]  # same code, deeper


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_logits_match_torchvision(name):
  diff, scale = compare_logits(name, torchvision_model(name), size=32)
  print(f"{name}: max |jax - torch| = {diff:.2e} (max |logit| {scale:.3f})")
  assert scale > 1e-2
  assert diff < 1e-4


def test_fine_tuned_head_and_wrong_layout():
  state_dict = torchvision_model("vgg11_bn", num_classes=7).state_dict()
  variables = torch_to_flax("vgg11_bn", state_dict)
  assert variables["params"]["fc3"]["kernel"].shape == (4096, 7)
  assert variables["batch_stats"]["block5_bn2"]["var"].shape == (512,)
  with pytest.raises(UserError, match="does not fit 'vgg13_bn'"):
    torch_to_flax("vgg13_bn", state_dict)
  with pytest.raises(UserError, match="does not fit 'vgg11'"):
    torch_to_flax("vgg11", state_dict)  # the BN tensors are left over
