"""One model's train step under several JAXCNN_CPU_CONV modes, timed in turns inside one process.

    python benchmarks/step_ab.py --model=resnet18_cifar --batch=32 --image-size=32 --num-classes=10
        [--modes=xla,1,1:no-options] [--rounds=5]

`compare.py` runs each variant in its own process, one after the other, so a
load change between two processes shows up as a speed difference. Here every
mode's step is compiled in the same process (the mode is read at trace time)
and the steps run in turns, round by round, so all modes see the same load.
Prints the median step time of each mode and the median per-round ratio to
the first mode (< 1: faster than the first mode). The step is the trainer's
classification step with SGD, compiled with the model's XLA options
(`Task.compiler_options`) as in `python -m jaxcnn.bench`; a mode suffixed
`:no-options` compiles without them. Also prints the CPU time per step.
"""
import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def _state_and_batch(task, tx, batch, size, num_classes):
  from jaxcnn.tasks.base import TrainState
  rng = np.random.default_rng(0)
  data = {"image": jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, num_classes, size=(batch,)), jnp.int32)}
  variables = dict(task.init(jax.random.PRNGKey(0), data))
  params = variables.pop("params")
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                     opt_state=tx.init(params), ema_params={}, rng=jax.random.PRNGKey(1))
  return state, data


def main(argv=None):
  from jaxcnn.tasks.classification import Classification
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", required=True)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--image-size", type=int, default=32)
  p.add_argument("--num-classes", type=int, default=10)
  p.add_argument("--modes", default="xla,1")
  p.add_argument("--rounds", type=int, default=5)
  args = p.parse_args(argv)
  config = ml_collections.ConfigDict({
      "model": {"name": args.model},
      "train": {"compute_dtype": "float32", "label_smoothing": 0.0, "grad_accum_steps": 1, "ema_decay": 0.0}})
  task = Classification(config, type("Info", (), {"num_classes": args.num_classes}))
  tx = optax.sgd(0.01, momentum=0.9)
  state, data = _state_and_batch(task, tx, args.batch, args.image_size, args.num_classes)

  def step(state, batch):
    new, metrics = task.train_step(state, batch, tx)
    return new, metrics["train/loss"]

  modes = [m for m in args.modes.split(",") if m]
  compiled = {}
  for mode in modes:  # not donated: every mode steps from the same state
    # The mode is read at trace time, and JAX reuses traces of inner functions (remat, scan,
    # custom_vjp) across jits: without this every mode would run the first mode's program.
    jax.clear_caches()
    conv_mode, _, suffix = mode.partition(":")
    if suffix not in ("", "no-options"):
      raise SystemExit(f"unknown mode suffix {suffix!r} in {mode!r} (allowed: ':no-options')")
    os.environ["JAXCNN_CPU_CONV"] = conv_mode
    options = None if suffix else task.compiler_options() or None
    compiled[mode] = jax.jit(step, compiler_options=options).lower(state, data).compile()
    compiled[mode](state, data)[1].block_until_ready()
  times = {mode: [] for mode in modes}
  cpu = {mode: [] for mode in modes}
  for _ in range(args.rounds):
    for mode in modes:
      start, cpu_start = time.perf_counter(), time.process_time()
      compiled[mode](state, data)[1].block_until_ready()
      times[mode].append(time.perf_counter() - start)
      cpu[mode].append(time.process_time() - cpu_start)
  first = modes[0]
  print(json.dumps({
      "model": args.model, "batch": args.batch, "image_size": args.image_size, "rounds": args.rounds,
      "step_ms_median": {m: round(statistics.median(t) * 1e3, 1) for m, t in times.items()},
      "cpu_ms_median": {m: round(statistics.median(t) * 1e3, 1) for m, t in cpu.items()},
      f"ratio_to_{first}": {m: round(statistics.median(a / b for a, b in zip(times[m], times[first])), 3)
                            for m in modes}}))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
