"""jaxcnn GoogLeNet with converted torchvision weights computes torchvision's logits (eval, 32x32, batch 2)."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from jaxcnn import create_model  # noqa: E402
from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from torchvision_parity import compare_logits, torchvision_model  # noqa: E402


def test_logits_match_torchvision():
  model = torchvision_model("googlenet", aux_logits=False, init_weights=True)
  diff, scale = compare_logits("googlenet", model, size=32)
  print(f"googlenet: max |jax - torch| = {diff:.2e} (max |logit| {scale:.3f})")
  assert scale > 1e-3
  assert diff < 1e-4


def test_transform_input_and_aux_heads_match_torchvision():
  """transform_input=True in eval; the auxiliary heads in training mode (dropout off)."""
  model = torchvision_model("googlenet", aux_logits=True, transform_input=True, init_weights=True,
                            dropout=0.0, dropout_aux=0.0)
  images = np.random.default_rng(1).normal(size=(2, 3, 48, 48)).astype(np.float32)
  variables = torch_to_flax("googlenet", model.state_dict())
  ours = create_model("googlenet", aux_logits=True, transform_input=True, dropout_rate=0.0, aux_dropout_rate=0.0)
  with torch.no_grad():
    expected = model(torch.from_numpy(images)).numpy()
  logits = jax.jit(ours.apply)(variables, images.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(logits, expected, atol=1e-4)

  model.train()
  with torch.no_grad():
    expected_train = model(torch.from_numpy(images))
  outputs, _ = jax.jit(lambda v, x: ours.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, images.transpose(0, 2, 3, 1))
  for ours_out, theirs in zip(outputs, expected_train):  # logits, aux_logits2, aux_logits1
    np.testing.assert_allclose(ours_out, theirs.numpy(), atol=1e-4)


def test_fine_tuned_head_and_wrong_model():
  variables = torch_to_flax("googlenet", torchvision_model("googlenet", aux_logits=False, init_weights=True,
                                                           num_classes=5).state_dict())
  assert variables["params"]["fc"]["kernel"].shape == (1024, 5)
  assert "aux1" not in variables["params"]
  with pytest.raises(UserError, match="does not fit 'googlenet'"):
    torch_to_flax("googlenet", torchvision_model("mobilenet_v2").state_dict())
