"""A model's layer activation and d(score)/d(activation), for any linen model of the zoo, unedited.

Target layers are submodules named by their path ('layer4_1', 'backbone/layer4_1',
'blocks_11/norm1'): the output of that submodule's `__call__`. They are reached with
flax's `nn.intercept_methods`: an interceptor returns the layer's output plus a zero
perturbation `delta` and keeps the output; d(score)/d(delta) is then the gradient at
the activation (what `Module.perturb` gives, without the model having to call it).
Layers inside `nn.scan` (ViT with `scan_layers=True`) cannot be targeted: unscan first.

Token layers ([B, N, C]: ViT, Conformer's transformer branch) are shown as a grid:
the prefix tokens (class, distillation) are dropped and the rest reshaped to the
image's aspect ratio, as pytorch-grad-cam's `reshape_transform` does for ViTs.

Scores (`Target`): a class logit (classification), the sum of a class's logits over
the pixels predicted as that class (segmentation; pytorch-grad-cam's
SemanticSegmentationTarget with the predicted mask), or the score of the detection
that best overlaps a reference box with the same label (IoU >= 0.5; its
FasterRCNNBoxScoreTarget). All are per image: [B] from one batched forward.
"""
import dataclasses
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError, unknown

# Family defaults (model class -> layer), where "the last module with a spatial output" is not the
# usual choice. ViT: pytorch-grad-cam's blocks[-1].norm1 (the final norm's patch tokens get no gradient
# through a class-token head). UNet: the last decoder stage (not the 1x1 classifier).
DEFAULT_LAYERS = {
    "ViT": lambda m: f"blocks_{m.depth - 1}/norm1",
    "UNet": lambda m: "dec1",
}


@dataclasses.dataclass(frozen=True)
class Target:
  """What is explained: `kind` 'class' (logits [B, K]), 'pixels' (segmentation {'out': [B, H, W, K]})
  or 'box' (a detector with `postprocess`). `index` [B] int classes (model labels); `boxes` [B, 4] xyxy
  reference boxes for 'box'."""
  kind: str
  index: Any
  boxes: Any = None

  def tree_flatten(self):
    return (self.index, self.boxes), self.kind

  @classmethod
  def tree_unflatten(cls, kind, children):
    return cls(kind, *children)


jax.tree_util.register_pytree_node(Target, Target.tree_flatten, Target.tree_unflatten)
TARGET_KINDS = ("class", "pixels", "box")


def apply_fn(model: nn.Module) -> Callable:
  """The eval-mode forward `(variables, x) -> output` the methods differentiate."""
  return lambda variables, x: model.apply(variables, x, train=False)


def _path(module) -> str:
  return "/".join(module.path) if module.scope is not None else ""


def _array_of(out):
  """A module's array output, or the first element of a tuple output ((x, x_t) blocks, ViT's (x, None))."""
  if isinstance(out, tuple) and out and isinstance(out[0], jax.Array):
    return out[0]
  return out if isinstance(out, jax.Array) else None


def _interceptor(layer: str, store: list, delta=None):
  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    a = _array_of(out)
    if context.method_name == "__call__" and not store and a is not None and _path(context.module) == layer:
      store.append(a)
      if delta is not None:
        a = a + delta.astype(a.dtype)
        out = (a, *out[1:]) if isinstance(out, tuple) else a
    return out
  return intercept


def layer_shapes(model: nn.Module, variables, x) -> dict:
  """{path: output shape} of every submodule call with a map [B, h, w, C] or tokens [B, N, C], in order
  of completion (a block after its layers), from an abstract forward."""
  found = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path, a = _path(context.module), _array_of(out)
    if (context.method_name == "__call__" and path and a is not None and a.ndim in (3, 4)
        and a.shape[0] == x.shape[0]):
      found.setdefault(path, tuple(a.shape))
      found[path] = found.pop(path)  # re-insert: order of (last) completion
    return out

  def run(v, x):
    with nn.intercept_methods(record):
      return apply_fn(model)(v, x)

  jax.eval_shape(run, variables, x)
  return found


def default_layer(model: nn.Module, shapes: dict) -> str:
  """The family default: the table above, else the last module whose output is a spatial map, within
  the `backbone` submodule when there is one (segmentation and detection models: its last stage)."""
  rule = DEFAULT_LAYERS.get(type(model).__name__)
  if rule is not None and rule(model) in shapes:
    return rule(model)
  maps = [p for p, s in shapes.items() if len(s) == 4]
  maps = [p for p in maps if p.startswith("backbone/")] or maps
  if not maps:
    raise UserError(f"model {type(model).__name__} has no layer with a spatial output; name one with --layer")
  return maps[-1]


def resolve_layer(model: nn.Module, variables, x, layer: Optional[str]) -> str:
  """`layer` checked against the model's layers (UserError listing them), or the family default."""
  shapes = layer_shapes(model, variables, x)
  if not layer:
    return default_layer(model, shapes)
  if layer not in shapes:
    raise unknown("target layer", layer, _shallowest(shapes))
  return layer


def _shallowest(paths, limit: int = 40) -> list:
  """The paths up to the deepest nesting level that keeps at most `limit` of them (blocks before layers)."""
  depths = sorted({p.count("/") for p in paths})
  keep = [p for p in paths if p.count("/") <= depths[0]]
  for d in depths[1:]:
    deeper = [p for p in paths if p.count("/") <= d]
    if len(deeper) > limit:
      break
    keep = deeper
  return keep


def to_grid(a: jax.Array, image_hw) -> jax.Array:
  """[B, h, w, C] as is; tokens [B, N, C] -> [B, h, w, C] at the image's aspect ratio, prefix tokens dropped."""
  if a.ndim == 4:
    return a
  n, ratio = a.shape[1], image_hw[0] / image_hw[1]
  for prefix in range(0, min(n, 9)):
    h = round(math.sqrt((n - prefix) * ratio))
    if h > 0 and (n - prefix) % h == 0 and abs((n - prefix) // h * ratio - h) <= 1:
      return a[:, prefix:].reshape(a.shape[0], h, (n - prefix) // h, a.shape[2])
  raise UserError(f"cannot arrange {n} tokens as a grid of the image's aspect ratio; choose a spatial layer")


def score(model: nn.Module, out, target: Target, image_hw) -> jax.Array:
  """[B] scores of `target` in the model output."""
  if target.kind == "class":
    logits = out["logits"] if isinstance(out, dict) else out
    return jnp.take_along_axis(logits, target.index[:, None], axis=1)[:, 0]
  if target.kind == "pixels":
    logits = out["out"] if isinstance(out, dict) else out
    mask = jnp.argmax(logits, axis=-1) == target.index[:, None, None]
    chosen = jnp.take_along_axis(logits, target.index[:, None, None, None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(mask, chosen, 0.0), axis=(1, 2))
  if target.kind == "box":
    det = model.postprocess(out, image_hw)
    match = det["valid"] & (det["labels"] == target.index[:, None])
    match &= _iou(det["boxes"], target.boxes[:, None]) >= 0.5
    return jnp.max(jnp.where(match, det["scores"], 0.0), axis=1)
  raise unknown("target kind", target.kind, TARGET_KINDS)


def _iou(a, b):
  """IoU of xyxy boxes, broadcasting."""
  lt, rb = jnp.maximum(a[..., :2], b[..., :2]), jnp.minimum(a[..., 2:], b[..., 2:])
  inter = jnp.prod(jnp.clip(rb - lt, 0.0), axis=-1)
  area = lambda z: jnp.prod(jnp.clip(z[..., 2:] - z[..., :2], 0.0), axis=-1)
  return inter / jnp.maximum(area(a) + area(b) - inter, 1e-9)


def scores(model: nn.Module, variables, x, target: Target, forward: Optional[Callable] = None) -> jax.Array:
  """[B] target scores of images `x` (no layer involved)."""
  forward = forward or apply_fn(model)
  return score(model, forward(variables, x), target, x.shape[1:3])


def activation_and_grad(model: nn.Module, variables, x, target: Target, layer: str,
                        forward: Optional[Callable] = None):
  """(activation, d(score)/d(activation), scores [B]) of the layer at path `layer` (raw shapes).

  Images are independent in eval mode, so the gradient of the summed scores is each image's own.
  """
  forward = forward or apply_fn(model)

  def run(delta):
    store = []
    with nn.intercept_methods(_interceptor(layer, store, delta)):
      out = forward(variables, x)
    if not store:
      raise UserError(f"layer '{layer}' was not called with an array output")
    s = score(model, out, target, x.shape[1:3])
    return jnp.sum(s), (store[0], s)

  shape = jax.eval_shape(lambda: run(None)[1][0])
  grad, (act, s) = jax.grad(run, has_aux=True)(jnp.zeros(shape.shape, jnp.float32))
  return act, grad, s


def layer_activation(model: nn.Module, variables, x, layer: str, forward: Optional[Callable] = None):
  """The activation of the layer at path `layer` (no gradient)."""
  forward = forward or apply_fn(model)
  store = []
  with nn.intercept_methods(_interceptor(layer, store)):
    forward(variables, x)
  return store[0]


def check_classes(index, num_classes: int, what: str = "target class"):
  """UserError for class indices outside [0, num_classes)."""
  index = np.asarray(index)
  bad = index[(index < 0) | (index >= num_classes)]
  if bad.size:
    raise UserError(f"{what} {int(bad[0])} is out of range: the model has classes 0..{num_classes - 1}")
