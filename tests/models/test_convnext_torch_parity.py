"""jaxcnn ConvNeXt with converted torchvision weights computes torchvision's logits (eval, 32x32, batch 2).

The randomised layer scales (uniform 0.5-1.5 instead of 1e-6) make every block count in the logits.
"""
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from torchvision_parity import compare_logits, torchvision_model  # noqa: E402

SLOW = ["convnext_small", "convnext_base", "convnext_large"]


@pytest.mark.parametrize("name", ["convnext_tiny"] + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_logits_match_torchvision(name):
  diff, scale = compare_logits(name, torchvision_model(name), size=32)
  print(f"{name}: max |jax - torch| = {diff:.2e} (max |logit| {scale:.3f})")
  assert scale > 1e-2
  assert diff < 1e-4


def test_fine_tuned_head_and_wrong_size():
  state_dict = torchvision_model("convnext_tiny", num_classes=6).state_dict()
  variables = torch_to_flax("convnext_tiny", state_dict)
  assert variables["params"]["classifier"]["kernel"].shape == (768, 6)
  assert variables["params"]["stage3_block8"]["layer_scale"].shape == (384,)
  with pytest.raises(UserError, match="does not fit 'convnext_small'"):
    torch_to_flax("convnext_small", state_dict)
