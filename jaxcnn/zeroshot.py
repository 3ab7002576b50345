"""python -m jaxcnn.zeroshot: zero-shot classification of any classification dataset with an image-text model.

    python -m jaxcnn.zeroshot --model=clip_vit_b32 --weights=ViT-B-32-quickgelu.safetensors --data=cifar10
    python -m jaxcnn.zeroshot --model=clip_tiny --weights=workdirs/clip_digits --data=digits_captions

The dataset's class names (or CLIP's for cifar10, cifar100, mnist; --class_names to give them) are put into
every template of --templates (CLIP's sets by name, `jaxcnn.eval.templates`; default: the dataset's, else
'imagenet'), embedded, normalised, averaged per class and renormalised: the classifier, computed once. Each
image of --split goes to the class whose embedding is closest; the output is the accuracy (one JSON line,
also written to --out when given). Images are resized (bilinear) to the model's size and normalised with
OpenAI's CLIP mean/std (--normalize to change it, e.g. 'standard' for a model trained here on other
statistics; a contrastive run's own normalisation is what its config says).
Weights: open_clip / OpenAI state dicts (.safetensors, .pt/.bin read with weights_only) or a jaxcnn workdir.
A dataset that is not prepared fails at once unless --download; wrong input (unknown names, weights of
another architecture) ends with one line on stderr and exit status 2.
"""
import argparse
import json
import logging
import sys

from jaxcnn.errors import UserError

log = logging.getLogger("jaxcnn")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m jaxcnn.zeroshot", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--model", required=True, help="registered image-text model, e.g. clip_vit_b32")
  p.add_argument("--weights", required=True, help="open_clip / OpenAI weights file, or a jaxcnn contrastive workdir")
  p.add_argument("--data", required=True, help="dataset name, e.g. cifar10, cifar100, mnist, digits_captions")
  p.add_argument("--split", default="", help="split to classify ('': the dataset's eval split)")
  p.add_argument("--templates", default="", help="template set: imagenet, cifar10, cifar100, mnist, digits")
  p.add_argument("--class_names", default="", help="comma-separated class names ('': the dataset's)")
  p.add_argument("--normalize", default="clip", help="image normalisation: clip | standard | unit | symmetric")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--data_dir", default="", help="tfds data dir / the folder of a registered dataset")
  p.add_argument("--download", action="store_true", help="prepare a missing tfds dataset")
  p.add_argument("--out", default="", help="also write the result as JSON here")
  return p


def build_config(args):
  from experiments.configs.common import base_config
  from jaxcnn.registry import create_model
  from jaxcnn.tasks.contrastive import default_config
  model = create_model(args.model)
  if not (hasattr(model, "encode_image") and hasattr(model, "encode_text")):
    raise UserError(f"--model {args.model} is not an image-text model (e.g. clip_vit_b32, clip_tiny)")
  c = base_config()
  c.task = "contrastive"
  c.model.name = args.model
  c.data.name, c.data.eval_split = args.data, args.split
  c.data.image_size, c.data.channels = int(model.image_size), 3
  c.data.context_length, c.data.normalize = int(model.context_length), args.normalize
  c.data.data_dir, c.data.download = args.data_dir, bool(args.download)
  c.contrastive = default_config()
  c.contrastive.templates = args.templates
  c.contrastive.class_names = tuple(n.strip() for n in args.class_names.split(",") if n.strip())
  c.eval.batch_size = int(args.batch_size)
  return c


def evaluate_zero_shot(config, weights: str) -> dict:
  import jax
  import numpy as np
  from jaxcnn import data as data_lib
  from jaxcnn.retrieval.encoder import check_fits
  from jaxcnn.tasks.contrastive import Contrastive
  from jaxcnn.train.finetune import load_pretrained
  from jaxcnn.train.trainer import evaluate
  info = data_lib.dataset_info(config.data.name)
  if info.field_kinds.get("label") != "class":
    raise UserError(f"zero-shot classification needs a dataset with classes; '{info.name}' has fields "
                    f"{sorted(info.field_kinds)}")
  task = Contrastive(config, info)
  batches = data_lib.eval_iterator(config.data, global_batch_size=int(config.eval.batch_size))  # fails fast
  spec = data_lib.element_spec(config.data, 2)
  abstract = jax.eval_shape(lambda: task.init(jax.random.PRNGKey(0), task.init_batch(spec)))
  variables = check_fits(load_pretrained(weights, config.model.name), abstract, weights, config.model.name)
  task.captions = False   # classification only: no retrieval outputs
  context = jax.jit(task.eval_context)(variables)   # the classifier, once
  step = jax.jit(lambda v, c, b: task.eval_step(v, b, c))
  metrics = evaluate(task, batches, lambda b: jax.device_get(step(variables, context, b)))
  return {"model": config.model.name, "weights": weights, "data": info.name,
          "split": config.data.eval_split or info.eval_split, "templates": config.contrastive.templates or "default",
          "examples": batches.num_examples, "zeroshot_accuracy": float(metrics["eval/zeroshot_accuracy"])}


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  try:
    result = evaluate_zero_shot(build_config(args), args.weights)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  line = json.dumps(result)
  print(line)
  if args.out:
    with open(args.out, "w") as f:
      f.write(line + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
