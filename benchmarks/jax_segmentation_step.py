"""JAX twin of torch_reference.py for segmentation models: one compiled SGD train step, one JSON line.

    python benchmarks/jax_segmentation_step.py --model=deeplabv3_resnet50 --batch=4 --image-size=256 --num-classes=21

The step: forward in train mode (BatchNorm statistics updated, dropout on),
per-pixel softmax cross-entropy of the model's 'out' logits (at the input size)
against random labels, backward, SGD (lr 0.01, momentum 0.9), float32, the
state donated, jitted on one device; the same work as torch_reference.py's
segmentation step. Flags and JSON keys as `python -m jaxcnn.bench`, so
benchmarks/compare.py reads both alike.
"""
import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn import create_model


def bench(args) -> dict:
  model = create_model(args.model, num_classes=args.num_classes)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(args.batch, args.image_size, args.image_size, args.channels)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, args.num_classes, size=(args.batch, args.image_size, args.image_size)),
                       jnp.int32)
  with jax.threefry_partitionable(False):
    variables = jax.jit(model.init)(jax.random.key(0), images[:1])
  tx = optax.sgd(0.01, momentum=0.9)
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]), jax.random.key(1))

  def loss_fn(params, batch_stats, key):
    out, new = model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                           rngs={"dropout": key}, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(out["out"], labels).mean()
    return loss, new["batch_stats"]

  def step(state):
    params, batch_stats, opt_state, key = state
    key, dropout = jax.random.split(key)
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, dropout)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state, key), loss

  t0 = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0).lower(state).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(args.warmup):
    state, loss = compiled(state)
    loss.block_until_ready()
  times, cpu_times = [], []
  for _ in range(args.steps):
    t, c = time.perf_counter(), time.process_time()
    state, loss = compiled(state)
    loss.block_until_ready()
    times.append(time.perf_counter() - t)
    cpu_times.append(time.process_time() - c)
  median = statistics.median(times)
  return {"model": args.model, "framework": "jax", "batch": args.batch, "image_size": args.image_size,
          "dtype": "float32", "backend": jax.default_backend(), "compile_s": round(compile_s, 3),
          "step_ms_median": round(median * 1e3, 3), "step_ms_min": round(min(times) * 1e3, 3),
          "images_per_s": round(args.batch / median, 2), "cpu_s_per_step": round(statistics.median(cpu_times), 3),
          "loss": float(loss), "param_count": int(sum(np.prod(p.shape) for p in jax.tree.leaves(state[0])))}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", required=True)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--image-size", type=int, default=256)
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--num-classes", type=int, default=21)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  print(json.dumps(bench(p.parse_args(argv))))
  return 0


if __name__ == "__main__":
  sys.exit(main())
