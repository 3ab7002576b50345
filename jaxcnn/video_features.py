"""Cached frame features for long videos: run the frame encoder once, then train only the temporal head.

    python -m jaxcnn.video_features cache --exp=NAME --out=DIR [--config.KEY=VALUE ...]
    python -m jaxcnn.video_features train --exp=NAME --features=DIR [--workdir=WD] [--config.KEY=VALUE ...]

`cache` builds experiment NAME's video model (`jaxcnn.models.video`, e.g. cnn_lstm) with the variables a
run of it starts from (the seed's initialisation, then `finetune.weights` when set: ImageNet weights with
`finetune.into=encoder`, or a finished run's workdir to reuse its trained encoder) and runs the model's
`encode` over every clip of the training and the eval split, once, in order and without augmentation
(the eval pipeline: T = data.frames frames sampled uniformly, resized and normalised as in training). It
writes

    DIR/index.json            what was cached: dataset, splits read, frames, image size, model options,
                              feature shape [T, ...] and dtype, class names, the count per split
    DIR/train/features.npy    float32 [N, T, F] (or [N, T, h, w, F] for the tam head), written and read
    DIR/train/labels.npy      int32 [N]        as memory maps, so long videos need not fit in memory
    DIR/eval/features.npy, DIR/eval/labels.npy

`train` registers DIR as a dataset (`register_features`) and runs the same trainer, task and config with
the model built with `input='features'`: no encoder, the head reading the cached features from the batch
field 'frame_features'. Any video model's head can train on a cache of the right kind (pooled [T, F]
features; [T, h, w, F] maps for the tam head), e.g. an LSTM head on the frozen encoder of a cnn_avg run. The head's parameter names are the end-to-end model's, so its weights plus the
encoder's are the full model (what `tests/models/test_video.py` checks: the same logits both ways). The
features were computed once, so there is no data augmentation in this mode (data.augment must be '').
The dataset's examples carry a 1 x 1 zero 'image' besides the features because every dataset of the
pipeline has an image; the task reads only 'frame_features'.
"""
import json
import os
import sys
from typing import Optional

import jax
import numpy as np

from jaxcnn.errors import UserError

INDEX = "index.json"
SPLITS = ("train", "eval")
ZERO_IMAGE_SHAPE = (1, 1, 1)


def initial_variables(config):
  """(task, variables) of a fresh run of `config`: the trainer's initialisation, then finetune.weights if set."""
  from jaxcnn import data as data_lib  # pylint: disable=g-import-not-at-top
  from jaxcnn.tasks import TrainState, get_task  # pylint: disable=g-import-not-at-top
  from jaxcnn.train import finetune  # pylint: disable=g-import-not-at-top
  task = get_task(config, data_lib.dataset_info(config.data.name))
  spec = data_lib.element_spec(config.data, int(config.train.batch_size))
  key = jax.random.PRNGKey(int(config.train.seed))
  variables = dict(task.init(jax.random.fold_in(key, 0), task.init_batch(spec)))
  params = variables.pop("params")
  weights = config.get("finetune") and config.finetune.weights
  if weights:
    state = TrainState(step=np.int32(0), params=params, model_state=variables, opt_state={}, ema_params={},
                       rng=jax.random.fold_in(key, 1))
    state = finetune.apply_pretrained(state, config.finetune, config.model.name)
    params, variables = state.params, state.model_state
  return task, {"params": params, **variables}


def cache_features(config, out_dir: str, batch_size: Optional[int] = None) -> dict:
  """Runs the frame encoder of `config`'s model over its training and eval splits into `out_dir`; the index."""
  from jaxcnn import data as data_lib  # pylint: disable=g-import-not-at-top
  spec = data_lib.resolve(config.data)
  if not spec.frames:
    raise UserError(f"caching frame features needs a video dataset; '{spec.name}' has images (data.frames = 0)")
  task, variables = initial_variables(config)
  model = task.model
  if getattr(model, "input", None) != "clips":
    raise UserError(f"model '{config.model.name}' is not a video model on clips (jaxcnn.models.video with "
                    "input='clips'); it has no frame encoder to cache")
  encode = jax.jit(lambda v, x: model.apply(v, x, train=False, method=type(model).encode))
  batch_size = int(batch_size or config.eval.batch_size)
  index = {"dataset": spec.name, "frames": spec.frames, "image_size": list(spec.image_hw),
           "model": config.model.to_dict(), "num_classes": task.num_classes,
           "class_names": list(spec.info.class_names), "splits": {}, "source_splits": {}}
  for name, split in zip(SPLITS, (spec.train_split, spec.eval_split)):
    batches = data_lib.eval_iterator(config.data, split, global_batch_size=batch_size)
    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    features = labels = None
    done = 0
    for batch in batches:
      out = np.asarray(jax.device_get(encode(variables, batch["image"])), np.float32)
      keep = np.asarray(batch["mask"]) > 0
      if features is None:
        features = np.lib.format.open_memmap(os.path.join(folder, "features.npy"), mode="w+", dtype=np.float32,
                                             shape=(batches.num_examples,) + out.shape[1:])
        labels = np.zeros(batches.num_examples, np.int32)
        index["feature_shape"] = list(out.shape[1:])
      n = int(keep.sum())
      features[done:done + n] = out[keep]
      labels[done:done + n] = np.asarray(batch["label"])[keep]
      done += n
    features.flush()
    np.save(os.path.join(folder, "labels.npy"), labels)
    index["splits"][name], index["source_splits"][name] = done, split
  index["feature_dtype"] = "float32"
  with open(os.path.join(out_dir, INDEX), "w") as f:
    json.dump(index, f, indent=2)
  return index


class FeatureSource:
  """One split of a feature cache: {'image': 1x1 zeros, 'label', 'frame_features': float32 [T, ...]}."""

  def __init__(self, folder: str, name: str):
    paths = [os.path.join(folder, f) for f in ("features.npy", "labels.npy")]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
      raise UserError(f"feature cache '{name}': missing {missing}; make it with python -m jaxcnn.video_features cache")
    self.features = np.load(paths[0], mmap_mode="r")
    self.labels = np.load(paths[1])
    self.name = name
    self.extra_fields = {"frame_features": (self.features.shape[1:], np.float32)}
    self._image = np.zeros(ZERO_IMAGE_SHAPE, np.uint8)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index) -> dict:
    index = int(index)
    return {"image": self._image, "label": int(self.labels[index]),
            "frame_features": np.asarray(self.features[index], np.float32)}


def read_index(out_dir: str) -> dict:
  path = os.path.join(out_dir, INDEX)
  if not os.path.exists(path):
    raise UserError(f"no feature cache in {out_dir} (no {INDEX}); make one with python -m jaxcnn.video_features cache")
  with open(path) as f:
    return json.load(f)


def register_features(out_dir: str) -> str:
  """Registers the cache in `out_dir` as a dataset (splits 'train', 'eval'); returns its name."""
  from jaxcnn.data import sources  # pylint: disable=g-import-not-at-top
  index = read_index(out_dir)
  name = f"frame_features:{os.path.abspath(out_dir)}"
  info = sources.DatasetInfo(name, int(index["num_classes"]), ZERO_IMAGE_SHAPE, False, "train", "eval", None,
                             splits=SPLITS, class_names=tuple(index.get("class_names") or ()))
  sources.register_source(info, lambda split, data_dir: FeatureSource(os.path.join(out_dir, split), name),
                          stats=((0.0,), (1.0,)))
  return name


def head_config(config, out_dir: str):
  """`config` for training the head alone on the cache in `out_dir` (a copy; see the module doc)."""
  index = read_index(out_dir)
  config = config.copy_and_resolve_references()
  if config.data.augment not in ("", "none"):
    raise UserError(f"data.augment={config.data.augment!r}: cached features were computed once without "
                    "augmentation; set data.augment='' to train on them")
  with config.unlocked():
    config.data.name = register_features(out_dir)
    config.data.image_size, config.data.frames, config.data.channels = 0, 0, 0
    config.data.train_split, config.data.eval_split, config.data.data_dir = "", "", ""
    config.model.input = "features"
  # Any head can train on any cache of the right kind: pooled [T, F] features, or [T, h, w, F] maps for TAM.
  from jaxcnn.registry import model_option_defaults  # pylint: disable=g-import-not-at-top
  head = config.model.get("head", model_option_defaults(config.model.name).get("head"))
  want = 4 if head == "tam" else 2
  if len(index["feature_shape"]) != want:
    raise UserError(f"the cache in {out_dir} holds features of shape {index['feature_shape']} per clip (model "
                    f"'{index['model']['name']}'); head '{head}' of model '{config.model.name}' needs "
                    f"{'[T, h, w, F] maps' if want == 4 else '[T, F] pooled features'}")
  return config


USAGE = ("usage: python -m jaxcnn.video_features cache --exp=NAME --out=DIR [--config.KEY=VALUE ...]\n"
         "       python -m jaxcnn.video_features train --exp=NAME --features=DIR [--workdir=WD] [--config.KEY=VALUE ...]")


def main(argv) -> int:
  if not argv or argv[0] not in ("cache", "train"):
    raise UserError(f"want a command, cache or train\n{USAGE}")
  command, rest = argv[0], argv[1:]
  own = {a.split("=", 1)[0][2:]: a.split("=", 1)[1] for a in rest if a.startswith(("--out=", "--features="))}
  rest = [a for a in rest if not a.startswith(("--out=", "--features="))]
  from experiments.configs import get_experiment  # pylint: disable=g-import-not-at-top
  from experiments.run import apply_overrides, parse_args  # pylint: disable=g-import-not-at-top
  options, overrides = parse_args(rest)
  if "exp" not in options:
    raise UserError(f"--exp is required\n{USAGE}")
  config, _ = get_experiment(options["exp"])
  apply_overrides(config, overrides)
  if command == "cache":
    if "out" not in own:
      raise UserError(f"cache needs --out=DIR\n{USAGE}")
    index = cache_features(config, own["out"])
    print(f"cached {index['splits']} clips' features {index['feature_shape']} in {os.path.abspath(own['out'])}")
    return 0
  if "features" not in own:
    raise UserError(f"train needs --features=DIR (a cache made by the cache command)\n{USAGE}")
  from jaxcnn.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  from jaxcnn.train.trainer import validate  # pylint: disable=g-import-not-at-top
  config = head_config(config, own["features"])
  validate(config)
  workdir = options.get("workdir") or os.path.join("workdirs", f"{options['exp']}-head")
  summary = train_and_evaluate(config, workdir)
  key = summary.get("headline_metric")
  print(f"final {key}: {summary.get(key)} (head on cached features, {summary['step']} steps); outputs in "
        f"{os.path.abspath(workdir)}")
  return 0


if __name__ == "__main__":
  from experiments.run import _setup_logging  # pylint: disable=g-import-not-at-top
  _setup_logging()
  try:
    sys.exit(main(sys.argv[1:]))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
