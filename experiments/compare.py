"""Compares the families: one recipe each, trained (or read back), in one table and one plot.

    python -m experiments.compare --suite=cifar10 [--steps=N] [--workdir=DIR] [--only=exp1,exp2]
    python -m experiments.compare --suite=digits --steps=100 --workdir=runs/compare_digits

Each family's experiment (experiments/configs/<exp>.py, unchanged but for --steps) trains in DIR/<exp> through
the one trainer; a workdir whose summary.json already reports the wanted step count is read, not retrained, and
an unfinished one resumes from its checkpoints, so the command is resumable. Written to DIR:
  compare.md, compare.csv   family, experiment, model, eval accuracy, parameters, forward GFLOPs per image
                            (XLA's cost analysis of the compiled eval forward pass at batch 1, plain XLA convolutions), train images/s
                            (mean of the run's logged throughput, compilation excluded), wall time of the run's
                            last invocation (summary.json)
  plots/accuracy_vs_cost.png  accuracy against GFLOPs per image (log scale), marker area ~ parameters
With --steps the runs are shortened (train.steps = N, evals and checkpoints at most every N steps), so their
accuracies are not the recipes' targets. The cifar10 suite needs CIFAR-10 (downloaded on first use) and a GPU.
"""
import csv
import importlib
import json
import logging
import math
import os
import sys

SUITES = {
    "cifar10": (("LeNet-5", "lenet5_cifar"), ("AlexNet", "alexnet_cifar"), ("VGG", "vgg16_bn_cifar"),
                ("ResNet", "resnet18_cifar"), ("Wide ResNet", "wrn28_10_cifar"),
                ("DenseNet", "densenet_bc_cifar"), ("MobileNetV2", "mobilenet_v2_cifar"),
                ("SE-ResNet", "se_resnet_cifar"), ("CBAM-ResNet", "cbam_resnet_cifar"),
                ("ConvNeXt", "convnext_cifar"), ("ViT", "vit_cifar"), ("Conformer", "conformer_cifar"),
                ("MaxViT", "maxvit_cifar")),
    "digits": (("LeNet-5", "lenet_digits"), ("ResNet", "resnet_digits"), ("ViT", "vit_digits")),
}
COLUMNS = ("family", "experiment", "model", "steps", "accuracy", "parameters", "gflops_per_image",
           "train_images_per_s", "wall_time_s")
USAGE = "usage: python -m experiments.compare --suite=cifar10|digits [--steps=N] [--workdir=DIR] [--only=exp,...]"
log = logging.getLogger("jaxcnn")


def parse_args(argv):
  from jaxcnn.errors import UserError, unknown
  options = {"suite": None, "steps": None, "workdir": None, "only": None}
  for arg in argv:
    key, _, value = arg[2:].partition("=") if arg.startswith("--") else (arg, "", "")
    if key not in options or not value:
      raise UserError(f"cannot read argument '{arg}' ({USAGE})")
    options[key] = value
  if options["suite"] not in SUITES:
    raise unknown("suite (--suite)", options["suite"], SUITES)
  if options["steps"] is not None:
    if not options["steps"].isdigit() or int(options["steps"]) < 1:
      raise UserError(f"--steps must be a positive integer, got '{options['steps']}'")
    options["steps"] = int(options["steps"])
  families = SUITES[options["suite"]]
  if options["only"]:
    wanted = options["only"].split(",")
    names = [exp for _, exp in families]
    for exp in wanted:
      if exp not in names:
        raise unknown(f"experiment of suite {options['suite']} (--only)", exp, names)
    families = tuple(f for f in families if f[1] in wanted)
  options["families"] = families
  options["workdir"] = options["workdir"] or os.path.join("workdirs", f"compare_{options['suite']}")
  return options


def recipe(exp: str, steps=None):
  """The experiment's config, shortened to `steps` (evals and checkpoints at most every `steps`)."""
  config = importlib.import_module(f"experiments.configs.{exp}").get_config()
  if steps:
    config.train.steps = steps
    config.train.log_every = min(int(config.train.log_every), steps)
    for section in ("eval", "checkpoint"):
      config[section].every = min(int(config[section].every), steps) or steps
  return config


def _finished(workdir: str, steps: int):
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  return summary if summary.get("step") == steps else None


def forward_gflops(config) -> float:
  """GFLOPs of one image's eval forward pass: XLA's cost analysis of the compiled model, nothing executed."""
  import jax
  import jax.numpy as jnp
  from jaxcnn import data as data_lib
  from jaxcnn.layers import cpu_conv
  from jaxcnn.tasks import get_task
  task = get_task(config, data_lib.dataset_info(config.data.name))
  spec = data_lib.element_spec(config.data, 1)
  batch = task.init_batch(spec)
  variables = jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), batch))
  image = jax.ShapeDtypeStruct((1,) + spec["image"].shape[1:], jnp.float32)
  forward = jax.jit(lambda v, x: task.model.apply(v, x, train=False))
  # Plain lax convolutions: XLA counts no FLOPs in the CPU formulations' custom calls (jaxcnn.layers.cpu_conv).
  saved = os.environ.get(cpu_conv.ENV_VAR)
  os.environ[cpu_conv.ENV_VAR] = "0"
  try:
    cost = forward.lower(variables, image).compile().cost_analysis()
  finally:
    if saved is None:
      del os.environ[cpu_conv.ENV_VAR]
    else:
      os.environ[cpu_conv.ENV_VAR] = saved
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", math.nan)) / 1e9


def _images_per_s(workdir: str) -> float:
  from jaxcnn.train.writers import read_metrics
  values = [r["throughput/images_per_s"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
            if isinstance(r.get("throughput/images_per_s"), (int, float))]
  return sum(values) / len(values) if values else math.nan


def run_family(family: str, exp: str, root: str, steps=None) -> dict:
  from jaxcnn.train import train_and_evaluate
  config = recipe(exp, steps)
  workdir = os.path.join(root, exp)
  summary = _finished(workdir, int(config.train.steps))
  if summary is None:
    log.info("compare: training %s (%s) in %s", family, exp, workdir)
    summary = train_and_evaluate(config, workdir)
  else:
    log.info("compare: %s is finished in %s; read, not retrained", exp, workdir)
  return {"family": family, "experiment": exp, "model": config.model.name, "steps": summary["step"],
          "accuracy": summary.get("eval/accuracy", math.nan), "parameters": summary["param_count"],
          "gflops_per_image": forward_gflops(config), "train_images_per_s": _images_per_s(workdir),
          "wall_time_s": summary.get("wall_time_s", math.nan)}


def _cell(key, value):
  if isinstance(value, float):
    if math.isnan(value):
      return "n/a"
    return {"accuracy": f"{value:.4f}", "gflops_per_image": f"{value:.4g}"}.get(key, f"{value:.1f}")
  return f"{value:,}" if key == "parameters" else str(value)


def write_table(rows, root: str, suite: str):
  with open(os.path.join(root, "compare.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  lines = [f"# Families on {suite}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(_cell(k, row[k]) for k in COLUMNS) + " |" for row in rows]
  with open(os.path.join(root, "compare.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def plot(rows, root: str, suite: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(os.path.join(root, "plots"), exist_ok=True)
  fig, ax = plt.subplots(figsize=(7, 5))
  largest = max(r["parameters"] for r in rows)
  for r in rows:
    ax.scatter(r["gflops_per_image"], r["accuracy"], s=30 + 400 * r["parameters"] / largest, alpha=0.6)
    ax.annotate(r["family"], (r["gflops_per_image"], r["accuracy"]), textcoords="offset points", xytext=(5, 5))
  ax.set_xscale("log")
  ax.set_xlabel("forward GFLOPs per image (XLA cost analysis)")
  ax.set_ylabel("eval accuracy")
  ax.set_title(f"{suite}: accuracy vs cost (marker area ~ parameters)")
  fig.tight_layout()
  fig.savefig(os.path.join(root, "plots", "accuracy_vs_cost.png"), dpi=100)
  plt.close(fig)


def main(argv) -> int:
  options = parse_args(argv)
  root = options["workdir"]
  os.makedirs(root, exist_ok=True)
  rows = [run_family(family, exp, root, options["steps"]) for family, exp in options["families"]]
  write_table(rows, root, options["suite"])
  plot(rows, root, options["suite"])
  with open(os.path.join(root, "compare.md")) as f:
    print(f.read(), end="")
  print(f"written: {os.path.join(os.path.abspath(root), 'compare.md')}, compare.csv, plots/accuracy_vs_cost.png")
  return 0


if __name__ == "__main__":
  from experiments.run import _setup_logging
  from jaxcnn.errors import UserError
  _setup_logging()
  try:
    sys.exit(main(sys.argv[1:]))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
