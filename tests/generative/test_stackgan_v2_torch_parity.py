"""StackGAN++ against an independent NCHW forward in PyTorch written from the paper / reference-code layer list.

The torch side uses the reference code's layouts (NCHW, the trunk's Dense output viewed as [C, 4, 4], GLU over
channels, concatenation of the tiled condition before the hidden code) with the flax weights converted, so it
checks the forward semantics: layer order, GLU halves, padding, residual sums, nearest upsampling, the
discriminators' reduce convs at 128 and 256, BatchNorm in inference mode.
"""
import jax
import numpy as np
import pytest

from jaxcnn import create_model

torch = pytest.importorskip("torch")
F = torch.nn.functional

KW = dict(latent_dim=5, c_dim=3, gf_dim=4, df_dim=2, r_num=2, base_size=64, num_branches=3, channels=3)


def t(x):
  return torch.from_numpy(np.array(x, np.float32))


def randomized(variables, seed=0):
  """BN statistics and affine parameters away from their identity initial values, so BN is really tested."""
  rng = np.random.default_rng(seed)

  def perturb(path, x):
    name = path[-1].key
    if name == "mean" or name == "bias":
      return x + 0.1 * rng.standard_normal(x.shape).astype(np.float32)
    if name == "var":
      return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    if name == "scale":
      return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    return np.asarray(x)
  return jax.tree_util.tree_map_with_path(perturb, jax.tree.map(np.asarray, variables))


class TorchReference:
  """The authors' layer semantics in NCHW, weights from the flax tree."""

  def __init__(self, variables):
    self.p, self.s = variables["params"], variables["batch_stats"]

  @staticmethod
  def conv(x, p, stride=1, pad=1):
    bias = t(p["bias"]) if "bias" in p else None
    return F.conv2d(x, t(p["kernel"]).permute(3, 2, 0, 1), bias, stride, pad)

  @staticmethod
  def bn(x, p, s):
    return F.batch_norm(x, t(s["mean"]), t(s["var"]), t(p["scale"]), t(p["bias"]), False, 0.0, 1e-5)

  def conv_bn_glu(self, x, p, s, name):  # conv3x3(in, 2 out), BN, GLU
    return F.glu(self.bn(self.conv(x, p[name]), p[f"{name}_bn"], s[f"{name}_bn"]), dim=1)

  def generate(self, z, emb):
    ca = self.p["generator"]["ca"]["fc"]
    h = F.glu(F.linear(emb, t(ca["kernel"]).T, t(ca["bias"])), dim=1)
    mu = h[:, :KW["c_dim"]]
    p, s = self.p["generator"]["tree"], self.s["generator"]["tree"]
    k = p["fc"]["kernel"]
    w = k.shape[1] // 32
    # flax: GLU halves of [4, 4, w] (position-major); torch: halves of view(-1, w, 4, 4) (channel-major)
    to_torch = lambda a: np.asarray(a).reshape(a.shape[:-1] + (2, 16, w)).swapaxes(-1, -2).reshape(a.shape)
    h = F.linear(torch.cat([mu, z], 1), t(to_torch(k)).T)
    h = F.batch_norm(h, t(to_torch(s["fc_bn"]["mean"])), t(to_torch(s["fc_bn"]["var"])),
                     t(to_torch(p["fc_bn"]["scale"])), t(to_torch(p["fc_bn"]["bias"])), False, 0.0, 1e-5)
    h = F.glu(h, dim=1).view(-1, w, 4, 4)
    for i in range(4):  # 4 -> 64
      h = self.conv_bn_glu(F.interpolate(h, scale_factor=2, mode="nearest"), p, s, f"trunk_up{i}")
    images = [torch.tanh(self.conv(h, p["img0"]))]
    for b in (1, 2):
      c = mu.view(-1, KW["c_dim"], 1, 1).repeat(1, 1, h.shape[2], h.shape[3])
      h = self.conv_bn_glu(torch.cat([c, h], 1), p, s, f"branch{b}_joint")
      for r in range(KW["r_num"]):
        pr, sr = p[f"branch{b}_res{r}"], s[f"branch{b}_res{r}"]
        y = self.conv_bn_glu(h, pr, sr, "conv1")
        h = h + self.bn(self.conv(y, pr["conv2"]), pr["conv2_bn"], sr["conv2_bn"])
      h = self.conv_bn_glu(F.interpolate(h, scale_factor=2, mode="nearest"), p, s, f"branch{b}_up")
      images.append(torch.tanh(self.conv(h, p[f"img{b}"])))
    return images, mu

  def discriminate(self, i, x, cond):
    p, s = self.p["discriminator"][f"d{i}"], self.s["discriminator"][f"d{i}"]
    lrelu = lambda v: F.leaky_relu(v, 0.2)
    h = lrelu(self.conv(x, p["down0"], 2))
    for j in range(1, 4 + i):  # 64: 4 stride-2 convs, 128: 5, 256: 6
      h = lrelu(self.bn(self.conv(h, p[f"down{j}"], 2), p[f"down{j}_bn"], s[f"down{j}_bn"]))
    for j in range(i):         # 128: one 3x3 conv back to 8 df, 256: two
      h = lrelu(self.bn(self.conv(h, p[f"reduce{j}"]), p[f"reduce{j}_bn"], s[f"reduce{j}_bn"]))
    c = cond.view(-1, KW["c_dim"], 1, 1).repeat(1, 1, 4, 4)
    hc = lrelu(self.bn(self.conv(torch.cat([c, h], 1), p["joint"]), p["joint_bn"], s["joint_bn"]))
    return (self.conv(hc, p["cond_logit"], 4, 0).view(-1), self.conv(h, p["uncond_logit"], 4, 0).view(-1))


def test_forward_matches_the_torch_reference():
  model = create_model("stackganpp", **KW)
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 5))
  emb = jax.random.normal(jax.random.PRNGKey(1), (2, 7))
  variables = randomized(jax.jit(model.init)(jax.random.PRNGKey(2), z, emb))
  images, mu, _ = jax.jit(lambda v, z, e: model.apply(v, z, e, method="generate"))(variables, z, emb)
  outs = jax.jit(lambda v, x, c: model.apply(v, x, c, method="discriminate"))(variables, images, mu)

  ref = TorchReference(variables)
  with torch.no_grad():
    ref_images, ref_mu = ref.generate(t(z), t(emb))
    np.testing.assert_allclose(np.asarray(mu), ref_mu.numpy(), rtol=1e-5, atol=1e-6)
    for img, r in zip(images, ref_images):
      np.testing.assert_allclose(np.asarray(img), r.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-5)
    for i, (cond, uncond) in enumerate(outs):
      x = t(images[i]).permute(0, 3, 1, 2)
      ref_cond, ref_uncond = ref.discriminate(i, x, t(mu))
      np.testing.assert_allclose(np.asarray(cond), ref_cond.numpy(), rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(np.asarray(uncond), ref_uncond.numpy(), rtol=1e-4, atol=1e-5)
  assert [im.shape[1] for im in images] == [64, 128, 256]
