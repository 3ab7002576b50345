"""DeiT's distilled ViTs: timm's parameter counts and timm's outputs from converted random weights (both heads,
and their mean at eval)."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from timm.models.deit import VisionTransformerDistilled  # noqa: E402

from jaxcnn import create_model  # noqa: E402
from jaxcnn.convert.vit import convert_timm_vit  # noqa: E402
from jaxcnn.utils import abstract_variables, param_count  # noqa: E402
from tests.models.test_vit_timm_parity import randomized  # noqa: E402


@pytest.mark.parametrize("size,count", [("tiny", 5_910_800), ("small", 22_436_432), ("base", 87_338_192)])
def test_parameter_counts_are_timms(size, count):
  variables = abstract_variables(create_model(f"deit_{size}_distilled_patch16_224"), (1, 224, 224, 3))
  assert param_count(variables["params"]) == count


def test_converted_weights_give_timms_heads_and_their_mean():
  torch_model = randomized(VisionTransformerDistilled(img_size=32, patch_size=4, embed_dim=32, depth=2,
                                                      num_heads=2, mlp_ratio=2.0, num_classes=5))
  x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
  small = dict(width=32, depth=2, num_heads=2, mlp_dim=64)
  variables = convert_timm_vit(torch_model.state_dict(), "deit_tiny_distilled_patch4_32", **small)
  model = create_model("deit_tiny_distilled_patch4_32", num_classes=5, **small)
  nhwc = x.transpose(0, 2, 3, 1)
  with torch.no_grad():
    want_mean = torch_model(torch.from_numpy(x)).numpy()
    torch_model.set_distilled_training(True)
    torch_model.train()  # dropout and drop path are 0: the heads are deterministic
    want_cls, want_dist = (t.numpy() for t in torch_model(torch.from_numpy(x)))
  got_cls, got_dist = model.apply(variables, nhwc, heads=True)
  np.testing.assert_allclose(got_cls, want_cls, atol=1e-4)
  np.testing.assert_allclose(got_dist, want_dist, atol=1e-4)
  np.testing.assert_allclose(model.apply(variables, nhwc), want_mean, atol=1e-4)
  assert not np.allclose(want_cls, want_dist, atol=1e-3)  # the two heads are different functions
