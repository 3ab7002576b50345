"""CLIP train step, jaxcnn against open_clip, timed in turns inside one process.

    python benchmarks/clip_step.py [--model=clip_vit_b32] [--batch=32] [--rounds=5] [--steps=3]

JAX: the contrastive task's train step as `python -m jaxcnn.bench --model=clip_vit_b32 --batch=32
--image-size=224` builds it (forward of both towers, CLIP loss over the batch, backward, SGD with
momentum 0.9, donated state), jitted once. PyTorch: open_clip's same model (`ViT-B-32-quickgelu`, or
`RN50-quickgelu` for clip_rn50, random weights) in train mode, open_clip's `ClipLoss`, `torch.optim.SGD`
(lr 0.01, momentum 0.9), 2 intra-op threads (the machine's cores, as XLA uses), float32, channels-last
images. Both get the same batch: `batch` random images at the model's size and one random caption row per
image (start token, random ids, end token).

Each round runs `steps` JAX steps then `steps` PyTorch steps (after one warm-up step each), so both see the
same machine load. Prints per round and at the end the median wall time per step, the CPU seconds per step
(all threads, `time.process_time`) and the median per-round ratio torch time / JAX time (> 1: JAX faster),
with the load average; the last line is one JSON object.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

OPEN_CLIP_NAMES = {"clip_vit_b32": "ViT-B-32-quickgelu", "clip_vit_b16": "ViT-B-16-quickgelu",
                   "clip_rn50": "RN50-quickgelu", "clip_tiny": None}


def jax_step(model_name: str, batch_size: int):
  """(run one step, the batch as numpy) for the jaxcnn contrastive step of `python -m jaxcnn.bench`."""
  import jax
  from jaxcnn import bench
  from jaxcnn.registry import create_model
  size = create_model(model_name).image_size
  args, _ = bench.parse([f"--model={model_name}", f"--batch={batch_size}", f"--image-size={size}"])
  _, task, tx, state, batch = bench.setup(args, {})

  def step(state, batch):
    new, metrics = task.train_step(state, batch, tx)
    return new, metrics["train/loss"]

  compiled = jax.jit(step, donate_argnums=0, compiler_options=task.compiler_options() or None).lower(
      state, batch).compile()
  holder = {"state": state}

  def run():
    holder["state"], loss = compiled(holder["state"], batch)
    return float(loss)
  return run, {k: np.asarray(v) for k, v in batch.items()}


def torch_step(model_name: str, batch: dict):
  """One open_clip train step of the same model on the same batch (images NCHW channels-last)."""
  import open_clip
  import torch
  from open_clip.loss import ClipLoss
  torch.set_num_threads(2)
  if OPEN_CLIP_NAMES[model_name] is None:
    from jaxcnn.models.clip import VARIANTS
    v = VARIANTS[model_name]
    model = open_clip.model.CLIP(v["embed_dim"], dict(image_size=v["image_size"], layers=v["vision_layers"],
                                 width=v["vision_width"], patch_size=v["vision_patch_size"],
                                 head_width=v["vision_head_width"]),
                                 dict(context_length=v["context_length"], width=v["text_width"],
                                      heads=v["text_heads"], layers=v["text_layers"]), quick_gelu=True)
  else:
    model = open_clip.create_model(OPEN_CLIP_NAMES[model_name], device="cpu")
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  loss_fn = ClipLoss()
  images = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy()).contiguous(
      memory_format=torch.channels_last)
  tokens = torch.from_numpy(batch["captions"][:, 0].astype(np.int64))

  def run():
    image, text, scale = model(images, tokens)
    loss = loss_fn(image, text, scale)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():  # open_clip's training loop clamps the temperature after each step
      model.logit_scale.clamp_(0, np.log(100))
    return loss.item()
  return run


def timed(run, steps):
  walls, cpus = [], []
  for _ in range(steps):
    w, c = time.perf_counter(), time.process_time()
    run()
    walls.append(time.perf_counter() - w)
    cpus.append(time.process_time() - c)
  return walls, cpus


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="clip_vit_b32", choices=sorted(OPEN_CLIP_NAMES))
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=3)
  args = p.parse_args(argv)
  t = time.perf_counter()
  run_jax, batch = jax_step(args.model, args.batch)
  compile_s = time.perf_counter() - t
  run_torch = torch_step(args.model, batch)
  first = {"jax": run_jax(), "torch": run_torch()}  # warm-up; both losses of the same batch
  print(f"compiled in {compile_s:.1f}s; first-step losses jax {first['jax']:.4f} torch {first['torch']:.4f}",
        flush=True)
  results = {"jax": ([], []), "torch": ([], [])}
  ratios = []
  for r in range(args.rounds):
    medians = {}
    for kind, run in (("jax", run_jax), ("torch", run_torch)):
      walls, cpus = timed(run, args.steps)
      results[kind][0].extend(walls)
      results[kind][1].extend(cpus)
      medians[kind] = statistics.median(walls)
    ratios.append(medians["torch"] / medians["jax"])
    print(f"round {r + 1}/{args.rounds}: jax {medians['jax'] * 1e3:8.1f} ms  torch {medians['torch'] * 1e3:8.1f} ms"
          f"  torch/jax {ratios[-1]:.3f}  load {os.getloadavg()[0]:.1f}", flush=True)
  summary = {"model": args.model, "batch": args.batch, "rounds": args.rounds, "steps": args.steps,
             "compile_s": round(compile_s, 1), "ratio_torch_over_jax": round(statistics.median(ratios), 3),
             "load_avg_1min": round(os.getloadavg()[0], 2)}
  for kind, (walls, cpus) in results.items():
    summary[f"{kind}_step_ms_median"] = round(statistics.median(walls) * 1e3, 1)
    summary[f"{kind}_cpu_s_per_step"] = round(statistics.median(cpus), 3)
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
