"""Fine-tuning: start from pretrained weights, re-initialise what does not fit, optionally freeze the backbone.

    --config.finetune.weights=resnet50-torchvision.pth     # a torchvision / timm state dict (.pth, .safetensors)
    --config.finetune.weights=runs/pretrain                # or a jaxcnn workdir (its latest checkpoint)
    --config.finetune.weights=ViT-B_16.npz                 # or a big_vision / vision_transformer ViT .npz
    --config.finetune.converter_name=vit_base_patch16_224  # the weights' architecture, when the model name differs
    --config.finetune.freeze='^(?!fc/)'                    # regex over 'a/b/kernel' paths: matching params stay fixed

Every pretrained array whose path and shape match the model is loaded; an array
whose shape differs (the classifier head for a new `num_classes`) keeps its fresh
initialisation, and the run logs which ones. A pretrained array the model does not
have, or a model parameter the weights lack (other than re-initialised ones), is an error.
ViT weights are first brought to the model's layout (`fit_vit_layout`): scanned
blocks, and the position embedding resampled to the model's resolution.
"""
import logging
import os
import re

import jax
import numpy as np
import optax
from flax import traverse_util

from jaxcnn.errors import UserError

log = logging.getLogger("jaxcnn")


def load_pretrained(weights: str, model_name: str) -> dict:
  """Variables {'params': ..., 'batch_stats': ...} as numpy from a torch file or a jaxcnn workdir."""
  if not os.path.exists(weights):
    raise UserError(f"finetune.weights: no such file or directory: {weights}")
  if os.path.isdir(weights):
    return _from_workdir(weights)
  if weights.endswith(".npz"):  # big_vision / vision_transformer ViT checkpoints
    from jaxcnn.convert.vit import load_big_vision_npz
    return load_big_vision_npz(weights, model_name)
  from jaxcnn.convert import load_torch_state_dict, torch_to_flax
  return torch_to_flax(model_name, load_torch_state_dict(weights))


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


def fit_vit_layout(fresh: dict, pretrained: dict) -> dict:
  """ViT weights brought to the fresh model's layout: scanned blocks, position grid of its resolution.

  A `scan_layers=True` model keeps its blocks as one stacked `blocks` subtree;
  a position embedding of another token count is resampled to the model's
  square grid (bicubic, antialiased: timm's `resample_abs_pos_embed`). Other
  trees pass through unchanged.
  """
  from jaxcnn.models.vit import resample_posemb, scan_params
  pretrained = dict(pretrained)
  if "blocks" in fresh and "blocks_0" in pretrained and "blocks_0" not in fresh:
    pretrained = scan_params(pretrained)
  if "pos_embed" in fresh and "pos_embed" in pretrained:
    old, new = np.shape(pretrained["pos_embed"]), fresh["pos_embed"].shape
    if old != new and old[2] == new[2]:
      prefix = 1 if "cls_token" in fresh else 0
      grid = int(round((new[1] - prefix) ** 0.5))
      pretrained["pos_embed"] = np.asarray(resample_posemb(
          pretrained["pos_embed"], grid, num_prefix_tokens=prefix, method="bicubic"))
      log.info("fine-tuning: resampled pos_embed %s -> %s", tuple(old), tuple(new))
  return pretrained


def apply_pretrained(state, finetune_cfg, model_name: str):
  """The fresh train state with the pretrained variables merged in (EMA starts from them too)."""
  pre = load_pretrained(finetune_cfg.weights, finetune_cfg.converter_name or model_name)
  params = merge(state.params, fit_vit_layout(state.params, pre["params"]), "parameters")
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
