"""jaxcnn MobileNetV2 with converted torchvision weights computes torchvision's logits (eval, 32x32, batch 2)."""
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from torchvision_parity import compare_logits, torchvision_model  # noqa: E402


def test_logits_match_torchvision():
  diff, scale = compare_logits("mobilenet_v2", torchvision_model("mobilenet_v2"), size=32)
  print(f"mobilenet_v2: max |jax - torch| = {diff:.2e} (max |logit| {scale:.3f})")
  assert scale > 1e-2
  assert diff < 1e-4


def test_fine_tuned_head_and_wrong_width():
  variables = torch_to_flax("mobilenet_v2", torchvision_model("mobilenet_v2", num_classes=3).state_dict())
  assert variables["params"]["classifier"]["kernel"].shape == (1280, 3)
  assert variables["batch_stats"]["block17"]["project"]["bn"]["mean"].shape == (320,)
  with pytest.raises(UserError, match="does not fit 'mobilenet_v2'"):
    torch_to_flax("mobilenet_v2", torchvision_model("mobilenet_v2", width_mult=0.5).state_dict())
  with pytest.raises(UserError, match="no torchvision weights layout for 'mobilenet_v2x'"):
    torch_to_flax("mobilenet_v2x", {})
