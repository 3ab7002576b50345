"""open_clip and OpenAI CLIP state dicts -> `jaxcnn.models.clip.CLIP` variables.

    variables = torch_to_flax("clip_vit_b32", load_torch_state_dict("open_clip_pytorch_model.bin"))
    variables = convert_clip(state_dict)                      # any CLIP: the architecture read off the weights
    model = create_model("clip", **clip_config(state_dict))   # ... and the model to apply them to

OpenAI's checkpoints and open_clip's (`CLIP`, and `CustomTextCLIP` whose text keys start with
`text.`) share one naming: `visual.*` (ViT: conv1, class_embedding, positional_embedding, ln_pre,
transformer.resblocks.{i}, ln_post, proj; ModifiedResNet: conv1-3/bn1-3, layer{1-4}.{j}, attnpool),
the text tower at the top level (token_embedding, positional_embedding, transformer.resblocks.{i},
ln_final, text_projection) and `logit_scale` (+ `logit_bias` for SigLIP). Linear and attention
weights are transposed, convolutions go OIHW -> HWIO, BatchNorm statistics to 'batch_stats'.
A training checkpoint's `module.` prefix (DDP) is dropped. Files are read by
`jaxcnn.convert.load_torch_state_dict` (safetensors or `torch.load(weights_only=True)`), never
by running code; OpenAI's TorchScript `.pt` archives are refused there: use open_clip's
`open_clip_pytorch_model.bin` / `.safetensors` of the same weights.

Attention head counts cannot be read off the weights: `clip_config` assumes 64-wide heads
(every OpenAI and open_clip release), a registered name supplies its own.
"""
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.convert import batchnorm, conv_kernel, dense_kernel, register_converter
from jaxcnn.errors import UserError

# Keys OpenAI's checkpoints carry besides the weights (hyper-parameters, the causal-mask buffer, BN step counts).
_IGNORED = {"input_resolution", "context_length", "vocab_size", "attn_mask", "num_batches_tracked"}


class _Reader:
  """Takes arrays out of a state dict by name, remembering which were used."""

  def __init__(self, state_dict: Dict[str, np.ndarray], what: str):
    self.sd = {k[len("module."):] if k.startswith("module.") else k: np.asarray(v, np.float32)
               for k, v in state_dict.items()}
    self.used = set()
    self.what = what

  def __contains__(self, key):
    return key in self.sd

  def __call__(self, key):
    if key not in self.sd:
      raise UserError(f"{self.what}: the state dict has no '{key}' (expected an open_clip / OpenAI CLIP state dict)")
    self.used.add(key)
    return self.sd[key]

  def dense(self, prefix):
    return {"kernel": dense_kernel(self(f"{prefix}.weight")), "bias": self(f"{prefix}.bias")}

  def norm(self, prefix):
    return {"scale": self(f"{prefix}.weight"), "bias": self(f"{prefix}.bias")}

  def batchnorm(self, prefix):
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      self(f"{prefix}.{leaf}")
    return batchnorm(self.sd, prefix)

  def depth(self, prefix):
    depth = 0
    while f"{prefix}.{depth}.ln_1.weight" in self.sd:
      depth += 1
    return depth

  def unused(self):
    return sorted(k for k in set(self.sd) - self.used if k.split(".")[-1] not in _IGNORED)


def _transformer(read: _Reader, prefix: str) -> dict:
  """`{prefix}.resblocks.{i}` -> {'resblocks_{i}': ...} (the fused in_proj is the qkv layer as is)."""
  blocks = {}
  for i in range(read.depth(f"{prefix}.resblocks")):
    b = f"{prefix}.resblocks.{i}"
    blocks[f"resblocks_{i}"] = {
        "ln_1": read.norm(f"{b}.ln_1"), "ln_2": read.norm(f"{b}.ln_2"),
        "attn": {"qkv": {"kernel": dense_kernel(read(f"{b}.attn.in_proj_weight")),
                         "bias": read(f"{b}.attn.in_proj_bias")},
                 "proj": read.dense(f"{b}.attn.out_proj")},
        "c_fc": read.dense(f"{b}.mlp.c_fc"), "c_proj": read.dense(f"{b}.mlp.c_proj")}
  return blocks


def _vit(read: _Reader) -> dict:
  return {"conv1": {"kernel": conv_kernel(read("visual.conv1.weight"))},
          "class_embedding": read("visual.class_embedding"),
          "positional_embedding": read("visual.positional_embedding"),
          "ln_pre": read.norm("visual.ln_pre"),
          "transformer": _transformer(read, "visual.transformer"),
          "ln_post": read.norm("visual.ln_post"),
          "proj": read("visual.proj")}


def _resnet(read: _Reader):
  """(params, batch_stats) of the ModifiedResNet tower."""
  params, stats = {}, {}

  def conv_bn(conv_key, bn_key, conv_name, bn_name, p, s):
    p[conv_name] = {"kernel": conv_kernel(read(f"{conv_key}.weight"))}
    p[bn_name], s[bn_name] = read.batchnorm(bn_key)

  for i in (1, 2, 3):
    conv_bn(f"visual.conv{i}", f"visual.bn{i}", f"conv{i}", f"bn{i}", params, stats)
  for stage in range(1, 5):
    block = 0
    while f"visual.layer{stage}.{block}.conv1.weight" in read:
      prefix, name = f"visual.layer{stage}.{block}", f"layer{stage}_{block}"
      p, s = params.setdefault(name, {}), stats.setdefault(name, {})
      for i in (1, 2, 3):
        conv_bn(f"{prefix}.conv{i}", f"{prefix}.bn{i}", f"conv{i}", f"bn{i}", p, s)
      if f"{prefix}.downsample.0.weight" in read:
        conv_bn(f"{prefix}.downsample.0", f"{prefix}.downsample.1", "downsample_conv", "downsample_bn", p, s)
      block += 1
  params["attnpool"] = {"positional_embedding": read("visual.attnpool.positional_embedding"),
                        **{n: read.dense(f"visual.attnpool.{n}") for n in ("q_proj", "k_proj", "v_proj", "c_proj")}}
  return params, stats


def _text_prefix(read: _Reader) -> str:
  return "text." if "text.token_embedding.weight" in read else ""


def convert_clip(state_dict: Dict[str, np.ndarray], what: str = "CLIP weights") -> dict:
  """{'params', ('batch_stats')} of a `CLIP` model from an open_clip / OpenAI state dict (numpy arrays).

  `what` names the source in error messages. Unknown keys are an error (not silently dropped).
  """
  read = _Reader(state_dict, what)
  if "visual.class_embedding" in read:
    visual, stats = _vit(read), None
  elif "visual.attnpool.c_proj.weight" in read:
    visual, stats = _resnet(read)
  else:
    sample = sorted(read.sd)[:3]
    raise UserError(f"{what}: not a CLIP state dict: expected 'visual.class_embedding' (ViT) or "
                    f"'visual.attnpool.*' (ModifiedResNet) keys, found {sample}...")
  t = _text_prefix(read)
  text = {"token_embedding": {"embedding": read(f"{t}token_embedding.weight")},
          "positional_embedding": read(f"{t}positional_embedding"),
          "transformer": _transformer(read, f"{t}transformer"),
          "ln_final": read.norm(f"{t}ln_final"),
          "text_projection": read(f"{t}text_projection")}
  params = {"visual": visual, "text": text, "logit_scale": read("logit_scale").reshape(())}
  if "logit_bias" in read:
    params["logit_bias"] = read("logit_bias").reshape(())
  unused = read.unused()
  if unused:
    raise UserError(f"{what}: unexpected keys {unused[:3]} (only open_clip / OpenAI CLIP models with the "
                    "OpenAI layout convert)")
  variables = {"params": params}
  if stats is not None:
    variables["batch_stats"] = {"visual": stats}
  return variables


def clip_config(state_dict: Dict[str, np.ndarray]) -> dict:
  """`create_model('clip', **config)` keyword arguments read off a CLIP state dict (64-wide heads)."""
  shapes = {k[len("module."):] if k.startswith("module.") else k: tuple(np.shape(v)) for k, v in state_dict.items()}
  shape = lambda key: shapes.get(key)
  depth = lambda prefix: sum(1 for k in shapes if k.startswith(prefix) and k.endswith(".ln_1.weight"))
  t = "text." if "text.token_embedding.weight" in shapes else ""
  if shape(f"{t}text_projection") is None or shape(f"{t}token_embedding.weight") is None:
    raise UserError("CLIP weights: not a CLIP state dict (no 'text_projection' / 'token_embedding.weight')")
  width, embed_dim = shape(f"{t}text_projection")
  config = dict(embed_dim=embed_dim, vocab_size=shape(f"{t}token_embedding.weight")[0],
                context_length=shape(f"{t}positional_embedding")[0], text_width=width, text_heads=width // 64,
                text_layers=depth(f"{t}transformer.resblocks."))
  if shape("visual.class_embedding") is not None:
    vision_width, _, patch, _ = shape("visual.conv1.weight")
    grid = int(round((shape("visual.positional_embedding")[0] - 1) ** 0.5))
    config.update(vision_width=vision_width, vision_patch_size=patch, image_size=grid * patch,
                  vision_layers=depth("visual.transformer.resblocks."))
  elif shape("visual.attnpool.c_proj.weight") is not None:
    blocks = lambda stage: sum(1 for k in shapes if k.startswith(f"visual.layer{stage}.") and k.endswith(".conv1.weight"))
    grid = int(round((shape("visual.attnpool.positional_embedding")[0] - 1) ** 0.5))
    config.update(vision_layers=tuple(blocks(s) for s in range(1, 5)), vision_width=shape("visual.conv3.weight")[0],
                  image_size=grid * 32)
  else:
    raise UserError("CLIP weights: not a CLIP state dict: no 'visual.class_embedding' (ViT) or "
                    "'visual.attnpool.*' (ModifiedResNet)")
  if "logit_bias" in shapes:
    config["init_logit_bias"] = -10.0
  return config


def _shapes(tree) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(v)) for path, v in flat}


def check_fits(name: str, variables: dict, **model_kwargs) -> dict:
  """`variables` if every array has the shape `create_model(name, **model_kwargs)` needs; else a UserError."""
  from jaxcnn.registry import create_model
  model = create_model(name, **model_kwargs)
  images = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((1, model.context_length), jnp.int32)
  want = _shapes(jax.eval_shape(lambda i, t: model.init(jax.random.key(0), i, t), images, tokens))
  got = _shapes(variables)
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  if missing or extra:
    raise UserError(f"the CLIP weights do not fit '{name}': missing {missing[:3]}, unexpected {extra[:3]}"
                    + (" (SigLIP weights: use the '_siglip' variant)" if "params/logit_bias" in extra else ""))
  for key in sorted(want):
    if got[key] != want[key]:
      raise UserError(f"the CLIP weights do not fit '{name}': {key} has shape {got[key]}, the model needs "
                      f"{want[key]} (weights of another CLIP size?)")
  return variables


def _check_architecture(name: str, state_dict: dict):
  """A one-line UserError naming the sizes that differ when the weights are another CLIP than `name`."""
  from jaxcnn.registry import create_model
  model = create_model(name)
  config = clip_config(state_dict)
  config.pop("text_heads")  # not in the weights
  if "init_logit_bias" in config and model.init_logit_bias is None:
    raise UserError(f"the CLIP weights have a SigLIP logit_bias but '{name}' has none: use '{name}_siglip'")
  config.pop("init_logit_bias", None)
  normal = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
  wrong = [k for k, v in config.items() if normal(getattr(model, k)) != normal(v)]
  if wrong:
    have = ", ".join(f"{k}={config[k]}" for k in wrong)
    need = ", ".join(f"{k}={normal(getattr(model, k))}" for k in wrong)
    raise UserError(f"the CLIP weights do not fit '{name}': they have {have}; '{name}' needs {need}")


@register_converter("clip")
def convert_clip_model(name: str, state_dict: dict) -> dict:
  """The registry entry: open_clip / OpenAI weights for the registered CLIP `name` ('clip': any size)."""
  variables = convert_clip(state_dict, f"weights for '{name}'")
  if name == "clip":
    return check_fits(name, variables, **clip_config(state_dict))
  _check_architecture(name, state_dict)
  return check_fits(name, variables)
