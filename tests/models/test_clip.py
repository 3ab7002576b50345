"""CLIP / SigLIP models: open_clip parity on random weights, parameter counts, converter errors.

Fast set: small open_clip models (ViT and ModifiedResNet towers, built from custom configs) with
random weights, converted, and their image and text embeddings compared; parameter counts of the
registered big variants through jax.eval_shape. Slow set (-m slow): full-size clip_vit_b32 and
clip_rn50 against open_clip's ViT-B-32-quickgelu / RN50-quickgelu.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.convert import torch_to_flax
from jaxcnn.convert.clip import clip_config, convert_clip
from jaxcnn.data.tokenizer import tokenize
from jaxcnn.errors import UserError
from jaxcnn.models.clip import CLIP_LOGIT_SCALE
from jaxcnn.registry import create_model

CAPTIONS = ["a photo of a cat", "", "the digit 7, written by hand", "A VERY long caption " * 20, "café 日本 🐱"]
TINY_TEXT = dict(context_length=16, vocab_size=49408, width=64, heads=2, layers=2)
TINY_VIT = dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32)
TINY_RN = dict(image_size=64, layers=(1, 2, 1, 1), width=16, head_width=32)
# open_clip 3.3 `create_model(name).parameters()` on CPU: (total, image tower, text tower + nothing else but logit_scale)
OPEN_CLIP_COUNTS = {
    "clip_vit_b32": (151_277_313, 87_849_216, 63_428_096),   # ViT-B-32-quickgelu
    "clip_vit_b16": (149_620_737, 86_192_640, 63_428_096),   # ViT-B-16-quickgelu
    "clip_vit_l14": (427_616_513, 303_966_208, 123_650_304),  # ViT-L-14-quickgelu
    "clip_rn50": (102_007_137, 38_316_896, 63_690_240),      # RN50-quickgelu
}


def _randomise(model, seed=0):
  """Perturbs every weight and BatchNorm statistic (open_clip initialises bn3 at zero, biases at zero)."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name != "logit_scale":
        p.add_(0.05 * torch.randn(p.shape, generator=gen))
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(0.1 * torch.randn(b.shape, generator=gen))
      elif name.endswith("running_var"):
        b.copy_(0.5 + torch.rand(b.shape, generator=gen))
  return model.eval()


def _open_clip(vision_cfg, text_cfg=TINY_TEXT, embed_dim=32, **kwargs):
  open_clip = pytest.importorskip("open_clip")
  import torch
  torch.manual_seed(0)
  return _randomise(open_clip.model.CLIP(embed_dim, vision_cfg, text_cfg, quick_gelu=True, **kwargs))


def _state_dict(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _check_parity(torch_model, model, variables, batch=2, atol=1e-4):
  import torch
  size = model.image_size
  images = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
  tokens = tokenize(CAPTIONS, model.context_length)
  with torch.no_grad():
    want_image = torch_model.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    want_text = torch_model.encode_text(torch.from_numpy(tokens.astype(np.int64))).numpy()
  image = np.asarray(model.apply(variables, images, method="encode_image"))
  text = np.asarray(model.apply(variables, tokens, method="encode_text"))
  np.testing.assert_allclose(image, want_image, atol=atol, rtol=0)
  np.testing.assert_allclose(text, want_text, atol=atol, rtol=0)
  out = model.apply(variables, images, tokens[:batch])
  np.testing.assert_allclose(out["image"], want_image / np.linalg.norm(want_image, axis=-1, keepdims=True), atol=atol)
  np.testing.assert_allclose(out["logit_scale"], np.exp(torch_model.logit_scale.item()), rtol=1e-6)
  return out


@pytest.mark.parametrize("vision_cfg", [TINY_VIT, TINY_RN], ids=["vit", "resnet"])
def test_small_open_clip_parity(vision_cfg):
  torch_model = _open_clip(vision_cfg)
  sd = _state_dict(torch_model)
  config = clip_config(sd)
  assert config["image_size"] == vision_cfg["image_size"] and config["vision_width"] == vision_cfg["width"]
  config.update(vision_head_width=32, text_heads=2)  # head counts are not in the weights
  model = create_model("clip", **config)
  variables = convert_clip(sd)
  if isinstance(vision_cfg["layers"], tuple):
    assert set(variables["batch_stats"]) == {"visual"}
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  assert count(variables["params"]) == sum(p.numel() for p in torch_model.parameters())
  _check_parity(torch_model, model, variables)


def test_siglip_bias_converts_and_initialises():
  torch_model = _open_clip(TINY_VIT, init_logit_scale=np.log(10), init_logit_bias=-10.0)
  sd = _state_dict(torch_model)
  config = {**clip_config(sd), "vision_head_width": 32, "text_heads": 2}
  model = create_model("clip", **config)
  out = _check_parity(torch_model, model, convert_clip(sd))
  np.testing.assert_allclose(out["logit_bias"], torch_model.logit_bias.item(), rtol=1e-6)
  fresh = jax.eval_shape(create_model("clip_tiny_siglip").init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                         jnp.zeros((1, 32), jnp.int32))
  assert fresh["params"]["logit_bias"].shape == ()


@pytest.mark.parametrize("name", sorted(OPEN_CLIP_COUNTS))
def test_parameter_counts_equal_open_clip(name):
  model = create_model(name)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)), jnp.zeros((1, 77), jnp.int32))
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  params = shapes["params"]
  assert (count(params), count(params["visual"]), count(params["text"])) == OPEN_CLIP_COUNTS[name]
  assert params["logit_scale"].shape == () and "logit_bias" not in params


def test_tiny_model_trains_one_step():
  """clip_tiny: a gradient step on the symmetric CLIP loss lowers it (the towers are connected)."""
  model = create_model("clip_tiny")
  images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  tokens = jnp.asarray(tokenize(["a one", "a two", "a three", "a four"], model.context_length))
  params = model.init(jax.random.key(1), images, tokens)["params"]
  np.testing.assert_allclose(params["logit_scale"], CLIP_LOGIT_SCALE)

  @jax.jit
  def loss(p):
    out = model.apply({"params": p}, images, tokens)
    logits = out["logit_scale"] * out["image"] @ out["text"].T
    labels = jnp.arange(4)
    ce = lambda l: -jnp.take_along_axis(jax.nn.log_softmax(l), labels[:, None], 1).mean()
    return (ce(logits) + ce(logits.T)) / 2

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert all(float(jnp.abs(g).sum()) > 0 for g in (grads["visual"]["proj"], grads["text"]["text_projection"]))
  stepped = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)
  assert float(loss(stepped)) < float(value)


def test_wrong_weights_are_one_line_errors():
  sd = _state_dict(_open_clip(TINY_VIT))
  with pytest.raises(UserError, match="do not fit 'clip_vit_b32': they have .*vision_width=64.*needs .*vision_width=768"):
    torch_to_flax("clip_vit_b32", sd)
  with pytest.raises(UserError, match="not a CLIP state dict"):
    torch_to_flax("clip_vit_b32", {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
  with pytest.raises(UserError, match="unexpected keys"):
    convert_clip({**sd, "visual.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(UserError, match="_siglip"):
    torch_to_flax("clip_tiny", {**_state_dict(_open_clip(TINY_VIT)), "logit_bias": np.zeros(1, np.float32)})
  with pytest.raises(UserError, match="context_length 32"):
    model = create_model("clip_tiny")
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 77), jnp.int32))
  with pytest.raises(UserError, match=r"images \[B, 32, 32, 3\]"):
    model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 32), jnp.int32))


def _full_size(name, open_clip_name):
  open_clip = pytest.importorskip("open_clip")
  torch_model = _randomise(open_clip.create_model(open_clip_name, device="cpu"))
  model = create_model(name)
  variables = torch_to_flax(name, torch_model.state_dict())
  _check_parity(torch_model, model, variables)


@pytest.mark.slow
def test_clip_vit_b32_open_clip_parity():
  _full_size("clip_vit_b32", "ViT-B-32-quickgelu")


@pytest.mark.slow
def test_clip_rn50_open_clip_parity():
  _full_size("clip_rn50", "RN50-quickgelu")


def test_weights_files_load_for_fine_tuning(tmp_path):
  """A saved open_clip state dict of clip_tiny's shape loads through finetune.weights; TorchScript is refused."""
  import torch
  from jaxcnn.models.clip import VARIANTS
  from jaxcnn.train.finetune import load_pretrained
  v = VARIANTS["clip_tiny"]
  torch_model = _open_clip(dict(image_size=v["image_size"], layers=v["vision_layers"], width=v["vision_width"],
                                patch_size=v["vision_patch_size"], head_width=v["vision_head_width"]),
                           dict(context_length=v["context_length"], width=v["text_width"], heads=v["text_heads"],
                                layers=v["text_layers"]), embed_dim=v["embed_dim"])
  path = tmp_path / "open_clip_tiny.pt"
  torch.save(torch_model.state_dict(), path)
  variables = load_pretrained(str(path), "clip_tiny")
  np.testing.assert_array_equal(variables["params"]["text"]["text_projection"],
                                torch_model.text_projection.detach().numpy())
  np.testing.assert_array_equal(variables["params"]["visual"]["conv1"]["kernel"],
                                torch_model.visual.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
  scripted = tmp_path / "ViT-B-32.pt"  # OpenAI's original files are TorchScript archives
  torch.jit.save(torch.jit.script(torch.nn.Linear(2, 3)), str(scripted))
  with pytest.raises(UserError, match=r"ViT-B-32.pt: a TorchScript archive .*state dict"):
    load_pretrained(str(scripted), "clip_tiny")


def test_ddp_and_custom_text_prefixes_convert_alike():
  """A training checkpoint's 'module.' prefix and CustomTextCLIP's 'text.' keys give the same variables."""
  sd = _state_dict(_open_clip(TINY_VIT))
  want = convert_clip(sd)
  text_keys = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
  custom = {("text." + k if k.startswith(text_keys) else k): v for k, v in sd.items()}
  for variant in ({"module." + k: v for k, v in sd.items()}, custom):
    got = convert_clip(variant)
    jax.tree.map(np.testing.assert_array_equal, got, want)
  assert clip_config(custom) == clip_config(sd)
