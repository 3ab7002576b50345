"""resize_bilinear / resize_nearest equal PyTorch's F.interpolate (align_corners=False / nearest), up and down."""
import numpy as np
import pytest

import jax.numpy as jnp
from jaxcnn.layers import resize_bilinear, resize_nearest

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.mark.parametrize("size", [(28, 36), (16, 20), (4, 5), (13, 5)])
def test_resize_matches_torch_interpolate(size):
  x = np.random.default_rng(0).standard_normal((2, 7, 9, 3)).astype(np.float32)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2)
  bilinear = F.interpolate(xt, size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
  nearest = F.interpolate(xt, size=size, mode="nearest").permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(resize_bilinear(jnp.asarray(x), size)), bilinear, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(resize_nearest(jnp.asarray(x), size)), nearest)


def test_same_size_is_identity():
  x = jnp.arange(24.0).reshape(1, 2, 3, 4)
  assert resize_bilinear(x, (2, 3)) is x
  assert resize_nearest(x, (2, 3)) is x
