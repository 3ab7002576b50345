"""Devices, mesh and shardings: data parallel by default, FSDP-style parameter sharding by option.

One 1-D mesh axis 'data' spans every device of every process. The batch is split
along it; parameters are replicated, or (FSDP) each large parameter is split
along its largest dimension divisible by the device count, and XLA inserts the
all-gathers / reduce-scatters. BatchNorm statistics under jit are means over the
global (sharded) batch axis, so they are global by construction.
"""
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def maybe_initialize_distributed():
  """Joins a multi-process run when the launcher (launch.sh or SLURM) asked for one.

  Must run before anything touches a device.
  """
  coordinator = os.environ.get("JAXCNN_COORDINATOR")
  if coordinator:
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ["JAXCNN_NUM_PROCESSES"]),
        process_id=int(os.environ["JAXCNN_PROCESS_ID"]))
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
    jax.distributed.initialize()  # SLURM cluster detection fills in the rest.


def make_mesh(devices=None) -> Mesh:
  """A 1-D 'data' mesh over `devices` (default: every device of every process)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices, (DATA,), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape, num_devices: int, min_size: int) -> P:
  """Shards the largest dimension divisible by the device count; small arrays stay replicated."""
  if num_devices == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % num_devices == 0:
      spec = [None] * len(shape)
      spec[axis] = DATA
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh, fsdp: bool, fsdp_min_size: int = 2**14):
  """NamedShardings for every leaf of the train state."""
  n = mesh.devices.size
  if not fsdp:
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, n, fsdp_min_size)), abstract_state)


def global_batch(local_batch, sharding: NamedSharding):
  """Assembles the global batch from every process's local part (no copy across hosts)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def to_host(tree):
  """Fully replicated device arrays -> numpy (works across processes: reads the local replica)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)
