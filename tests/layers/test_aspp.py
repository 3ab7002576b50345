"""ASPP, DeepLabHead and FCNHead: torchvision's modules' outputs, shapes, image pooling, train mode."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.layers.aspp import ASPP, DeepLabHead, FCNHead
from jaxcnn.utils import param_count

torch = pytest.importorskip("torch")
segmentation = pytest.importorskip("torchvision.models.segmentation")


def _randomized(module, seed=0):
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for key, p in module.named_parameters():
      if p.ndim == 1:
        p.uniform_(0.5, 1.5, generator=generator) if key.endswith("weight") else p.normal_(0, 0.2, generator=generator)
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0.0, 0.2, generator=generator)
        m.running_var.uniform_(0.5, 1.5, generator=generator)
  return module.eval()


def _convert(prefix, module, put):
  from jaxcnn.convert import _to_numpy
  from jaxcnn.convert._torchvision import FlaxVariables, TorchWeights
  weights = TorchWeights("head", {f"{prefix}.{k}": _to_numpy(v) for k, v in module.state_dict().items()
                                  if not k.endswith("num_batches_tracked")})
  variables = FlaxVariables()
  put(variables, weights)
  assert not weights.unused()
  return {k: v[prefix] for k, v in variables.tree.items()}


def _torch_out(module, x):
  with torch.no_grad():
    return module(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("conv_head", [True, False])
def test_deeplab_head_matches_torchvision(conv_head):
  from jaxcnn.convert.segmentation import aspp, deeplab_head
  torch.manual_seed(0)
  reference = _randomized(segmentation.deeplabv3.DeepLabHead(24, 5, atrous_rates=(1, 2, 3)))
  x = np.random.default_rng(0).normal(size=(2, 9, 13, 24)).astype(np.float32)
  expected = _torch_out(reference, x)
  if conv_head:
    variables = _convert("classifier", reference, deeplab_head)
  else:  # ASPP and a 1x1 classifier only: torch's ASPP followed by the head's last conv
    reference = torch.nn.Sequential(reference[0], reference[4])
    expected = _torch_out(reference, x)
    def put(variables, weights):
      aspp(variables, weights, "classifier.0", ("classifier", "aspp"))
      variables.put(("classifier", "logits"), weights.conv("classifier.1"))
    variables = _convert("classifier", reference, put)
  head = DeepLabHead(5, (1, 2, 3), conv_head=conv_head)
  got = head.apply(variables, jnp.asarray(x))
  assert got.shape == expected.shape == (2, 9, 13, 5)
  np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5, rtol=0)
  assert np.max(np.abs(expected)) > 0.1


def test_fcn_head_matches_torchvision():
  from jaxcnn.convert.segmentation import fcn_head
  torch.manual_seed(0)
  reference = _randomized(segmentation.fcn.FCNHead(32, 3))
  x = np.random.default_rng(1).normal(size=(2, 7, 5, 32)).astype(np.float32)
  variables = _convert("aux_classifier", reference, lambda v, w: fcn_head(v, w, "aux_classifier"))
  got = FCNHead(3).apply(variables, jnp.asarray(x))
  assert variables["params"]["head"]["conv"]["kernel"].shape == (3, 3, 32, 8)  # C // 4 inside
  np.testing.assert_allclose(np.asarray(got), _torch_out(reference, x), atol=2e-5, rtol=0)


def test_aspp_shapes_counts_and_image_pooling():
  aspp = ASPP((6, 12, 18), features=16)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 7, 8)), jnp.float32)
  variables = aspp.init(jax.random.key(0), x)
  # Branches: 1x1 + 3 atrous 3x3 + pooling 1x1 from 8 channels, projection from 5 * 16; BN scale+bias each.
  assert param_count(variables["params"]) == 8 * 16 + 3 * 9 * 8 * 16 + 8 * 16 + 5 * 16 * 16 + 6 * 2 * 16
  # Rates beyond the map (6 > 5 rows) see only padding off-centre: the branch is still the map's size.
  _, state = aspp.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  inter = state["intermediates"]
  for name in ("branch0", "branch1", "branch2", "branch3"):
    assert inter[name]["__call__"][0].shape == (2, 5, 7, 16)
  # Image pooling: one vector per image, the same at every position (a 1x1 map resized bilinearly).
  pooled = inter["pooling"]["__call__"][0]
  assert pooled.shape == (2, 1, 1, 16)
  # Moving content within the image leaves the pooling branch unchanged.
  shifted = jnp.roll(x, 2, axis=2)
  _, state2 = aspp.apply(variables, shifted, capture_intermediates=True, mutable=["intermediates"])
  np.testing.assert_allclose(state2["intermediates"]["pooling"]["__call__"][0], pooled, atol=1e-5)


def test_train_mode_dropout_and_batch_statistics():
  head = DeepLabHead(3, (1, 2, 3), features=8)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 4)), jnp.float32)
  variables = head.init(jax.random.key(0), x)
  run = lambda key: head.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])
  (a, stats), (b, _) = run(jax.random.key(1)), run(jax.random.key(2))
  assert not np.allclose(a, b)  # dropout 0.5 after the projection is active in training
  before = variables["batch_stats"]["aspp"]["project"]["bn"]["mean"]
  assert not np.allclose(stats["batch_stats"]["aspp"]["project"]["bn"]["mean"], before)
  np.testing.assert_array_equal(head.apply(variables, x), head.apply(variables, x))  # eval: deterministic
