"""jaxcnn AlexNet with converted torchvision weights computes torchvision's logits (eval, 64x64, batch 2)."""
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from torchvision_parity import compare_logits, torchvision_model  # noqa: E402


def test_logits_match_torchvision():
  diff, scale = compare_logits("alexnet", torchvision_model("alexnet"), size=64)
  print(f"alexnet: max |jax - torch| = {diff:.2e} (max |logit| {scale:.3f})")
  assert scale > 1e-2
  assert diff < 1e-4


def test_lrn_option_matches_torch_local_response_norm():
  """lrn=True equals torchvision's AlexNet with the paper's LRN after the ReLUs of conv1 and conv2."""
  model = torchvision_model("alexnet")
  for index in (1, 4):  # features.1 and features.4 are those ReLUs; wrapping keeps parameter names
    model.features[index] = torch.nn.Sequential(
        torch.nn.ReLU(), torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0))
  diff, scale = compare_logits("alexnet", model, size=80, lrn=True)
  assert scale > 1e-2
  assert diff < 1e-4


def test_fine_tuned_head_and_wrong_model():
  state_dict = torchvision_model("alexnet", num_classes=7).state_dict()
  assert torch_to_flax("alexnet", state_dict)["params"]["fc3"]["kernel"].shape == (4096, 7)
  with pytest.raises(UserError, match="no torchvision weights layout for 'alexnet_x'"):
    torch_to_flax("alexnet_x", state_dict)
  del state_dict["features.8.bias"]
  with pytest.raises(UserError, match="does not fit 'alexnet'"):
    torch_to_flax("alexnet", state_dict)
