"""Fine-tuning: start from pretrained weights, re-initialise what does not fit, optionally freeze the backbone.

    --config.finetune.weights=resnet50-torchvision.pth     # a torchvision / timm state dict (.pth, .safetensors)
    --config.finetune.weights=runs/pretrain                # or a jaxcnn workdir (its latest checkpoint)
    --config.finetune.weights=ViT-B_16.npz                 # or a big_vision / vision_transformer ViT .npz
    --config.finetune.converter_name=vit_base_patch16_224  # the weights' architecture, when the model name differs
    --config.finetune.into=backbone                        # load into this parameter subtree ('' = whole model)
    --config.finetune.from_subtree=visual                  # load only this subtree of the weights ('' = all)
    --config.finetune.freeze='^(?!fc/)'                    # regex over 'a/b/kernel' paths: matching params stay fixed

Whole model (`into` empty): every pretrained array whose path and shape match the
model is loaded; an array whose shape differs (the classifier head for a new
`num_classes`) keeps its fresh initialisation, and the run logs which ones. A
pretrained array the model does not have, or a model parameter the weights lack
(other than re-initialised ones), is an error.

Into a subtree (`into='backbone'`): a classification model's weights (e.g.
torchvision's resnet50 with `converter_name=resnet50`) go to `params['backbone']`
and `batch_stats['backbone']` (every collection) of a dense model such as
`deeplabv3_resnet50`. Arrays the weights lack (the new heads) keep their
initialisation; weights with no place in the model (the classifier's `fc`) are
skipped; both are listed in the log. Nothing loaded at all is an error.

Weights are first brought to the model's layout by the hook the weights'
architecture registers (`adapt_pretrained`, found with
`jaxcnn.registry.pretrained_adapter`; e.g. ViT's scanned blocks and resampled
position embedding), so this file knows no model. Weights with integer, boolean
or non-finite arrays are refused (`jaxcnn.convert.check_weights`).
"""
import logging
import os
import re

import jax
import numpy as np
import optax
from flax import traverse_util

from jaxcnn.convert import check_weights
from jaxcnn.errors import UserError
from jaxcnn.registry import pretrained_adapter

log = logging.getLogger("jaxcnn")


def load_pretrained(weights: str, model_name: str) -> dict:
  """Variables {'params': ..., 'batch_stats': ...} as numpy from a torch file or a jaxcnn workdir."""
  if not os.path.exists(weights):
    raise UserError(f"finetune.weights: no such file or directory: {weights}")
  if os.path.isdir(weights):
    return check_weights(_from_workdir(weights), weights)
  if weights.endswith(".npz"):  # big_vision / vision_transformer ViT checkpoints
    from jaxcnn.convert.vit import load_big_vision_npz
    return check_weights(load_big_vision_npz(weights, model_name), weights)
  from jaxcnn.convert import load_torch_state_dict, torch_to_flax
  return check_weights(torch_to_flax(model_name, load_torch_state_dict(weights)), weights)


def _from_workdir(path):
  import orbax.checkpoint as ocp
  directory = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
  mngr = ocp.CheckpointManager(os.path.abspath(directory), item_names=("state",))
  step = mngr.latest_step()
  if step is None:
    raise UserError(f"finetune.weights: no checkpoint in {directory}")
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  return {"params": state["params"], **state.get("model_state", {})}


def merge(fresh: dict, pretrained: dict, what: str) -> dict:
  """`fresh` with every array of `pretrained` of the same path and shape put in."""
  flat_fresh = traverse_util.flatten_dict(fresh, sep="/")
  flat_pre = traverse_util.flatten_dict(pretrained, sep="/")
  unknown = sorted(set(flat_pre) - set(flat_fresh))
  if unknown:
    raise UserError(f"finetune.weights has {what} the model lacks: {', '.join(unknown[:5])}"
                    f"{' ...' if len(unknown) > 5 else ''}")
  missing = sorted(set(flat_fresh) - set(flat_pre))
  if missing:
    raise UserError(f"finetune.weights lacks {what} of the model: {', '.join(missing[:5])}"
                    f"{' ...' if len(missing) > 5 else ''}")
  merged, reinit = {}, []
  for key, value in flat_fresh.items():
    new = np.asarray(flat_pre[key])
    if new.shape != value.shape:
      reinit.append(f"{key} {tuple(new.shape)}->{tuple(value.shape)}")
      merged[key] = value
    else:
      merged[key] = jax.device_put(new.astype(value.dtype), value.sharding)
  if reinit:
    log.info("fine-tuning: re-initialised (shape differs from the weights): %s", ", ".join(reinit))
  return traverse_util.unflatten_dict(merged, sep="/")


def _subtree(tree: dict, path: str):
  """The subtree of `tree` at 'a/b' ('' is the whole tree), or None."""
  for part in filter(None, path.split("/")):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return tree if isinstance(tree, dict) else None


def _modules(keys) -> str:
  """'a/b/kernel', 'a/b/bias', 'c/scale' -> 'a/b, c': array paths listed by their module."""
  return ", ".join(sorted({k.rpartition("/")[0] or k for k in keys}))


def merge_into(fresh: dict, pretrained: dict, into: str):
  """`fresh` with `pretrained`'s arrays put under the subtree `into`, leniently.

  Arrays of the same path (below `into`) and shape are loaded; the rest of `fresh`
  keeps its initialisation. Returns (merged, loaded, kept, skipped, reinit): lists of
  'a/b/kernel' paths (model paths for kept, weights' paths for skipped and reinit).
  """
  flat_fresh = traverse_util.flatten_dict(fresh, sep="/") if fresh else {}
  flat_pre = traverse_util.flatten_dict(pretrained, sep="/") if pretrained else {}
  prefix = f"{into.strip('/')}/" if into.strip("/") else ""
  merged, loaded, skipped, reinit = dict(flat_fresh), [], [], []
  for key, new in flat_pre.items():
    dest = prefix + key
    if dest not in flat_fresh:
      skipped.append(key)
      continue
    new, value = np.asarray(new), flat_fresh[dest]
    if new.shape != value.shape:
      reinit.append(f"{dest} {tuple(new.shape)}->{tuple(value.shape)}")
    else:
      merged[dest] = jax.device_put(new.astype(value.dtype), value.sharding)
      loaded.append(dest)
  kept = sorted(set(flat_fresh) - set(loaded))
  out = traverse_util.unflatten_dict(merged, sep="/") if merged else {}
  return out, loaded, kept, sorted(skipped), reinit


def _apply_into(state, pre: dict, into: str, source: str):
  """Loads a (classification) model's variables into the subtree `into` of every collection."""
  collections = {"params": state.params, **state.model_state}
  if _subtree(state.params, into) is None:
    top = ", ".join(sorted(state.params)) or "none"
    raise UserError(f"finetune.into '{into}' is not a subtree of the model's parameters (top level: {top})")
  out, n_loaded, kept, skipped, reinit = {}, 0, [], [], []
  for name, tree in collections.items():
    merged, loaded, k, s, r = merge_into(tree, pre.get(name, {}), into)
    out[name] = merged
    n_loaded += len(loaded)
    kept += [f"{name}:{x}" for x in k]
    skipped += [f"{name}:{x}" for x in s]
    reinit += [f"{name}:{x}" for x in r]
  skipped += [f"{name}:{x}" for name in sorted(set(pre) - set(collections))
              for x in traverse_util.flatten_dict(pre[name], sep="/")]
  if n_loaded == 0:
    raise UserError(f"finetune.weights {source}: no array fits finetune.into '{into}' "
                    f"(weights have {_modules(skipped[:5]) or 'nothing'}; is finetune.converter_name right?)")
  log.info("fine-tuning: loaded %d arrays into '%s'", n_loaded, into)
  if kept:
    log.info("fine-tuning: kept their initialisation (absent from the weights): %s", _modules(kept))
  if reinit:
    log.info("fine-tuning: re-initialised (shape differs from the weights): %s", ", ".join(reinit))
  if skipped:
    log.info("fine-tuning: skipped (no place in the model): %s", _modules(skipped))
  return out.pop("params"), out


def apply_pretrained(state, finetune_cfg, model_name: str):
  """The fresh train state with the pretrained variables merged in (EMA starts from them too).

  `finetune_cfg.into` ('' by default: the whole model) names a parameter subtree, e.g.
  'backbone', into which a classification model's weights go; see the module docstring.
  """
  into = (getattr(finetune_cfg, "into", "") or "").strip("/")
  source = finetune_cfg.converter_name or model_name
  pre = load_pretrained(finetune_cfg.weights, source)
  part = (getattr(finetune_cfg, "from_subtree", "") or "").strip("/")
  if part:   # only this subtree of the weights, e.g. a CLIP's image tower 'visual' for LiT
    pre = {k: t for k, t in ((k, _subtree(v, part)) for k, v in pre.items()) if t is not None}
    if "params" not in pre:
      raise UserError(f"finetune.from_subtree '{part}' is not a subtree of the parameters in {finetune_cfg.weights}")
  target = {"params": state.params, **state.model_state}
  if into:
    target = {k: v for k, v in ((k, _subtree(v, into)) for k, v in target.items()) if v is not None}
  # The weights' architecture knows its layout; without a converter name it is the model's own.
  adapt = pretrained_adapter(source) or (None if into else pretrained_adapter(model_name))
  if adapt is not None:
    pre = adapt(pre, target)
  if into:
    params, model_state = _apply_into(state, pre, into, finetune_cfg.weights)
  else:
    params = merge(state.params, pre["params"], "parameters")
    model_state = {k: merge(v, pre.get(k, {}), k) for k, v in state.model_state.items()}
  ema = params if state.ema_params else state.ema_params
  log.info("fine-tuning from %s", finetune_cfg.weights)
  return state.replace(params=params, model_state=model_state, ema_params=ema)


def freeze(tx: optax.GradientTransformation, pattern: str) -> optax.GradientTransformation:
  """Parameters whose 'a/b/kernel' path matches `pattern` get no updates (and no optimizer state)."""
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise UserError(f"finetune.freeze is not a valid regular expression: {e}") from None

  def labels(params):
    flat = traverse_util.flatten_dict(params, sep="/")
    out = {k: "frozen" if regex.search(k) else "train" for k in flat}
    if all(v == "frozen" for v in out.values()):
      raise UserError(f"finetune.freeze '{pattern}' freezes every parameter")
    return traverse_util.unflatten_dict(out, sep="/")

  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
