"""timm and big_vision ViT checkpoints -> `jaxcnn.models.vit.ViT` variables.

timm state dicts (`torch_to_flax('vit_base_patch16_224', sd)`, or
`convert_timm_vit` for a custom size): the flax modules carry timm's names, so
  patch_embed.proj.{weight,bias}   -> patch_embed/{kernel (OIHW -> HWIO), bias}
  cls_token, pos_embed             -> cls_token, pos_embed
  blocks.{i}.norm1 / norm2         -> blocks_{i}/norm1 / norm2 {scale, bias}
  blocks.{i}.attn.qkv / proj       -> blocks_{i}/attn/qkv / proj {kernel (transposed), bias}
  blocks.{i}.mlp.fc1 / fc2         -> blocks_{i}/mlp/fc1 / fc2
  norm, head                       -> norm, head
The fused qkv keeps timm's [q; k; v] x heads column order (see layers/attention.py).

big_vision / google-research `vision_transformer` `.npz` files (`load_big_vision_npz`):
  embedding/{kernel,bias}                                  (already HWIO)
  cls [1, 1, D]; pos_embedding [1, N, D] (big_vision) or Transformer/posembed_input/pos_embedding
  Transformer/encoderblock_{i}/LayerNorm_0, LayerNorm_1 (norm1, norm2)
      .../MultiHeadDotProductAttention_0/{query,key,value}/kernel [D, heads, head_dim], bias [heads, head_dim]
      .../MultiHeadDotProductAttention_0/out/kernel [heads, head_dim, D], bias [D]
      .../MlpBlock_0/Dense_0, Dense_1 (fc1, fc2)
  Transformer/encoder_norm, head
The original `vision_transformer` repo numbers the block's submodules LayerNorm_0,
MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3, and a scanned big_vision
model stores one `Transformer/encoderblock/...` with a leading depth axis; both
are read. Keys may sit under `params/` or `opt/target/`. big_vision adds the
position embedding before it prepends the class token, so its table has no
class-token row; the converted one gets a zero row there (the same function).

Position embeddings for another resolution: pass `image_size=`; the patch grid
is resampled with `resample_posemb(..., method='bicubic')`, which equals timm's
`resample_abs_pos_embed` default (torch bicubic, antialias=True) to ~2e-6.
big_vision checkpoints are resampled the same way.
"""
from typing import Dict, Optional

import numpy as np

from jaxcnn.convert import conv_kernel, dense_kernel, register_converter
from jaxcnn.errors import UserError

# timm VisionTransformer blocks use these leaves; anything else (LayerScale, fc_norm, registers,
# attention-pool heads, q/k norms) is another architecture and is refused.
_TIMM_BLOCK_LEAVES = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                      "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                      "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")


def _f32(x) -> np.ndarray:
  return np.asarray(x, np.float32)


def _layer_norm(scale, bias) -> dict:
  return {"scale": _f32(scale), "bias": _f32(bias)}


def _fit(name: str, variables: dict, image_size: Optional[int], model_kwargs: dict) -> dict:
  """Resamples the position embedding for `image_size` and checks every shape against the model."""
  from jaxcnn.convert._torchvision import _shapes
  from jaxcnn.models.vit import resample_posemb
  from jaxcnn.registry import create_model
  from jaxcnn.utils import abstract_variables

  params = variables["params"]
  patch = params["patch_embed"]["kernel"].shape[0]
  prefix = ("cls_token" in params) + ("dist_token" in params)
  grid = int(round((params["pos_embed"].shape[1] - prefix) ** 0.5))
  if image_size is None:
    image_size = grid * patch
  elif image_size % patch:
    raise UserError(f"image_size {image_size} is not divisible by the checkpoint's patch size {patch}")
  elif image_size // patch != grid:
    params["pos_embed"] = np.asarray(resample_posemb(params["pos_embed"], image_size // patch,
                                                     num_prefix_tokens=prefix, method="bicubic"))
  model_kwargs = {"num_classes": int(params["head"]["bias"].shape[0]), **model_kwargs}
  if prefix == 0:
    model_kwargs.setdefault("pool", "gap")
  if "dist_token" in params:
    model_kwargs.setdefault("distilled", True)
  model = create_model(name, **model_kwargs)
  expected = abstract_variables(model, (1, image_size, image_size, 3))
  got, want = _shapes(variables), _shapes(dict(expected))
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  if missing or extra:
    raise UserError(f"the checkpoint does not fit '{name}': missing {missing[:3]}, unexpected {extra[:3]}")
  for key in sorted(want):
    if got[key] != want[key]:
      raise UserError(f"the checkpoint does not fit '{name}': {key} has shape {got[key]}, "
                      f"the model needs {want[key]}")
  return variables


def convert_timm_vit(state_dict: Dict[str, np.ndarray], name: str = "vit",
                     image_size: Optional[int] = None, **model_kwargs) -> dict:
  """{'params'} for `create_model(name, **model_kwargs)` from a timm `VisionTransformer` state dict.

  num_classes comes from `head.weight`; num_heads cannot be read off the
  weights, so it comes from `name`'s defaults or `model_kwargs`.
  """
  sd = {k: _f32(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state_dict.items()}
  used = set()

  def take(key):
    if key not in sd:
      raise UserError(f"the state dict does not fit '{name}': it has no '{key}' (not a timm ViT?)")
    used.add(key)
    return sd[key]

  def dense(prefix):
    return {"kernel": dense_kernel(take(f"{prefix}.weight")), "bias": take(f"{prefix}.bias")}

  def norm(prefix):
    return _layer_norm(take(f"{prefix}.weight"), take(f"{prefix}.bias"))

  params = {"patch_embed": {"kernel": conv_kernel(take("patch_embed.proj.weight")),
                            "bias": take("patch_embed.proj.bias")},
            "pos_embed": take("pos_embed")}
  if "cls_token" in sd:
    params["cls_token"] = take("cls_token")
  if "dist_token" in sd:  # DeiT's distilled ViTs
    params["dist_token"] = take("dist_token")
  depth = 0
  while f"blocks.{depth}.norm1.weight" in sd:
    b = f"blocks.{depth}"
    params[f"blocks_{depth}"] = {
        "norm1": norm(f"{b}.norm1"), "norm2": norm(f"{b}.norm2"),
        "attn": {"qkv": dense(f"{b}.attn.qkv"), "proj": dense(f"{b}.attn.proj")},
        "mlp": {"fc1": dense(f"{b}.mlp.fc1"), "fc2": dense(f"{b}.mlp.fc2")}}
    depth += 1
  params["norm"] = norm("norm")
  params["head"] = dense("head")
  if "head_dist.weight" in sd:
    params["head_dist"] = dense("head_dist")
  unused = sorted(set(sd) - used)
  if unused:
    raise UserError(f"the state dict does not fit '{name}': unexpected {unused[:3]} "
                    "(only plain timm VisionTransformers with a class token convert)")
  return _fit(name, {"params": params}, image_size, model_kwargs)


def _big_vision_prefix(arrays) -> str:
  for prefix in ("", "params/", "opt/target/", "params/img/"):
    if f"{prefix}embedding/kernel" in arrays:
      return prefix
  raise UserError("not a big_vision / vision_transformer ViT checkpoint: no 'embedding/kernel'")


def convert_big_vision_vit(arrays, name: str = "vit", image_size: Optional[int] = None,
                           **model_kwargs) -> dict:
  """{'params'} for `create_model(name, **model_kwargs)` from a big_vision ViT param tree.

  `arrays`: {'a/b/kernel': array}, e.g. an opened `.npz`. num_heads is
  checked against the head axis of the attention kernels.
  """
  p = _big_vision_prefix(arrays)
  used = set()

  def take(key, layer=None):
    if p + key not in arrays:
      raise UserError(f"the big_vision checkpoint does not fit '{name}': it has no '{p + key}'")
    used.add(p + key)
    value = _f32(arrays[p + key])
    return value if layer is None else value[layer]

  scanned = f"{p}Transformer/encoderblock/LayerNorm_0/scale" in arrays
  # big_vision numbers the block's submodules 0, 0, 1, 0; vision_transformer 0, 1, 2, 3.
  first_block = f"{p}Transformer/encoderblock/" if scanned else f"{p}Transformer/encoderblock_0/"
  original = f"{first_block}MultiHeadDotProductAttention_1/query/kernel" in arrays
  mha, ln2, mlp = (1, 2, 3) if original else (0, 1, 0)
  if scanned:
    depth = arrays[f"{p}Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
  else:
    depth = 0
    while f"{p}Transformer/encoderblock_{depth}/LayerNorm_0/scale" in arrays:
      depth += 1

  def block(i):
    root, layer = ("Transformer/encoderblock/", i) if scanned else (f"Transformer/encoderblock_{i}/", None)
    leaf = lambda key: take(root + key, layer)
    attn = f"MultiHeadDotProductAttention_{mha}/"
    # [D, heads, head_dim] x3 -> [D, 3 * heads * head_dim], the fused timm column order.
    qkv_kernel = np.stack([leaf(f"{attn}{n}/kernel") for n in ("query", "key", "value")], axis=1)
    width, _, heads, head_dim = qkv_kernel.shape
    if "num_heads" in model_kwargs and model_kwargs["num_heads"] != heads:
      raise UserError(f"the big_vision checkpoint has {heads} heads, not num_heads={model_kwargs['num_heads']}")
    return heads, {
        "norm1": _layer_norm(leaf("LayerNorm_0/scale"), leaf("LayerNorm_0/bias")),
        "norm2": _layer_norm(leaf(f"LayerNorm_{ln2}/scale"), leaf(f"LayerNorm_{ln2}/bias")),
        "attn": {
            "qkv": {"kernel": qkv_kernel.reshape(width, 3 * heads * head_dim),
                    "bias": np.concatenate([leaf(f"{attn}{n}/bias").reshape(-1) for n in ("query", "key", "value")])},
            "proj": {"kernel": leaf(f"{attn}out/kernel").reshape(heads * head_dim, -1),
                     "bias": leaf(f"{attn}out/bias")}},
        "mlp": {f"fc{j + 1}": {"kernel": leaf(f"MlpBlock_{mlp}/Dense_{j}/kernel"),
                               "bias": leaf(f"MlpBlock_{mlp}/Dense_{j}/bias")} for j in (0, 1)}}

  params = {"patch_embed": {"kernel": take("embedding/kernel"), "bias": take("embedding/bias")}}
  has_cls = f"{p}cls" in arrays
  if has_cls:
    params["cls_token"] = take("cls")
  if f"{p}pos_embedding" in arrays:
    posemb = take("pos_embedding")
    if has_cls:  # big_vision: the class token is prepended after the embedding is added
      posemb = np.concatenate([np.zeros_like(posemb[:, :1]), posemb], axis=1)
  elif f"{p}Transformer/posembed_input/pos_embedding" in arrays:
    posemb = take("Transformer/posembed_input/pos_embedding")  # already has the class-token row
  else:
    raise UserError("the big_vision checkpoint has no learned position embedding "
                    "(posemb='sincos2d' models do not convert)")
  params["pos_embed"] = posemb
  heads = None
  for i in range(depth):
    heads, params[f"blocks_{i}"] = block(i)
  params["norm"] = _layer_norm(take("Transformer/encoder_norm/scale"), take("Transformer/encoder_norm/bias"))
  if f"{p}head/kernel" not in arrays:
    raise UserError("the big_vision checkpoint has no classifier 'head' (MAP-head or feature-only "
                    "models do not convert)")
  params["head"] = {"kernel": take("head/kernel"), "bias": take("head/bias")}
  unused = sorted(k for k in arrays if k.startswith(p) and k not in used)
  if unused:
    raise UserError(f"the big_vision checkpoint does not fit '{name}': unexpected {unused[:3]}")
  if heads is not None:
    model_kwargs.setdefault("num_heads", heads)
  return _fit(name, {"params": params}, image_size, model_kwargs)


def load_big_vision_npz(path: str, name: str = "vit", image_size: Optional[int] = None, **model_kwargs) -> dict:
  """Reads a big_vision / vision_transformer `.npz` (no pickles) and converts it; see convert_big_vision_vit."""
  try:
    with np.load(str(path), allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in npz.files}
  except (OSError, ValueError) as e:  # missing file, not a zip, pickled arrays
    raise UserError(f"could not read a big_vision checkpoint from {path}: {e}") from e
  return convert_big_vision_vit(arrays, name, image_size, **model_kwargs)


@register_converter("vit")
@register_converter("deit")
def convert_vit(name: str, state_dict: dict) -> dict:
  """The registry entry: a timm state dict for the registered ViT `name` at the checkpoint's resolution."""
  return convert_timm_vit(state_dict, name)
