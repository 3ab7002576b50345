"""Jitted jaxcnn.ops.batched_nms against torchvision.ops.batched_nms on CPU.

    python benchmarks/nms_micro.py [--sizes=1000,10000] [--rounds=9] [--classes=10] [--tile=512]

Inputs look like a detector's pre-NMS candidates: boxes jittered around a few
hundred object centres (heavy overlaps), uniform scores, `--classes`
categories, IoU threshold 0.5, room for every box (max_output_size = N). Both
sides get the same arrays; the kept indices are checked equal (as a set and in
score order) before timing. JAX runs a jitted call on device arrays, torch the
eager op with 2 threads. They take turns, one timed call each per round, so
both see the same load from other processes; prints median ms, the ratio
jax / torch (below 1 means JAX is faster) and JAX's compile time.
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import ops


def candidates(n, classes, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.uniform(0, 800, (max(n // 20, 2), 2))
  c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 8, (n, 2))
  wh = rng.uniform(16, 120, (n, 2))
  boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)
  return boxes, rng.random(n).astype(np.float32), rng.integers(0, classes, n)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="1000,10000")
  parser.add_argument("--rounds", type=int, default=9)
  parser.add_argument("--classes", type=int, default=10)
  parser.add_argument("--tile", type=int, default=512)
  args = parser.parse_args()
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}; iou 0.5, {args.classes} classes, tile {args.tile}")
  for n in (int(s) for s in args.sizes.split(",")):
    boxes, scores, idxs = candidates(n, args.classes)
    jb, js, ji = (jnp.asarray(a) for a in (boxes, scores, idxs))
    fn = jax.jit(lambda b, s, i: ops.batched_nms(b, s, i, 0.5, max_output_size=n, tile_size=args.tile))
    t0 = time.perf_counter()
    compiled = fn.lower(jb, js, ji).compile()
    compile_s = time.perf_counter() - t0
    tb, ts, ti = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs)
    want = torchvision.ops.batched_nms(tb, ts, ti, 0.5).numpy()
    idx, count = jax.block_until_ready(compiled(jb, js, ji))
    got = np.asarray(idx)[:int(count)]
    # torchvision orders equal scores arbitrarily above 1000 boxes (an unstable sort), so compare the
    # kept set and the score sequence
    if not (np.array_equal(np.sort(got), np.sort(want)) and np.array_equal(scores[got], scores[want])):
      raise SystemExit(f"N={n}: jaxcnn kept {int(count)} boxes, torchvision {len(want)}; results differ")
    jax_ms, torch_ms = [], []
    for _ in range(args.rounds):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(jb, js, ji))
      jax_ms.append((time.perf_counter() - t0) * 1e3)
      t0 = time.perf_counter()
      torchvision.ops.batched_nms(tb, ts, ti, 0.5)
      torch_ms.append((time.perf_counter() - t0) * 1e3)
    j, t = statistics.median(jax_ms), statistics.median(torch_ms)
    print(f"N={n:>6} kept={len(want):>5}  jaxcnn {j:8.2f} ms  torchvision {t:8.2f} ms  ratio jax/torch {j / t:5.2f}"
          f"  (compile {compile_s:.1f} s)")


if __name__ == "__main__":
  main()
