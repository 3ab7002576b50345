"""A short learning check: a small model's training loss falls on sklearn's digits, upsampled to 32x32.

The 8x8 digit images are repeated 4x per axis into 32x32x3 images in [-1, 1]
(no download needed). Adam trains on one fixed batch of 64; the check is
that the model can fit it at all: the loss ends well below where it began.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits


def digits_32x32(count: int = 64, seed: int = 0):
  digits = load_digits()
  index = np.random.default_rng(seed).permutation(len(digits.images))[:count]
  images = digits.images[index] / 8.0 - 1.0                      # [0, 16] -> [-1, 1]
  images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)    # 8x8 -> 32x32
  images = np.repeat(images[..., None], 3, axis=-1).astype(np.float32)
  return jnp.asarray(images), jnp.asarray(digits.target[index])


def train_losses(model, steps: int = 30, learning_rate: float = 3e-3, seed: int = 0):
  """Training losses of `steps` Adam steps on one batch (train=True, all rngs given)."""
  images, labels = digits_32x32()
  keys = dict(zip(("params", "dropout", "drop_path"), jax.random.split(jax.random.key(seed), 3)))
  # XLA:CPU compiles threefry's partitionable variant ~3x slower per parameter tensor; the
  # classic one draws the same distributions and keeps this check inside its time budget.
  with jax.threefry_partitionable(False):
    variables = jax.jit(lambda x: model.init(keys, x))(images[:1])
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  optimizer = optax.adam(learning_rate)
  opt_state = optimizer.init(params)

  def loss_fn(params, state, key):
    dropout, drop_path = jax.random.split(key)
    logits, new_state = model.apply({"params": params, **state}, images, train=True,
                                    rngs={"dropout": dropout, "drop_path": drop_path},
                                    mutable=list(state))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new_state

  @jax.jit
  def step(params, state, opt_state, key):
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state, loss

  losses = []
  for key in jax.random.split(jax.random.key(seed + 1), steps):
    params, state, opt_state, loss = step(params, state, opt_state, key)
    losses.append(float(loss))
  return losses
