"""ViT compile time, step time and FLOP/s versus depth, with and without `scan_layers`.

    python benchmarks/vit_depth.py [--depths=4,8,16,32] [--batch=32] [--steps=3] [--warmup=1]
        [--model=vit_tiny_patch4_32] [--image-size=32] [--remat]

Each (depth, scan) point is one `python -m jaxcnn.bench` process (the trainer's
real train step, SGD, float32) so no compilation cache is shared. FLOPs: XLA's
cost analysis counts a while loop's body once, not once per iteration, so the
scanned step under-reports; both rows of a depth use the unrolled step's count
(the same arithmetic), and the scanned step's own count is printed beside it.
Prints a markdown table, then one JSON line with everything.
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


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="vit_tiny_patch4_32")
  p.add_argument("--depths", default="4,8,16,32")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--image-size", type=int, default=32)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--remat", action="store_true", help="also nn.remat each block (both rows)")
  args = p.parse_args(argv)
  rows = []
  print("| depth | scan | params | compile s | step ms | GFLOP/step | GFLOP/s | cost-analysis GFLOP |")
  print("|---:|:---|---:|---:|---:|---:|---:|---:|")
  for depth in [int(d) for d in args.depths.split(",")]:
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
