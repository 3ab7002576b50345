"""What the model tests share: variables without compiling `init`, a short learning check, dtype/BN checks.

* `random_variables` / `fresh_like_variables`: on a busy 2-core CPU compiling
  `model.init` of a full-width network takes seconds per layer (each random
  initializer is its own computation) while the forward pass compiles in one,
  so forward/train tests draw variables with numpy in the shapes
  `jax.eval_shape(model.init)` gives.
* `Trainer` / `train_losses`: Adam on one fixed batch of sklearn's digits
  (8x8 upsampled to 32x32x3, no download); the check is that the model can fit
  it at all: the loss ends well below where it began.
* `check_bfloat16` / `check_bn_axis_name`: by `jax.eval_shape`, no compute.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from jaxcnn import create_model
from jaxcnn.utils import abstract_variables

RNGS = {"dropout": jax.random.key(0), "drop_path": jax.random.key(1)}


# ----------------------------------------------------------------------------- variables

def random_variables(model, input_shape, seed: int = 0):
  """Every variable random: kernels N(0, 1/fan_in), scales and variances U(0.5, 1.5), other vectors N(0, 0.1)."""
  abstract = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x),
                            jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name in ("scale", "var"):
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    if leaf.ndim <= 1:  # biases, BN means, layer scales
      return jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def fresh_like_variables(model, input_shape, seed: int = 0):
  """Random kernels (std 1/sqrt(fan_in)); scales and variances 1, biases and means 0, as a fresh model has them."""
  def reset(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name in ("scale", "var"):
      return jnp.ones_like(leaf)
    if name in ("bias", "mean"):
      return jnp.zeros_like(leaf)
    return leaf
  return jax.tree_util.tree_map_with_path(reset, random_variables(model, input_shape, seed))


# ----------------------------------------------------------------------------- learning

def digits_32x32(count: int = 64, seed: int = 0):
  """`count` digits as 32x32x3 images in [-1, 1] (each pixel repeated 4x4) and their labels."""
  digits = load_digits()
  index = np.random.default_rng(seed).permutation(len(digits.images))[:count]
  images = digits.images[index] / 8.0 - 1.0                      # [0, 16] -> [-1, 1]
  images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)    # 8x8 -> 32x32
  images = np.repeat(images[..., None], 3, axis=-1).astype(np.float32)
  return jnp.asarray(images), jnp.asarray(digits.target[index])


class Trainer:
  """Adam on one fixed batch of `count` digits, train=True with the given rngs; one compiled step kept.

  `init='numpy'` draws `fresh_like_variables` (no `init` to compile: for
  networks whose initialisers are slow to compile); `init='flax'` runs the
  model's own initialisers.
  """

  def __init__(self, model, learning_rate: float = 3e-3, seed: int = 0, count: int = 32, init: str = "numpy"):
    self.images, self.labels = digits_32x32(count)
    if init == "numpy":
      variables = fresh_like_variables(model, self.images[:1].shape, seed)
    else:
      keys = dict(zip(("params", "dropout", "drop_path"), jax.random.split(jax.random.key(seed), 3)))
      # XLA:CPU compiles threefry's partitionable variant ~3x slower per parameter tensor; the
      # classic one draws the same distributions.
      with jax.threefry_partitionable(False):
        variables = jax.jit(lambda x: model.init(keys, x))(self.images[:1])
    self.params = variables["params"]
    self.state = {k: v for k, v in variables.items() if k != "params"}
    self.optimizer = optax.adam(learning_rate)
    self.opt_state = self.optimizer.init(self.params)
    self.model = model
    self.step = jax.jit(self._step)

  def _loss(self, params, state, rngs):
    logits, new_state = self.model.apply({"params": params, **state}, self.images, train=True, rngs=rngs,
                                         mutable=list(state))
    return optax.softmax_cross_entropy_with_integer_labels(logits, self.labels).mean(), new_state

  def _step(self, params, state, opt_state, rngs):
    (loss, state), grads = jax.value_and_grad(self._loss, has_aux=True)(params, state, rngs)
    updates, opt_state = self.optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state, loss

  def loss_at_start(self, rngs):
    """The training loss of the initial variables under `rngs` (no update kept)."""
    return float(self.step(self.params, self.state, self.opt_state, rngs)[-1])

  def train(self, steps: int, seed: int = 1):
    """Runs `steps` updates; returns their losses."""
    losses = []
    for key in jax.random.split(jax.random.key(seed), steps):
      dropout, drop_path = jax.random.split(key)
      self.params, self.state, self.opt_state, loss = self.step(
          self.params, self.state, self.opt_state, {"dropout": dropout, "drop_path": drop_path})
      losses.append(float(loss))
    return losses


def train_losses(model, steps: int = 30, learning_rate: float = 3e-3, seed: int = 0):
  """Training losses of `steps` Adam steps on one batch of 64 digits, from the model's own initialisation."""
  return Trainer(model, learning_rate, seed, count=64, init="flax").train(steps, seed=seed + 1)


# ----------------------------------------------------------------------------- dtype and BatchNorm axis

def check_bfloat16(name: str, size: int = 64, **kwargs):
  """bfloat16 compute: float32 parameters, every module output and the logits in bfloat16."""
  model = create_model(name, dtype=jnp.bfloat16, **kwargs)
  variables = abstract_variables(model, (1, size, size, 3))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {np.dtype(jnp.float32)}
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  logits, state = jax.eval_shape(lambda v, x: model.apply(v, x, capture_intermediates=True,
                                                          mutable=["intermediates"]), variables, x)
  assert logits.dtype == jnp.bfloat16
  assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {np.dtype(jnp.bfloat16)}


def check_bn_axis_name(name: str, size: int = 64, **kwargs):
  """With `bn_axis_name` set, training BatchNorms reduce over that axis: unbound outside a mapped axis."""
  model = create_model(name, bn_axis_name="batch", **kwargs)
  variables = abstract_variables(model, (1, size, size, 3))
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  train = lambda v, x: model.apply(v, x, train=True, rngs=RNGS, mutable=["batch_stats"])
  with pytest.raises(NameError, match="batch"):
    jax.eval_shape(train, variables, x)
  mapped = jax.vmap(train, in_axes=(None, 0), axis_name="batch")
  jax.eval_shape(mapped, variables, jax.ShapeDtypeStruct((2,) + x.shape, jnp.float32))
