"""Keeps XLA:CPU's per-step scratch memory mapped from one step to the next (glibc malloc settings).

XLA:CPU allocates each execution's temporaries as one block with malloc
(1.3 GB for a MobileNetV2 train step at batch 16, 224x224; 2.1 GB for
ViT-Tiny at batch 128, 32x32). glibc serves a block that large with a fresh
`mmap` and gives it back with `munmap` when the step ends, so every step
first-touches all of its pages again: 300k-500k page faults per step, 0.8-1.5
CPU-seconds in the kernel (measured: `ru_minflt`, `strace`), about 40% of a
MobileNetV2 step's CPU time. PyTorch's tensors stay under glibc's mmap
threshold and are reused from the heap.

`configure()` makes glibc take such blocks from the heap and keep them:
no mmap (`M_MMAP_MAX=0`), no trimming (`M_TRIM_THRESHOLD=-1`), and one arena
(`M_ARENA_MAX=1`; blocks over 64 MB cannot live in the per-thread arenas of
XLA's worker threads). The heap then stays at the largest step's size, which
the process would have touched anyway. `import jaxcnn` calls it when the
process will run on CPU: glibc (Linux), no accelerator plugin installed
(`jax_plugins`, `libtpu`), `JAX_PLATFORMS` naming no accelerator, and
`JAXCNN_CPU_MALLOC` not `0`. It must run before JAX starts its threads.
"""
import ctypes
import importlib.util
import os

ENV_VAR = "JAXCNN_CPU_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_ACCELERATORS = ("cuda", "gpu", "rocm", "tpu")


def cpu_only_process() -> bool:
  """True when this process will not find a GPU/TPU backend (checked without starting JAX)."""
  platforms = os.environ.get("JAX_PLATFORMS", "").lower()
  if platforms:
    return not any(name in platforms for name in _ACCELERATORS)
  return importlib.util.find_spec("jax_plugins") is None and importlib.util.find_spec("libtpu") is None


def _glibc():
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.gnu_get_libc_version  # noqa: B018 (raises AttributeError on other C libraries)
    return libc
  except (OSError, AttributeError):
    return None


def configure() -> bool:
  """Applies the malloc settings above when they are wanted and possible; True if applied."""
  if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "off", "no") or not cpu_only_process():
    return False
  libc = _glibc()
  if libc is None:
    return False
  return all(libc.mallopt(param, value) == 1
             for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
