"""jaxcnn EfficientNets with converted torchvision weights compute torchvision's logits (eval, 32x32, batch 2).

B0 covers B0-B4's code; B5 adds BatchNorm eps 1e-3 (B5-B7), in the slow set with the rest.
"""
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from torchvision_parity import compare_logits, torchvision_model  # noqa: E402

SLOW = [f"efficientnet_b{i}" for i in range(1, 8)]


@pytest.mark.parametrize("name", ["efficientnet_b0"] + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_logits_match_torchvision(name):
  diff, scale = compare_logits(name, torchvision_model(name), size=32)
  print(f"{name}: max |jax - torch| = {diff:.2e} (max |logit| {scale:.3f})")
  assert scale > 1e-2
  assert diff < 1e-4


def test_fine_tuned_head_and_wrong_variant():
  state_dict = torchvision_model("efficientnet_b0", num_classes=4).state_dict()
  variables = torch_to_flax("efficientnet_b0", state_dict)
  assert variables["params"]["classifier"]["kernel"].shape == (1280, 4)
  assert variables["params"]["stage6_block3"]["se"]["fc1"]["kernel"].shape == (1, 1, 1152, 48)
  with pytest.raises(UserError, match="does not fit 'efficientnet_b1'"):
    torch_to_flax("efficientnet_b1", state_dict)
