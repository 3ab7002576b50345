"""Feature extractors for FID / Inception Score / conditional accuracy.

The reference extractor for FID is the ImageNet Inception-v3 of the TF/PyTorch
FID code. Its weights come from a download, and this project runs offline
without them, so every score here uses the fallback the issue names: a
classifier trained by this project on the same dataset. It is a LeNet-5 style
network (ReLU, max-pooling, SAME padding; inputs above 32x32 resized to 32x32): conv 5x5 x6 -> pool ->
conv 5x5 x16 -> pool -> 120 -> 84 -> classes. Its 84-d penultimate activations
are the FID features, its softmax gives the Inception Score and, for a
conditional model, the fraction of samples classified as the class asked for.

It trains in seconds on the run's own data configuration (same image
size, channels and value normalisation, no augmentation), so generated
images go in exactly as data batches do, and is cached on disk under
`$JAXCNN_CACHE` (default `~/.cache/jaxcnn`)`/extractors/<key>/` keyed by dataset,
image shape, normalisation and training recipe. `Extractor.name` says which
one was used (and its test accuracy); report it next to every score and never
compare scores across extractors.
"""
import copy
import json
import logging
import os
import tempfile
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from jaxcnn.layers import Conv

log = logging.getLogger("jaxcnn")

RECIPE = {"arch": "lenet5_relu", "steps": 1000, "batch_size": 128, "lr": 2e-3, "seed": 0, "version": 2}
_MEMO: Dict[str, "Extractor"] = {}


class LeNetFeatures(nn.Module):
  """LeNet-5 with ReLU, max-pooling and SAME padding; returns (logits, 84-d features).

  Images larger than 32x32 are first resized to 32x32; smaller ones are used as
  they are (SAME padding keeps the small maps; XLA:CPU convolutions are slow,
  so 16x16 digits are not upsampled).
  """
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    if x.shape[1] > 32 or x.shape[2] > 32:
      x = jax.image.resize(x, (x.shape[0], 32, 32, x.shape[-1]), "linear")
    x = nn.max_pool(nn.relu(Conv(6, (5, 5), padding="SAME", name="c1")(x)), (2, 2), (2, 2))
    x = nn.max_pool(nn.relu(Conv(16, (5, 5), padding="SAME", name="c3")(x)), (2, 2), (2, 2))
    x = nn.relu(nn.Dense(120, name="c5")(x.reshape((x.shape[0], -1))))
    features = nn.relu(nn.Dense(84, name="f6")(x))
    return nn.Dense(self.num_classes, name="out")(features), features


class Extractor:
  """A trained classifier: `logits_and_features(images)` in chunks, on numpy arrays."""

  def __init__(self, name: str, num_classes: int, params, test_accuracy: float):
    self.name, self.test_accuracy = name, test_accuracy
    self.model = LeNetFeatures(num_classes)
    self.params = jax.tree.map(jnp.asarray, params)
    self._apply = jax.jit(lambda p, x: self.model.apply({"params": p}, x))

  def logits_and_features(self, images, chunk: int = 500) -> Tuple[np.ndarray, np.ndarray]:
    logits, features = [], []
    for i in range(0, len(images), chunk):
      lo, fe = self._apply(self.params, jnp.asarray(images[i:i + chunk]))
      logits.append(np.asarray(lo))
      features.append(np.asarray(fe))
    return np.concatenate(logits), np.concatenate(features)


def cache_root() -> str:
  return os.environ.get("JAXCNN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxcnn")


def extractor_key(data_cfg) -> str:
  """Dataset, image shape and normalisation (resolved: 0 = native is spelled out), and the recipe."""
  from jaxcnn import data as data_lib
  spec = data_lib.resolve(data_cfg)
  size, ch = spec.image_size, spec.channels
  return f"{spec.name}-{size}x{size}x{ch}-{spec.normalize}-{RECIPE['arch']}-v{RECIPE['version']}"


def get_extractor(data_cfg, cache_dir: str = None) -> Extractor:
  """The classifier for `data_cfg`'s dataset and image format: from memory, from disk, or trained now."""
  key = extractor_key(data_cfg)
  directory = os.path.join(cache_dir or cache_root(), "extractors", key)
  if directory in _MEMO:
    return _MEMO[directory]
  from jaxcnn import data as data_lib
  num_classes = int(data_lib.dataset_info(data_cfg.name).num_classes)
  loaded = _load(directory)
  if loaded is None:
    log.info("training the FID/accuracy feature extractor %s (cached in %s)", key, directory)
    params, accuracy = train_classifier(data_cfg, num_classes)
    _save(directory, params, {"key": key, "test_accuracy": accuracy, "recipe": RECIPE})
  else:
    params, accuracy = loaded
  name = f"{RECIPE['arch']} trained by jaxcnn on {key.rsplit('-', 2)[0]} (test accuracy {accuracy:.3f})"
  _MEMO[directory] = Extractor(name, num_classes, params, accuracy)
  return _MEMO[directory]


def _plain_data_config(data_cfg):
  """The run's data config without augmentation: the extractor sees images as the eval split shows them."""
  cfg = copy.deepcopy(data_cfg)
  cfg.augment = ""
  return cfg


def split_arrays(data_cfg, split=None):
  """(images, labels) of a whole split as the eval pipeline yields them (no augmentation), as numpy."""
  from jaxcnn import data as data_lib
  images, labels = [], []
  for batch in data_lib.eval_iterator(data_cfg, split, global_batch_size=256, process_index=0, process_count=1):
    keep = np.asarray(batch["mask"]) > 0
    images.append(np.asarray(batch["image"])[keep])
    labels.append(np.asarray(batch["label"])[keep])
  return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def train_classifier(data_cfg, num_classes: int, recipe: Dict[str, Any] = None):
  """Trains LeNetFeatures on the train split; returns (params as numpy, eval-split accuracy).

  The split is read once into memory and shuffled per epoch with numpy: a few
  seconds for the small datasets this fallback is meant for.
  """
  from jaxcnn import data as data_lib
  recipe = dict(RECIPE, **(recipe or {}))
  cfg = _plain_data_config(data_cfg)
  spec = data_lib.resolve(cfg)
  images, labels = split_arrays(cfg, spec.train_split)
  model = LeNetFeatures(num_classes)
  params = model.init(jax.random.PRNGKey(recipe["seed"]), jnp.zeros((1,) + images.shape[1:]))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(recipe["lr"], recipe["steps"]))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, images, labels):
    def loss_fn(p):
      logits, _ = model.apply({"params": p}, images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(recipe["seed"])
  bs = min(int(recipe["batch_size"]), len(labels))
  order, pos = rng.permutation(len(labels)), 0
  for _ in range(recipe["steps"]):
    if pos + bs > len(order):
      order, pos = rng.permutation(len(labels)), 0
    idx = order[pos:pos + bs]
    pos += bs
    params, opt_state = step(params, opt_state, jnp.asarray(images[idx]), jnp.asarray(labels[idx]))

  test_images, test_labels = split_arrays(cfg, spec.eval_split)
  predict = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x)[0], -1))
  pred = np.concatenate([np.asarray(predict(params, jnp.asarray(test_images[i:i + 500])))
                         for i in range(0, len(test_labels), 500)])
  return jax.tree.map(np.asarray, params), float(np.mean(pred == test_labels))


def _load(directory):
  path = os.path.join(directory, "params.msgpack")
  info_path = os.path.join(directory, "info.json")
  if not (os.path.exists(path) and os.path.exists(info_path)):
    return None
  try:
    with open(path, "rb") as f:
      params = serialization.msgpack_restore(f.read())
    with open(info_path) as f:
      info = json.load(f)
    return params, float(info["test_accuracy"])
  except (OSError, ValueError, KeyError) as e:
    log.warning("ignoring the unreadable cached extractor in %s (%s); training it again", directory, e)
    return None


def _save(directory, params, info):
  """Atomic write (temp file + rename): concurrent runs never see half a file."""
  os.makedirs(directory, exist_ok=True)
  for name, payload in (("params.msgpack", serialization.msgpack_serialize(params)),
                        ("info.json", json.dumps(info, indent=2).encode())):
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    with os.fdopen(fd, "wb") as f:
      f.write(payload)
    os.replace(tmp, os.path.join(directory, name))
