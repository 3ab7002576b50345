"""Test-wide set-up: 8 host CPU devices so sharding tests run anywhere."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), ".tfds_absent"))

import jax  # noqa: E402  (after XLA_FLAGS)

# XLA:CPU compiles the partitionable threefry ~3x slower; tests only need some deterministic RNG.
jax.config.update("jax_threefry_partitionable", False)
