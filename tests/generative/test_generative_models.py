"""Shapes, dtypes and parameter counts of the VAE, GAN/CGAN/DCGAN and StackGAN models."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import create_model
from jaxcnn.errors import UserError
from jaxcnn.utils import abstract_variables, param_count

KEY = jax.random.PRNGKey(0)


def init(model, *args):
  """model.init as one compiled computation (eager init dispatches every initializer separately: slow)."""
  return jax.jit(model.init)(KEY, *args)


def apply(model, variables, *args, method=None):
  return jax.jit(model.apply, static_argnames="method")(variables, *args, method=method)


def test_vae_shapes_and_modes():
  vae = create_model("conv_vae", image_size=16, channels=1, latents=8, widths=(8, 16), hidden=32)
  x = jax.random.uniform(KEY, (3, 16, 16, 1))
  variables = init(vae, x, KEY)
  out, mean, logvar = apply(vae, variables, x, jax.random.PRNGKey(1))
  chex.assert_shape(out, (3, 16, 16, 1))
  chex.assert_shape([mean, logvar], (3, 8))
  chex.assert_type([out, mean, logvar], jnp.float32)
  # Without a key z is the mean: deterministic; with different keys the samples differ.
  a, _, _ = apply(vae, variables, x)
  b, _, _ = apply(vae, variables, x)
  chex.assert_trees_all_equal(a, b)
  c, _, _ = apply(vae, variables, x, jax.random.PRNGKey(2))
  assert not np.allclose(out, c)
  z = jnp.zeros((5, 8))
  chex.assert_shape(apply(vae, variables, z, method="decode"), (5, 16, 16, 1))
  with pytest.raises(UserError, match="divisible"):
    jax.eval_shape(create_model("conv_vae", image_size=18, widths=(8, 16)).init, KEY, jnp.zeros((1, 18, 18, 1)))


@pytest.mark.parametrize("name,kwargs", [
    ("gan", dict(image_size=12, channels=1, latent_dim=10, g_hidden=(16,), d_hidden=(16,))),
    ("gan", dict(image_size=12, channels=3, latent_dim=10, g_hidden=(16,), d_hidden=(16,), num_classes=4)),
    ("dcgan", dict(image_size=16, channels=3, latent_dim=10, g_width=8, d_width=8)),
    ("dcgan", dict(image_size=8, channels=1, latent_dim=10, g_width=8, d_width=8, num_classes=4)),
])
def test_gan_pairs(name, kwargs):
  model = create_model(name, **kwargs)
  z = jax.random.normal(KEY, (4, 10))
  labels = jnp.array([0, 1, 2, 3]) if kwargs.get("num_classes") else None
  variables = init(model, z, labels)
  assert set(variables["params"]) == {"generator", "discriminator"}
  fake = apply(model, variables, z, labels, method="generate")
  size, ch = kwargs["image_size"], kwargs["channels"]
  chex.assert_shape(fake, (4, size, size, ch))
  chex.assert_type(fake, jnp.float32)
  assert float(jnp.max(jnp.abs(fake))) <= 1.0  # tanh output
  logits = apply(model, variables, fake, labels, method="discriminate")
  chex.assert_shape(logits, (4,))
  if labels is not None:  # conditioning changes what both networks compute
    other = (labels + 1) % 4
    assert not np.allclose(fake, apply(model, variables, z, other, method="generate"))
    assert not np.allclose(logits, apply(model, variables, fake, other, method="discriminate"))
    with pytest.raises(UserError, match="labels"):
      model.apply(variables, z, None, method="generate")


def test_dcgan_matches_the_pytorch_example_size():
  """64x64, nz=100, ngf=ndf=64: the PyTorch DCGAN example's G (3,576,704) and D (2,765,568) parameters,
  plus the biases kept where no BatchNorm follows (G output 3, D first conv 64 + logit 1)."""
  model = create_model("dcgan", image_size=64, channels=3)
  v = jax.eval_shape(lambda: model.init(KEY, jnp.zeros((2, 100))))
  assert param_count(v["params"]["generator"]) == 3_576_704 + 3
  assert param_count(v["params"]["discriminator"]) == 2_765_568 + 65


def test_dcgan_init_is_normal_0_02():
  model = create_model("dcgan", image_size=32, channels=3, g_width=32, d_width=32)
  v = init(model, jnp.zeros((2, 100)))
  kernel = np.asarray(v["params"]["generator"]["up0"]["kernel"])
  assert abs(kernel.std() - 0.02) < 0.002 and abs(kernel.mean()) < 0.002
  scale = np.asarray(v["params"]["discriminator"]["down1_bn"]["scale"])
  assert abs(scale.mean() - 1.0) < 0.01 and 0.005 < scale.std() < 0.04


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = create_model("dcgan", image_size=8, channels=1, latent_dim=6, g_width=8, d_width=8, dtype=jnp.bfloat16)
  v = init(model, jnp.zeros((2, 6)))
  assert {x.dtype for x in jax.tree.leaves(v["params"])} == {jnp.dtype("float32")}
  out = apply(model, v, jnp.ones((2, 6)), method="generate")
  chex.assert_type([out, apply(model, v, out, method="discriminate")], jnp.float32)


def test_dcgan_rejects_sizes_that_are_not_4_times_a_power_of_2():
  with pytest.raises(UserError, match="image_size"):
    jax.eval_shape(create_model("dcgan", image_size=24).init, KEY, jnp.zeros((1, 100)))


def small_stage1(**kw):
  return create_model("stackgan_stage1", **dict(dict(latent_dim=6, c_dim=4, gf_dim=8, df_dim=4, ef_dim=5,
                                                     image_size=16, channels=3), **kw))


def test_stackgan_stage1():
  model = small_stage1()
  z, emb = jax.random.normal(KEY, (3, 6)), jax.random.normal(KEY, (3, 12))
  v = init(model, z, emb)
  img, mu, logvar = apply(model, v, z, emb, method="generate")
  chex.assert_shape(img, (3, 16, 16, 3))
  chex.assert_shape([mu, logvar], (3, 4))
  # Conditioning Augmentation: no key -> c = mu (deterministic); a key samples around it.
  img2, _, _ = apply(model, v, z, emb, method="generate")
  chex.assert_trees_all_equal(img, img2)
  img3, _, _ = apply(model, v, z, emb, jax.random.PRNGKey(5), method="generate")
  assert not np.allclose(img, img3)
  cond, uncond = apply(model, v, img, emb, method="discriminate")
  chex.assert_shape(cond, (3,))
  assert uncond is None
  # The embedding enters D too.
  assert not np.allclose(cond, apply(model, v, img, emb[::-1], method="discriminate")[0])


def test_stackgan_stage2_refines_to_a_larger_size():
  model = create_model("stackgan_stage2", c_dim=4, gf_dim=8, df_dim=4, ef_dim=5, r_num=2, lowres_size=16,
                       image_size=32, channels=3)
  low, emb = jax.random.uniform(KEY, (2, 16, 16, 3), minval=-1, maxval=1), jax.random.normal(KEY, (2, 12))
  v = init(model, low, emb)
  img, mu, _ = apply(model, v, low, emb, jax.random.PRNGKey(1), method="generate")
  chex.assert_shape(img, (2, 32, 32, 3))
  chex.assert_shape(mu, (2, 4))
  cond, uncond = apply(model, v, img, emb, method="discriminate")
  chex.assert_shape([cond, uncond], (2,))
  assert "res1" in v["params"]["generator"] and "res2" not in v["params"]["generator"]


def test_stackgan_paper_sizes_build():
  """The paper's 64 -> 256 configuration: shapes only (no compute)."""
  s1 = create_model("stackgan_stage1")
  v1 = jax.eval_shape(lambda: s1.init(KEY, jnp.zeros((2, 100)), jnp.zeros((2, 1024))))
  out = jax.eval_shape(lambda v: s1.apply(v, jnp.zeros((2, 100)), jnp.zeros((2, 1024)), method="generate"), v1)
  assert out[0].shape == (2, 64, 64, 3)
  s2 = create_model("stackgan_stage2")
  v2 = jax.eval_shape(lambda: s2.init(KEY, jnp.zeros((2, 64, 64, 3)), jnp.zeros((2, 1024))))
  out = jax.eval_shape(lambda v: s2.apply(v, jnp.zeros((2, 64, 64, 3)), jnp.zeros((2, 1024)), method="generate"), v2)
  assert out[0].shape == (2, 256, 256, 3)
  # Stage-II D: six stride-2 convs to 4x4 x 32*df, then two 3x3 convs back to 8*df (the authors' layout).
  d = v2["params"]["discriminator"]
  assert d["down5"]["kernel"].shape == (4, 4, 16 * 64, 32 * 64)
  assert d["reduce1"]["kernel"].shape == (3, 3, 16 * 64, 8 * 64)
  assert "uncond_logit" in d


def test_abstract_variables_counts_the_vae():
  vae = create_model("conv_vae", image_size=32, channels=1)
  v = abstract_variables(vae, (1, 32, 32, 1))
  # enc: 4*4*1*32+32, 4*4*32*64+64, 4096*256+256, 2 x (256*16+16); dec: 16*256+256, 256*4096+4096,
  # 4*4*64*32+32, 4*4*32*1+1.
  expected = (544 + 32832 + 1048832 + 2 * 4112) + (4352 + 1052672 + 32800 + 513)
  assert param_count(v["params"]) == expected
