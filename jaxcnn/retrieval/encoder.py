"""The image-text model behind an index: where it comes from, how images are prepared, jitted embedding.

Two sources, both read by `jaxcnn.train.finetune.load_pretrained`:
* `--workdir=RUN`: a jaxcnn contrastive run's latest checkpoint; the model is built as the run's task
  builds it (from RUN/config.json) and images are prepared as the run's data config says (its image
  size, channels and `data.normalize` mean/std).
* `--model=NAME --weights=FILE`: a registered image-text model (clip_vit_b32, ...) with open_clip or
  OpenAI weights converted by `jaxcnn.convert.torch_to_flax`; images as CLIP prepares them (OpenAI mean/std).
Either way an image's shorter side is resized to the model's input size and the image centre-cropped, as
CLIP's own preprocessing does (bicubic for CLIP weights, as open_clip; bilinear for a run, as the project's
data pipeline resizes), and the weights must have exactly the model's parameter tree.

Embeddings are L2-normalised float32. Images are embedded in fixed-shape batches (one compilation)
sharded over the local devices along a 1-D mesh; the last batch is padded.
"""
import dataclasses
import hashlib
import json
import logging
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxcnn.errors import UserError

log = logging.getLogger("jaxcnn")


@dataclasses.dataclass
class Encoder:
  model: object            # linen Module with encode_image / encode_text
  variables: dict          # {'params': ..., other collections}
  identity: dict           # what the index records: source, model name, parameter digest
  image_hw: tuple          # (H, W) the model takes
  mean: np.ndarray         # per channel, [0, 1] units
  std: np.ndarray
  channels: int = 3
  context_length: int = 77
  resample: str = "bicubic"  # or bilinear

  def preprocess(self, image) -> np.ndarray:
    """PIL image -> float32 [H, W, C] normalised: resize the shorter side, centre crop."""
    from PIL import Image
    h, w = self.image_hw
    scale = max(h / image.height, w / image.width)
    size = (max(w, round(image.width * scale)), max(h, round(image.height * scale)))
    resample = Image.BICUBIC if self.resample == "bicubic" else Image.BILINEAR
    image = image.convert("L" if self.channels == 1 else "RGB").resize(size, resample)
    left, top = int(round((size[0] - w) / 2.0)), int(round((size[1] - h) / 2.0))
    x = np.asarray(image.crop((left, top, left + w, top + h)), np.float32).reshape(h, w, self.channels)
    return (x / 255.0 - self.mean) / self.std

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    from jaxcnn.data.tokenizer import tokenize
    tokens = tokenize(list(texts), context_length=self.context_length)
    return np.asarray(_encode_text(self.model)(self.variables, tokens))

  def image_embedder(self, batch_size: int) -> "ImageEmbedder":
    """The jitted image embedder for this batch size (made once: one compilation per encoder and size)."""
    cache = self.__dict__.setdefault("_embedders", {})
    if batch_size not in cache:
      cache[batch_size] = ImageEmbedder(self, batch_size)
    return cache[batch_size]

  def describe(self) -> str:
    return describe(self.identity)


def describe(identity: dict) -> str:
  return f"{identity['model']} from {identity['source']} (parameters {identity['params_sha256'][:12]})"


def _normalise(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _encode_text(model):
  return jax.jit(lambda v, t: _normalise(model.apply(v, t, method=model.encode_text).astype(jnp.float32)))


class ImageEmbedder:
  """Embeds preprocessed images in batches of a fixed shape, sharded over the local devices."""

  def __init__(self, encoder: Encoder, batch_size: int):
    from jaxcnn.train import sharding
    mesh = sharding.make_mesh(jax.local_devices())
    n = mesh.devices.size
    self.batch_size = -(-max(1, batch_size) // n) * n  # a multiple of the device count
    self.data = sharding.batch_sharding(mesh)
    self.variables = jax.device_put(encoder.variables, sharding.replicated(mesh))
    model = encoder.model
    self._fn = jax.jit(lambda v, x: _normalise(model.apply(v, x, method=model.encode_image).astype(jnp.float32)),
                       in_shardings=(sharding.replicated(mesh), self.data), out_shardings=self.data)

  def __call__(self, images: np.ndarray) -> jax.Array:
    """[n <= batch_size, H, W, C] -> [n, D] (a device array: the caller converts it when it needs it)."""
    n = len(images)
    padded = np.zeros((self.batch_size,) + images.shape[1:], np.float32)
    padded[:n] = images
    return self._fn(self.variables, jax.device_put(padded, self.data))[:n]


def params_digest(variables: dict) -> str:
  """sha256 over every array's path, dtype, shape and bytes: the same weights give the same digest."""
  h = hashlib.sha256()
  for path, value in sorted(traverse_util.flatten_dict(variables, sep="/").items()):
    value = np.ascontiguousarray(np.asarray(value))
    h.update(f"{path}:{value.dtype}:{value.shape};".encode())
    h.update(value.tobytes())
  return h.hexdigest()


def _check_image_text(model, name: str):
  if not (hasattr(model, "encode_image") and hasattr(model, "encode_text")):
    raise UserError(f"model {name} is not an image-text model (expected encode_image and encode_text, "
                    f"e.g. clip_vit_b32 or a contrastive run)")


def _abstract_variables(model, hw, channels: int):
  images = jnp.zeros((1, *hw, channels), jnp.float32)
  tokens = jnp.zeros((1, model.context_length), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, tokens))


def check_fits(variables: dict, abstract: dict, source: str, name: str) -> dict:
  """`variables` if they have exactly the model's arrays (paths and shapes), else a one-line UserError."""
  got = {k: np.shape(v) for k, v in traverse_util.flatten_dict(variables, sep="/").items()}
  want = {k: v.shape for k, v in traverse_util.flatten_dict(dict(abstract), sep="/").items()}
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  wrong = [f"{k} {got[k]} (expected {want[k]})" for k in sorted(set(want) & set(got)) if got[k] != want[k]]
  if missing or extra or wrong:
    detail = (wrong[:2] + [f"missing {k}" for k in missing[:2]] + [f"unexpected {k}" for k in extra[:2]])
    raise UserError(f"{source}: weights of another architecture, not {name}: {'; '.join(detail)}"
                    f"{' ...' if len(missing) + len(extra) + len(wrong) > len(detail) else ''}")
  return {k: jax.tree.map(lambda a, s: np.asarray(a, s.dtype), variables[k], abstract[k]) for k in abstract}


def from_weights(name: str, weights: str) -> Encoder:
  """A registered image-text model with converted open_clip / OpenAI weights (or a workdir's)."""
  from jaxcnn.models.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
  from jaxcnn.registry import create_model
  from jaxcnn.train.finetune import load_pretrained
  model = create_model(name)
  _check_image_text(model, name)
  hw = (model.image_size, model.image_size)
  variables = check_fits(load_pretrained(weights, name), _abstract_variables(model, hw, 3), weights, name)
  identity = {"source": os.path.abspath(weights), "kind": "weights", "model": name,
              "params_sha256": params_digest(variables)}
  return Encoder(model, variables, identity, hw, np.asarray(OPENAI_CLIP_MEAN, np.float32),
                 np.asarray(OPENAI_CLIP_STD, np.float32), 3, int(model.context_length))


def read_run_config(workdir: str):
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"{workdir}: not a jaxcnn run (expected {path}; or give --model and --weights)")
  import ml_collections
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: cannot be read as a run config ({e})") from None


def from_workdir(workdir: str) -> Encoder:
  """The model of a contrastive run, with its latest checkpoint and its data normalisation."""
  from jaxcnn.data import config as data_config, dataset_info
  from jaxcnn.tasks import get_task
  from jaxcnn.train.finetune import load_pretrained
  config = read_run_config(workdir)
  model = get_task(config, dataset_info(config.data.name)).model
  _check_image_text(model, f"{config.model.name} of run {workdir}")
  spec = data_config.resolve(config.data)
  mean, std = spec.mean_std()
  abstract = _abstract_variables(model, spec.image_hw, spec.channels)
  variables = check_fits(load_pretrained(workdir, config.model.name), abstract, workdir, config.model.name)
  if float(config.get("train", {}).get("ema_decay", 0) or 0) > 0:
    log.warning("%s keeps EMA parameters; the index uses the trained (non-EMA) ones, as fine-tuning loads them",
                workdir)
  identity = {"source": os.path.abspath(workdir), "kind": "workdir", "model": config.model.name,
              "params_sha256": params_digest(variables)}
  return Encoder(model, variables, identity, tuple(spec.image_hw), np.asarray(mean, np.float32),
                 np.asarray(std, np.float32), spec.channels, int(model.context_length), "bilinear")


def load(workdir: str = "", model: str = "", weights: str = "") -> Encoder:
  """The encoder the command line names: --workdir, or --model with --weights."""
  if workdir and (model or weights):
    raise UserError("give either --workdir or --model with --weights, not both")
  if workdir:
    return from_workdir(workdir)
  if model and weights:
    return from_weights(model, weights)
  raise UserError("which model? give --workdir=RUN (a contrastive run) or --model=NAME --weights=FILE "
                  "(e.g. --model=clip_vit_b32 --weights=ViT-B-32-quickgelu.safetensors)")


def from_identity(identity: dict, index_path: str) -> Encoder:
  """The encoder an index was built with, loaded again from where the index says it came from."""
  if not os.path.exists(identity["source"]):
    raise UserError(f"{index_path}: built with {identity['model']} from {identity['source']}, which is no longer "
                    f"there; give the same model with --workdir or --model and --weights")
  if identity["kind"] == "workdir":
    return from_workdir(identity["source"])
  return from_weights(identity["model"], identity["source"])
