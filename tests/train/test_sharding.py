"""Mesh and sharding rules."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxcnn.train import sharding


def test_fsdp_spec_shards_the_largest_divisible_dimension():
  assert sharding.fsdp_spec((3, 3, 64, 128), 8, min_size=1) == P(None, None, None, "data")
  assert sharding.fsdp_spec((120, 84), 8, min_size=1) == P("data", None)   # 84 % 8 != 0, 120 % 8 == 0
  assert sharding.fsdp_spec((5, 7), 8, min_size=1) == P()                   # nothing divides: replicated
  assert sharding.fsdp_spec((1024, 1024), 8, min_size=2**30) == P()         # small: replicated
  assert sharding.fsdp_spec((1024, 1024), 1, min_size=1) == P()             # one device


def test_fsdp_state_is_really_split_across_devices():
  mesh = sharding.make_mesh()
  tree = {"big": jax.ShapeDtypeStruct((256, 512), jnp.float32), "bias": jax.ShapeDtypeStruct((512,), jnp.float32)}
  shardings = sharding.state_shardings(tree, mesh, fsdp=True, fsdp_min_size=1024)
  big = jax.device_put(np.ones((256, 512), np.float32), shardings["big"])
  assert {s.data.shape for s in big.addressable_shards} == {(256, 64)}
  assert shardings["bias"].spec == P()


def test_global_batch_is_split_over_the_data_axis():
  mesh = sharding.make_mesh()
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  g = sharding.global_batch({"x": x}, sharding.batch_sharding(mesh))["x"]
  assert g.shape == (16, 3) and len(g.addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(g), x)
