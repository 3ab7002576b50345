"""JAX (jaxcnn.bench, the trainer's real train step) against PyTorch on the same machine, in one run.

    python benchmarks/compare.py [--models=resnet18_cifar,resnet50,mobilenet_v2,vit_tiny_patch4_32]
        [--rounds=3] [--steps=5] [--warmup=1] [--no-baseline] [--rewrite] [--also=MODE,...]

For each model it alternates, round by round, separate processes of
  jax       python -m jaxcnn.bench ...                    (the default: oneDNN, else the XLA rewrites)
  rewrite   JAXCNN_CPU_CONV=xla python -m jaxcnn.bench ... (only with --rewrite: the pure-XLA rewrites)
  baseline  JAXCNN_CPU_CONV=0 python -m jaxcnn.bench ...   (plain XLA convolutions)
  torch     python benchmarks/torch_reference.py ...    (same architecture, channels_last, 2 threads;
                                                          ViTs: torch_vit_reference.py, timm's ViT)
so all of them see the same machine load, and prints the medians and the ratios
(JAX images/s / PyTorch images/s; >= 1.0 means JAX is at least as fast).
Shapes: resnet18_cifar and vit_tiny_patch4_32 batch 128 at 32x32 with 10
classes, resnet50 and mobilenet_v2 batch 16 at 224x224 with 1000 classes,
deeplabv3_resnet50 batch 4 at 256x256 with 21 classes (not in the default list:
--models=deeplabv3_resnet50; jaxcnn.bench times the segmentation task's step,
PyTorch the same per-pixel cross-entropy with ignore_index=255, both on labels
with about 5% ignored pixels), retinanet_resnet50_fpn, fasterrcnn_resnet50_fpn and detr_resnet50 batch 2
at 512x512 with 91 classes (--models=retinanet_resnet50_fpn,fasterrcnn_resnet50_fpn,detr_resnet50; the
detection task's step against torchvision's train-mode loss dict with an identity transform,
benchmarks/torch_detection_reference.py, both on 8 random boxes per image; DETR against the official
structure and SetCriterion in benchmarks/torch_detr_reference.py).
The last line is one JSON object with everything.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

MODELS = {
    "resnet18_cifar": dict(batch=128, image_size=32, num_classes=10),
    "resnet50": dict(batch=16, image_size=224, num_classes=1000),
    "mobilenet_v2": dict(batch=16, image_size=224, num_classes=1000),
    "vit_tiny_patch4_32": dict(batch=128, image_size=32, num_classes=10),
}
SEGMENTATION = {"deeplabv3_resnet50": dict(batch=4, image_size=256, num_classes=21)}
# num_classes is the dataset's K: the detector gets K + 1 (background), 91 as torchvision's COCO models.
DETECTION = {"retinanet_resnet50_fpn": dict(batch=2, image_size=512, num_classes=90),
             "fasterrcnn_resnet50_fpn": dict(batch=2, image_size=512, num_classes=90),
             "detr_resnet50": dict(batch=2, image_size=512, num_classes=90)}
SHAPES = {**MODELS, **SEGMENTATION, **DETECTION}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(kind, model, shape, steps, warmup):
  flags = [f"--model={model}", f"--batch={shape['batch']}", f"--image-size={shape['image_size']}",
           f"--num-classes={shape['num_classes']}", f"--steps={steps}", f"--warmup={warmup}"]
  if kind == "torch":
    # ViTs against timm's implementation (the faster PyTorch baseline, and the one jaxcnn's ViT matches).
    script = ("torch_vit_reference.py" if model.startswith("vit_") else
              "torch_detection_reference.py" if model in DETECTION else "torch_reference.py")
    return [sys.executable, os.path.join(ROOT, "benchmarks", script)] + flags
  task = (["--task=segmentation"] if model in SEGMENTATION else ["--task=detection"] if model in DETECTION else [])
  return [sys.executable, "-m", "jaxcnn.bench"] + flags + task


def run_one(kind, model, shape, steps, warmup) -> dict:
  env = dict(os.environ)
  # Kinds other than these name a JAXCNN_CPU_CONV value themselves (--also).
  env["JAXCNN_CPU_CONV"] = {"baseline": "0", "rewrite": "xla", "jax": "1"}.get(kind, kind)
  out = subprocess.run(_command(kind, model, shape, steps, warmup), cwd=ROOT, env=env,
                       capture_output=True, text=True)
  if out.returncode != 0:
    raise RuntimeError(f"{kind} {model} failed:\n{out.stderr[-2000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def compare(model, rounds, steps, warmup, kinds):
  shape = SHAPES[model]
  runs = {kind: [] for kind in kinds}
  cpu_s = {kind: [] for kind in kinds}  # CPU seconds per step: less sensitive to other jobs than wall time
  for r in range(rounds):
    for kind in kinds:
      result = run_one(kind, model, shape, steps, warmup)
      runs[kind].append(result["images_per_s"])
      cpu_s[kind].append(result.get("cpu_s_per_step"))
      print(f"  {model} round {r + 1}/{rounds} {kind:8s} {result['images_per_s']:9.2f} images/s "
            f"(step median {result['step_ms_median']:.0f} ms, {result.get('cpu_s_per_step')} CPU s)",
            file=sys.stderr, flush=True)
  med = {kind: statistics.median(v) for kind, v in runs.items()}
  row = {"model": model, **shape, "rounds": rounds, "steps": steps,
         **{f"{kind}_images_per_s": round(med[kind], 2) for kind in kinds},
         "runs": runs, "cpu_s_per_step": cpu_s}
  # Ratio of medians, and the median of per-round ratios (robust to load drifting between rounds).
  for kind in [k for k in kinds if k != "torch"]:
    row[f"ratio_{kind}_vs_torch"] = round(med[kind] / med["torch"], 3)
    row[f"ratio_{kind}_vs_torch_per_round"] = round(statistics.median(
        a / b for a, b in zip(runs[kind], runs["torch"])), 3)
  return row


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default=",".join(MODELS))
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--no-baseline", action="store_true", help="skip the JAXCNN_CPU_CONV=0 runs")
  p.add_argument("--rewrite", action="store_true", help="also run JAXCNN_CPU_CONV=xla (no oneDNN)")
  p.add_argument("--also", default="", help="comma-separated JAXCNN_CPU_CONV values to run as more JAX kinds")
  args = p.parse_args(argv)
  models = [m for m in args.models.split(",") if m]
  unknown = [m for m in models if m not in SHAPES]
  if unknown:
    print(f"error: unknown models {unknown}; known: {sorted(SHAPES)}", file=sys.stderr)
    return 2
  also = [k for k in args.also.split(",") if k]
  kinds = ["jax"] + also + (["rewrite"] if args.rewrite else []) + ([] if args.no_baseline else ["baseline"]) + ["torch"]
  rows = [compare(m, args.rounds, args.steps, args.warmup, kinds) for m in models]
  ours = [k for k in kinds if k != "torch"]
  print(f"{'model':20s} {'batch':>5s} {'size':>4s} " + " ".join(f"{k:>9s}" for k in kinds) + " "
        + " ".join(f"{k + '/torch':>14s}" for k in ours) + "   (images/s; ratios: median of per-round ratios)")
  for row in rows:
    print(f"{row['model']:20s} {row['batch']:5d} {row['image_size']:4d} "
          + " ".join(f"{row[f'{k}_images_per_s']:9.2f}" for k in kinds) + " "
          + " ".join(f"{row[f'ratio_{k}_vs_torch_per_round']:14.3f}" for k in ours))
  print(json.dumps({"rows": rows}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
