"""ViT compile time, step time and FLOP/s versus depth, with and without `scan_layers`.

    python benchmarks/vit_depth.py [--depths=4,8,16,32] [--batch=32] [--steps=3] [--warmup=1]
        [--model=vit_tiny_patch4_32] [--image-size=32] [--remat] [--compile-only]

Each (depth, scan) point is one `python -m jaxcnn.bench` process (the trainer's
real train step, SGD, float32) so no compilation cache is shared. FLOPs: XLA's
cost analysis counts a while loop's body once, not once per iteration, so the
scanned step under-reports; both rows of a depth use the unrolled step's count
(the same arithmetic), and the scanned step's own count is printed beside it.
Prints a markdown table, then one JSON line with everything.

`--compile-only` instead lowers and compiles a plain train step (softmax
cross-entropy, SGD) in a fresh process per point and reports the compile's
wall time, its CPU time (robust when other jobs share the machine) and the
size of the optimised HLO program; no step is run.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(model, depth, scan, args) -> dict:
  command = [sys.executable, "-m", "jaxcnn.bench", f"--model={model}", f"--batch={args.batch}",
             f"--image-size={args.image_size}", f"--steps={args.steps}", f"--warmup={args.warmup}",
             f"--option.depth={depth}", f"--option.scan_layers={scan}"]
  if args.remat:
    command.append("--option.remat=True")
  out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  if out.returncode != 0:
    raise RuntimeError(f"depth {depth} scan {scan} failed:\n{out.stderr[-2000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def compile_point(model_name, depth, scan, args) -> dict:
  """In this process: lower + compile one train step; wall / CPU seconds and HLO instruction count."""
  import time

  import jax
  import jax.numpy as jnp
  import optax

  from jaxcnn.registry import create_model

  model = create_model(model_name, depth=depth, scan_layers=scan, remat=args.remat)
  images = jax.ShapeDtypeStruct((args.batch, args.image_size, args.image_size, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((args.batch,), jnp.int32)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)["params"]
  tx = optax.sgd(0.01, momentum=0.9)

  def step(params, opt_state, images, labels):
    def loss_fn(p):
      logits = model.apply({"params": p}, images, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = jax.eval_shape(tx.init, params)
  wall, cpu = time.perf_counter(), time.process_time()
  compiled = jax.jit(step).lower(params, opt_state, images, labels).compile()
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  instructions = sum(1 for line in compiled.as_text().splitlines() if " = " in line)
  return {"depth": depth, "scan_layers": scan, "compile_wall_s": round(wall, 2), "compile_cpu_s": round(cpu, 2),
          "hlo_instructions": instructions}


def compile_sweep(depths, args):
  rows = []
  print("| depth | scan | compile wall s | compile CPU s | optimised HLO instructions |")
  print("|---:|:---|---:|---:|---:|")
  for depth in depths:
    for scan in (False, True):
      command = [sys.executable, os.path.abspath(__file__), "--_point", str(depth), str(scan),
                 f"--model={args.model}", f"--batch={args.batch}", f"--image-size={args.image_size}"]
      if args.remat:
        command.append("--remat")
      out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
      if out.returncode != 0:
        raise RuntimeError(f"depth {depth} scan {scan} failed:\n{out.stderr[-2000:]}")
      row = json.loads(out.stdout.strip().splitlines()[-1])
      rows.append(row)
      print(f"| {depth} | {'yes' if scan else 'no'} | {row['compile_wall_s']:.1f} | {row['compile_cpu_s']:.1f} | "
            f"{row['hlo_instructions']:,} |", flush=True)
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="vit_tiny_patch4_32")
  p.add_argument("--depths", default="4,8,16,32")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--image-size", type=int, default=32)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--remat", action="store_true", help="also nn.remat each block (both rows)")
  p.add_argument("--compile-only", action="store_true", help="compile times only (wall and CPU), no steps")
  p.add_argument("--_point", nargs=2, help=argparse.SUPPRESS)  # internal: one compile-only point
  args = p.parse_args(argv)
  if args._point:
    sys.path.insert(0, ROOT)
    print(json.dumps(compile_point(args.model, int(args._point[0]), args._point[1] == "True", args)))
    return 0
  depths = [int(d) for d in args.depths.split(",")]
  if args.compile_only:
    rows = compile_sweep(depths, args)
    print(json.dumps({"model": args.model, "batch": args.batch, "remat": args.remat, "rows": rows}))
    return 0
  rows = []
  print("| depth | scan | params | compile s | step ms | GFLOP/step | GFLOP/s | cost-analysis GFLOP |")
  print("|---:|:---|---:|---:|---:|---:|---:|---:|")
  for depth in depths:
    unrolled_flops = None
    for scan in (False, True):
      r = run_bench(args.model, depth, scan, args)
      if not scan:
        unrolled_flops = r["flops_per_step"]
      flops = unrolled_flops
      row = {"depth": depth, "scan_layers": scan, "param_count": r["param_count"], "compile_s": r["compile_s"],
             "step_ms_median": r["step_ms_median"], "flops_per_step": flops,
             "flops_per_s": flops / (r["step_ms_median"] / 1e3), "cost_analysis_flops": r["flops_per_step"]}
      rows.append(row)
      print(f"| {depth} | {'yes' if scan else 'no'} | {r['param_count']:,} | {r['compile_s']:.1f} | "
            f"{r['step_ms_median']:.0f} | {flops / 1e9:.1f} | {row['flops_per_s'] / 1e9:.1f} | "
            f"{r['flops_per_step'] / 1e9:.1f} |", flush=True)
  print(json.dumps({"model": args.model, "batch": args.batch, "image_size": args.image_size,
                    "remat": args.remat, "rows": rows}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
