"""ResNet's stem max-pool on CPU: forward + backward, lax vs jaxcnn's tap formulation vs PyTorch.

    python benchmarks/pool_micro.py [--rounds=9] [--shape=16,112,112,64] [--no-torch]

Times a jitted `jax.vjp` of a 3x3/2 pad-1 max-pool plus its input gradient for
`lax.reduce_window` (XLA's select-and-scatter gradient) and
`jaxcnn.layers.max_pool` (the CPU formulation), and
`torch.nn.functional.max_pool2d` forward + backward on a channels_last tensor
(2 threads). The implementations take turns, one timed call each per round, so
all see the same load from other processes; prints the median ms per implementation.
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.layers import pool


def _lax_pool(x):
  return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                           ((0, 0), (1, 1), (1, 1), (0, 0)))


def _jax_step(pool_fn, x, g):
  @jax.jit
  def run(x, g):
    y, vjp = jax.vjp(pool_fn, x)
    return y, vjp(g)[0]
  return lambda: jax.block_until_ready(run(x, g))


def _torch_step(x):
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  xt.requires_grad_(True)

  def run():
    y = torch.nn.functional.max_pool2d(xt, 3, 2, 1)
    y.backward(torch.ones_like(y))
    xt.grad = None
  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=9)
  parser.add_argument("--shape", default="16,112,112,64", help="NHWC input shape")
  parser.add_argument("--no-torch", action="store_true")
  args = parser.parse_args()
  shape = tuple(int(v) for v in args.shape.split(","))
  x = jnp.asarray(np.maximum(np.random.default_rng(0).normal(size=shape), 0).astype(np.float32))
  g = jnp.ones(pool.max_pool(x, 3, 2, 1).shape, jnp.float32)
  steps = {"lax": _jax_step(_lax_pool, x, g), "jaxcnn": _jax_step(lambda x: pool.max_pool(x, 3, 2, 1), x, g)}
  if not args.no_torch:
    steps["torch"] = _torch_step(x)
  times = {name: [] for name in steps}
  for step in steps.values():
    step()  # compile / warm up
  for _ in range(args.rounds):
    for name, step in steps.items():
      start = time.perf_counter()
      step()
      times[name].append(time.perf_counter() - start)
  print(f"forward + input gradient of a 3x3/2 pad-1 max-pool on {shape} (ReLU'd normal noise), "
        f"median of {args.rounds}:")
  for name, ts in times.items():
    print(f"  {name:>7}: {1e3 * statistics.median(ts):8.2f} ms")


if __name__ == "__main__":
  main()
