"""Times one compiled train step of any registered model; prints one JSON line.

    python -m jaxcnn.bench --model=resnet18_cifar --batch=128 --image-size=32 [--dtype=bfloat16]
        [--steps=10] [--warmup=2] [--num-classes=10] [--channels=3] [--optim=sgd]
        [--task=auto|classification|segmentation|detection|contrastive] [--option.KEY=VALUE ...]

The step is the trainer's own (the task's `train_step`: forward, loss, backward,
optimizer update, donated state), jitted on one device, on one synthetic batch:
  classification  `image` [B, S, S, C] and `label` [B];
  segmentation    `image` and `segmentation` int32 [B, S, S] with about 5% of the
                  pixels at the ignore label 255 (per-pixel softmax cross-entropy,
                  logits resized to the labels, the aux loss if the model has one);
  detection       `image`, `boxes` [B, 8, 4] (random boxes of 1/16 to 1/2 of the image
                  side, the last two slots of every other image padding), `boxes_valid`
                  and `box_classes` (the detector's own loss, `jaxcnn/tasks/detection.py`);
  contrastive     `image` and `captions` int32 [B, 1, L] (random token rows of random length
                  between the start and end tokens, L the model's context_length), the
                  CLIP loss of `jaxcnn/tasks/contrastive.py` (--option.KEY=VALUE are model
                  options; --image-size must be the model's image_size).
`--task=auto` (the default) picks contrastive for image-text models (with
`encode_text`), detection for detectors (models with
`detection_loss` and `postprocess`), segmentation for models whose output is a
dict with 'out' (the segmentation contract of `jaxcnn/models/fcn.py`), else
classification. FLOPs come from XLA's cost analysis of the compiled step. A tool,
not a test: compare numbers only within one run on one machine (e.g. against
benchmarks/torch_reference.py).
"""
import argparse
import ast
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxcnn.errors import UserError
from jaxcnn.registry import list_models


def _config(args, options):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict({"name": args.model, **options})
  c.train = ml_collections.ConfigDict({"compute_dtype": args.dtype, "label_smoothing": 0.0,
                                       "grad_accum_steps": 1, "ema_decay": 0.0, "batch_size": args.batch})
  return c


def _parse_options(extra):
  options = {}
  for arg in extra:
    if not arg.startswith("--option.") or "=" not in arg:
      raise UserError(f"unknown argument {arg} (model options go as --option.KEY=VALUE)")
    key, raw = arg[len("--option."):].split("=", 1)
    try:
      options[key] = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      options[key] = raw
  return options


TASKS = ("auto", "classification", "segmentation", "detection", "contrastive")
BENCH_BOXES = 8
IGNORE_LABEL = 255


def infer_task(model_name: str, options: dict, num_classes: int, image_size: int, channels: int) -> str:
  """'contrastive' for image-text models; 'detection' for detectors; 'segmentation' if the model returns
  {'out': ...} (abstractly evaluated, no compute); else 'classification'."""
  from jaxcnn.registry import create_model, model_options
  from jaxcnn.tasks.detection import is_detector
  accepted = model_options(model_name)
  kwargs = dict(options)
  if accepted is None or "num_classes" in accepted:
    kwargs.setdefault("num_classes", num_classes)
  model = create_model(model_name, **kwargs)
  if hasattr(model, "encode_text"):
    return "contrastive"
  if is_detector(model):
    return "detection"
  x = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  out, _ = jax.eval_shape(lambda x: model.init_with_output(
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, x, train=False), x)
  return "segmentation" if isinstance(out, dict) and "out" in out else "classification"


def synthetic_batch(task: str, batch: int, image_size: int, channels: int, num_classes: int,
                    context_length: int = 77) -> dict:
  """One batch of the fields `task` trains on, drawn from a fixed seed."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(batch, image_size, image_size, channels)), jnp.float32)
  if task == "contrastive":
    from jaxcnn.data.tokenizer import EOT_ID, SOT_ID
    captions = np.zeros((batch, 1, context_length), np.int32)
    for row, length in zip(captions[:, 0], rng.integers(3, context_length + 1, size=batch)):
      row[:length] = [SOT_ID, *rng.integers(1, SOT_ID, size=length - 2), EOT_ID]
    return {"image": images, "captions": jnp.asarray(captions)}
  if task == "classification":
    return {"image": images, "label": jnp.asarray(rng.integers(0, num_classes, size=(batch,)), jnp.int32)}
  if task == "detection":
    centres = rng.uniform(0, image_size, size=(batch, BENCH_BOXES, 2))
    sides = rng.uniform(image_size / 16, image_size / 2, size=(batch, BENCH_BOXES, 2))
    boxes = np.clip(np.concatenate([centres - sides / 2, centres + sides / 2], -1), 0, image_size)
    valid = np.ones((batch, BENCH_BOXES), bool)
    valid[::2, -2:] = False
    return {"image": images, "boxes": jnp.asarray(boxes, jnp.float32), "boxes_valid": jnp.asarray(valid),
            "box_classes": jnp.asarray(rng.integers(0, num_classes, size=(batch, BENCH_BOXES)), jnp.int32)}
  labels = rng.integers(0, num_classes, size=(batch, image_size, image_size))
  labels[rng.random(labels.shape) < 0.05] = IGNORE_LABEL  # as VOC's object boundaries
  return {"image": images, "segmentation": jnp.asarray(labels, jnp.int32)}


def setup(args, options):
  """(task name, task, optimizer, initial TrainState, synthetic batch) for the step `bench` times."""
  from jaxcnn.tasks import get_task
  from jaxcnn.tasks.base import TrainState

  if args.model not in list_models():
    from jaxcnn.errors import unknown
    raise unknown("model", args.model, list_models())
  if args.batch <= 0 or args.image_size <= 0 or args.steps <= 0:
    raise UserError("--batch, --image-size and --steps must be positive")
  task_name = args.task
  if task_name == "auto":
    task_name = infer_task(args.model, options, args.num_classes, args.image_size, args.channels)

  class Info:
    name = "synthetic"
    num_classes = args.num_classes
    ignore_label = IGNORE_LABEL
    class_names = ()

    field_kinds = ({"image": "image", "boxes": "boxes"} if task_name == "detection" else
                   {"image": "image", "captions": "text"} if task_name == "contrastive" else {})

  config = _config(args, options)
  config.task = task_name
  context_length = 77
  if task_name == "contrastive":
    from jaxcnn.registry import create_model
    context_length = create_model(args.model, **options).context_length
    config.data = ml_collections.ConfigDict({"context_length": context_length})
  task = get_task(config, Info)
  tx = {"sgd": optax.sgd(0.01, momentum=0.9), "adamw": optax.adamw(1e-3)}[args.optim]
  batch = synthetic_batch(task_name, args.batch, args.image_size, args.channels, args.num_classes, context_length)
  variables = dict(task.init(jax.random.PRNGKey(0), batch))
  params = variables.pop("params")
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                     opt_state=tx.init(params), ema_params={}, rng=jax.random.PRNGKey(1))
  return task_name, task, tx, state, batch


def bench(args, options) -> dict:
  task_name, task, tx, state, batch = setup(args, options)

  def step(state, batch):
    new, metrics = task.train_step(state, batch, tx)
    return new.replace(step=state.step + 1), metrics["train/loss"]

  t0 = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0, compiler_options=task.compiler_options() or None).lower(
      state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", float("nan")))
  for _ in range(args.warmup):
    state, loss = compiled(state, batch)
    loss.block_until_ready()
  times, cpu_times = [], []
  for _ in range(args.steps):
    t, c = time.perf_counter(), time.process_time()
    state, loss = compiled(state, batch)
    loss.block_until_ready()
    times.append(time.perf_counter() - t)
    cpu_times.append(time.process_time() - c)
  median = statistics.median(times)
  return {"model": args.model, "task": task_name, "batch": args.batch, "image_size": args.image_size,
          "dtype": args.dtype, "backend": jax.default_backend(), "devices": 1, "compile_s": round(compile_s, 3),
          "step_ms_median": round(median * 1e3, 3), "step_ms_min": round(min(times) * 1e3, 3),
          "images_per_s": round(args.batch / median, 2),
          # CPU seconds of all threads per step: wall time x cores kept busy.
          "cpu_s_per_step": round(statistics.median(cpu_times), 3), "flops_per_step": flops,
          "flops_per_s": flops / median, "loss": float(loss),
          "param_count": int(sum(np.prod(p.shape) for p in jax.tree.leaves(state.params)))}


def parse(argv=None):
  """(args, the --option.KEY=VALUE arguments left for `_parse_options`) from the command line."""
  p = argparse.ArgumentParser(prog="python -m jaxcnn.bench", description=__doc__.splitlines()[0])
  p.add_argument("--model", required=True)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--image-size", type=int, default=32)
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--num-classes", type=int, default=10)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--optim", default="sgd", choices=["sgd", "adamw"])
  p.add_argument("--task", default="auto", choices=TASKS,
                 help="the train step to time; auto: detection for detectors, segmentation for models "
                 "returning {'out': ...}")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  args, extra = p.parse_known_args(argv)
  return args, extra


def main(argv=None):
  args, extra = parse(argv)
  if args.steps < 1 or args.warmup < 0 or args.batch < 1:
    print(f"error: --steps (>= 1), --warmup (>= 0) and --batch (>= 1) got {args.steps}, {args.warmup}, "
          f"{args.batch}", file=sys.stderr)
    return 2
  try:
    result = bench(args, _parse_options(extra))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
