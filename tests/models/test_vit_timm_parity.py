"""ViTs with converted timm / big_vision weights compute timm's logits.

Random timm weights (every tensor, including LayerNorm affine parameters, the
class token and the head, which timm initialises to constants), eval mode,
|difference| < 1e-4 in float32. big_vision `.npz` files are made here from the
same timm weights in big_vision's layout, since nothing can be downloaded.
The larger ImageNet variants are checked by shape only (jax.eval_shape) and,
with `-m slow`, numerically.
"""
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from timm.layers import resample_abs_pos_embed  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from jaxcnn import create_model  # noqa: E402
from jaxcnn.convert import torch_to_flax  # noqa: E402
from jaxcnn.convert.vit import convert_big_vision_vit, convert_timm_vit, load_big_vision_npz  # noqa: E402
from jaxcnn.errors import UserError  # noqa: E402
from jaxcnn.models.vit import resample_posemb, unscan_params  # noqa: E402
from jaxcnn.train import finetune  # noqa: E402

ATOL = 1e-4
# A small timm ViT for the layout tests: CIFAR-sized, 2 blocks.
SMALL = dict(patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=5)
SMALL_FLAX = dict(patch_size=4, width=32, depth=2, num_heads=2, mlp_dim=64)


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Every parameter random: LayerNorm scales around 1, everything else around 0."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 and "norm" in name and name.endswith("weight"):
        p.uniform_(0.5, 1.5, generator=generator)
      else:
        p.normal_(0.0, 0.05 if p.ndim > 1 else 0.1, generator=generator)
  return model.eval()


def timm_vit(img_size=32, seed=0, **kwargs) -> torch.nn.Module:
  return randomized(VisionTransformer(img_size=img_size, **kwargs), seed)


def images(size, batch=2, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype(np.float32)


def torch_logits(model, x):
  with torch.no_grad():
    return model(torch.from_numpy(x)).numpy()


def flax_logits(model, variables, x):
  return np.asarray(jax.jit(model.apply)(variables, x.transpose(0, 2, 3, 1)))


def assert_close(got, expected):
  assert got.shape == expected.shape
  assert np.abs(expected).max() > 0.1  # logits that carry signal
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


# --- timm state dicts ----------------------------------------------------------------------------

def test_vit_tiny_patch16_224_matches_timm():
  model = randomized(timm.create_model("vit_tiny_patch16_224", pretrained=False))
  x = images(224)
  variables = torch_to_flax("vit_tiny_patch16_224", model.state_dict())
  assert_close(flax_logits(create_model("vit_tiny_patch16_224"), variables, x), torch_logits(model, x))


@pytest.mark.parametrize("name,width,heads", [("vit_tiny_patch4_32", 192, 3), ("vit_small_patch4_32", 384, 6)])
def test_cifar_vits_match_timm(name, width, heads):
  model = timm_vit(32, patch_size=4, embed_dim=width, depth=12, num_heads=heads, num_classes=10)
  x = images(32, batch=4)
  variables = torch_to_flax(name, model.state_dict())
  assert_close(flax_logits(create_model(name), variables, x), torch_logits(model, x))


def test_converted_scan_model_matches_timm():
  """The same weights stacked for scan_layers=True give the same logits."""
  from jaxcnn.models.vit import scan_params
  model = timm_vit(**SMALL)
  x = images(32)
  variables = convert_timm_vit(model.state_dict(), "vit", **SMALL_FLAX)
  scanned = {"params": scan_params(variables["params"])}
  got = flax_logits(create_model("vit", num_classes=5, scan_layers=True, **SMALL_FLAX), scanned, x)
  assert_close(got, torch_logits(model, x))


def test_resampled_position_embedding_matches_timms_resample():
  """Weights for 32x32 (8x8 grid) run at 48x48 (12x12): timm resamples with resample_abs_pos_embed."""
  source = timm_vit(32, **SMALL)
  target = VisionTransformer(img_size=48, **SMALL).eval()
  sd = dict(source.state_dict())
  sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], [12, 12], num_prefix_tokens=1)
  target.load_state_dict(sd)
  variables = convert_timm_vit(source.state_dict(), "vit", image_size=48, **SMALL_FLAX)
  chex.assert_shape(variables["params"]["pos_embed"], (1, 1 + 12 * 12, 32))
  np.testing.assert_allclose(variables["params"]["pos_embed"], sd["pos_embed"].numpy(), atol=1e-5, rtol=0)
  x = images(48)
  assert_close(flax_logits(create_model("vit", num_classes=5, **SMALL_FLAX), variables, x), torch_logits(target, x))


@pytest.mark.parametrize("old,new", [(8, 12), (14, 7), (7, 10)])
def test_bicubic_resample_equals_timms_and_bilinear_does_not(old, new):
  posemb = np.random.default_rng(0).normal(size=(1, 1 + old * old, 8)).astype(np.float32)
  expected = resample_abs_pos_embed(torch.from_numpy(posemb), [new, new], num_prefix_tokens=1).numpy()
  np.testing.assert_allclose(resample_posemb(posemb, new, method="bicubic"), expected, atol=1e-5, rtol=0)
  assert np.abs(np.asarray(resample_posemb(posemb, new)) - expected).max() > 1e-3


def test_timm_state_dict_of_another_architecture_is_refused():
  sd = timm_vit(**SMALL).state_dict()
  with pytest.raises(UserError, match="does not fit 'vit_tiny_patch4_32'"):
    torch_to_flax("vit_tiny_patch4_32", sd)
  with_layer_scale = VisionTransformer(img_size=32, init_values=1e-5, **SMALL).state_dict()
  with pytest.raises(UserError, match="unexpected"):
    convert_timm_vit(with_layer_scale, "vit", **SMALL_FLAX)
  with pytest.raises(UserError, match="not divisible"):
    convert_timm_vit(sd, "vit", image_size=30, **SMALL_FLAX)


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "vit_base_patch16_224", "vit_large_patch16_224",
                                  "vit_small_patch32_224", "vit_base_patch32_224", "vit_large_patch32_224"])
def test_big_variants_convert_to_the_model_shapes(name):
  """Abstract timm weights (shapes only) go through the converter's shape check."""
  model = timm.create_model(name, pretrained=False, num_classes=1000, device="meta")
  sd = {k: np.zeros(v.shape, np.float16) for k, v in model.state_dict().items()}
  variables = torch_to_flax(name, sd)
  assert sum(v.size for v in jax.tree.leaves(variables)) == sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_small_patch16_224", "vit_base_patch32_224"])
def test_big_variants_match_timm(name):
  model = randomized(timm.create_model(name, pretrained=False))
  x = images(224, batch=1)
  assert_close(flax_logits(create_model(name), torch_to_flax(name, model.state_dict()), x), torch_logits(model, x))


# --- big_vision .npz -----------------------------------------------------------------------------

def big_vision_arrays(model, layout="big_vision", prefix=""):
  """A timm ViT's weights in big_vision's (or google-research vision_transformer's) param tree.

  big_vision adds the position embedding before prepending the class token:
  the equivalent big_vision class token is timm's plus its position row.
  """
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  width = sd["cls_token"].shape[-1]
  heads = model.blocks[0].attn.num_heads
  out = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": sd["patch_embed.proj.bias"],
         "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
         "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
  if layout == "big_vision":
    out["cls"] = sd["cls_token"] + sd["pos_embed"][:, :1]
    out["pos_embedding"] = sd["pos_embed"][:, 1:]
    mha, ln2, mlp = 0, 1, 0
  else:
    out["cls"] = sd["cls_token"]
    out["Transformer/posembed_input/pos_embedding"] = sd["pos_embed"]
    mha, ln2, mlp = 1, 2, 3
  for i in range(len(model.blocks)):
    b, root = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
    q, k, v = np.split(sd[b + "attn.qkv.weight"].T, 3, axis=1)  # [D, D] each
    qb, kb, vb = np.split(sd[b + "attn.qkv.bias"], 3)
    attn = f"{root}MultiHeadDotProductAttention_{mha}/"
    for n, kernel, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
      out[f"{attn}{n}/kernel"] = kernel.reshape(width, heads, -1)
      out[f"{attn}{n}/bias"] = bias.reshape(heads, -1)
    out[f"{attn}out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(heads, -1, width)
    out[f"{attn}out/bias"] = sd[b + "attn.proj.bias"]
    for ln, norm in ((0, "norm1"), (ln2, "norm2")):
      out[f"{root}LayerNorm_{ln}/scale"], out[f"{root}LayerNorm_{ln}/bias"] = sd[f"{b}{norm}.weight"], sd[f"{b}{norm}.bias"]
    for j, fc in enumerate(("fc1", "fc2")):
      out[f"{root}MlpBlock_{mlp}/Dense_{j}/kernel"] = sd[f"{b}mlp.{fc}.weight"].T
      out[f"{root}MlpBlock_{mlp}/Dense_{j}/bias"] = sd[f"{b}mlp.{fc}.bias"]
  return {prefix + k: v for k, v in out.items()}


def scanned(arrays, depth):
  """big_vision's scan_layers=True layout: one encoderblock with a leading depth axis."""
  out, stacked = {}, {}
  for key, value in arrays.items():
    if key.startswith("Transformer/encoderblock_"):
      i, rest = key[len("Transformer/encoderblock_"):].split("/", 1)
      stacked.setdefault(rest, [None] * depth)[int(i)] = value
    else:
      out[key] = value
  out.update({f"Transformer/encoderblock/{k}": np.stack(v) for k, v in stacked.items()})
  return out


def test_big_vision_npz_matches_timm(tmp_path):
  model = timm_vit(32, patch_size=4, embed_dim=192, depth=12, num_heads=3, num_classes=10)
  path = tmp_path / "vit.npz"
  np.savez(path, **big_vision_arrays(model))
  variables = load_big_vision_npz(path, "vit_tiny_patch4_32")
  chex.assert_trees_all_equal(variables["params"]["pos_embed"][:, 0], np.zeros((1, 192), np.float32))
  x = images(32, batch=4)
  assert_close(flax_logits(create_model("vit_tiny_patch4_32"), variables, x), torch_logits(model, x))


@pytest.mark.parametrize("layout,prefix,scan", [("vision_transformer", "", False), ("big_vision", "params/", True),
                                                ("vision_transformer", "opt/target/", True)])
def test_big_vision_layout_variants_give_the_same_function(layout, prefix, scan):
  model = timm_vit(**SMALL)
  arrays = big_vision_arrays(model, layout)
  if scan:
    arrays = scanned(arrays, depth=2)
  arrays = {prefix + k: v for k, v in arrays.items()}
  variables = convert_big_vision_vit(arrays, "vit", **SMALL_FLAX)
  reference = convert_timm_vit(model.state_dict(), "vit", **SMALL_FLAX)
  if layout == "vision_transformer":  # same class token and table as timm: equal trees
    chex.assert_trees_all_equal(variables, reference)
  x = images(32)
  assert_close(flax_logits(create_model("vit", num_classes=5, **SMALL_FLAX), variables, x), torch_logits(model, x))


def test_big_vision_npz_resampled_and_heads_read_from_the_kernels(tmp_path):
  source = timm_vit(32, **SMALL)
  path = tmp_path / "vit.npz"
  np.savez(path, **big_vision_arrays(source, "vision_transformer"))
  flax_dims = {k: v for k, v in SMALL_FLAX.items() if k != "num_heads"}
  variables = load_big_vision_npz(path, "vit", image_size=48, **flax_dims)
  target = VisionTransformer(img_size=48, **SMALL).eval()
  sd = dict(source.state_dict())
  sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], [12, 12], num_prefix_tokens=1)
  target.load_state_dict(sd)
  x = images(48)
  assert_close(flax_logits(create_model("vit", num_classes=5, **SMALL_FLAX), variables, x), torch_logits(target, x))
  with pytest.raises(UserError, match="2 heads, not num_heads=4"):
    load_big_vision_npz(path, "vit", **{**SMALL_FLAX, "num_heads": 4})


def test_bad_big_vision_files_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="could not read"):
    load_big_vision_npz(tmp_path / "missing.npz")
  path = tmp_path / "other.npz"
  np.savez(path, w=np.zeros(3))
  with pytest.raises(UserError, match="no 'embedding/kernel'"):
    load_big_vision_npz(path)


# --- fine-tuning -------------------------------------------------------------------------------

def fresh_state(model, size):
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
  return types.SimpleNamespace(params=params, model_state={}, ema_params=None,
                               replace=lambda **kw: types.SimpleNamespace(**kw))


@pytest.mark.parametrize("suffix", [".pth", ".npz"])
def test_finetune_loads_vit_weights_with_a_new_head_resolution_and_scan(tmp_path, suffix):
  """A `vit` model (scan_layers, 5 classes, 48x48) fine-tuned from vit_tiny_patch4_32 weights (10 classes, 32x32)."""
  source = timm_vit(32, patch_size=4, embed_dim=192, depth=12, num_heads=3, num_classes=10)
  path = tmp_path / f"weights{suffix}"
  if suffix == ".pth":
    torch.save(source.state_dict(), path)
  else:
    np.savez(path, **big_vision_arrays(source, "vision_transformer"))
  model = create_model("vit", num_classes=5, scan_layers=True, patch_size=4, width=192, depth=12,
                       num_heads=3, mlp_dim=768)
  state = fresh_state(model, 48)
  config = types.SimpleNamespace(weights=str(path), converter_name="vit_tiny_patch4_32")
  params = finetune.apply_pretrained(state, config, "vit").params

  chex.assert_trees_all_equal(params["head"], state.params["head"])  # re-initialised: 10 -> 5 classes
  reference = torch_to_flax("vit_tiny_patch4_32", source.state_dict())["params"]
  chex.assert_trees_all_close(unscan_params(params)["blocks_11"], reference["blocks_11"], atol=0, rtol=0)
  expected = resample_abs_pos_embed(source.state_dict()["pos_embed"], [12, 12], num_prefix_tokens=1).numpy()
  np.testing.assert_allclose(params["pos_embed"], expected, atol=1e-5, rtol=0)
  # With timm's head the fine-tuning model is timm's model at 48x48.
  target = VisionTransformer(img_size=48, patch_size=4, embed_dim=192, depth=12, num_heads=3, num_classes=10).eval()
  target.load_state_dict({**source.state_dict(), "pos_embed": torch.from_numpy(expected)})
  x = images(48)
  with_head = {"params": {**params, "head": reference["head"]}}
  got = flax_logits(create_model("vit", num_classes=10, scan_layers=True, patch_size=4, width=192, depth=12,
                                 num_heads=3, mlp_dim=768), with_head, x)
  assert_close(got, torch_logits(target, x))


def test_finetune_without_converter_name_names_the_mismatch(tmp_path):
  path = tmp_path / "weights.pth"
  torch.save(timm_vit(**SMALL).state_dict(), path)
  with pytest.raises(UserError, match="does not fit 'vit'"):
    finetune.load_pretrained(str(path), "vit")
