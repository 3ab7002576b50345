"""A learning check for models whose jitted `init` is slow to compile (hybrids with many layers).

`learning_check.train_losses` compiles `model.init`, which on a busy 2-core
CPU costs more than the whole check should. Here the weights come from
`fast_init.random_variables` (numpy draws in the shapes `eval_shape` gives),
with the normalisation layers and biases as a fresh model has them (scale 1,
shift 0, running mean 0 / variance 1), and the one compiled Adam step is kept,
so a test can also call it with chosen rngs (e.g. to see that dropout and
drop path use theirs).
"""
import jax
import jax.numpy as jnp
import optax

from fast_init import random_variables
from learning_check import digits_32x32


def fresh_like_variables(model, input_shape, seed: int = 0):
  """Random kernels (std 1/sqrt(fan_in)); scales and variances 1, biases and means 0."""
  def reset(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name in ("scale", "var"):
      return jnp.ones_like(leaf)
    if name in ("bias", "mean"):
      return jnp.zeros_like(leaf)
    return leaf
  return jax.tree_util.tree_map_with_path(reset, random_variables(model, input_shape, seed))


class Trainer:
  """Adam on one fixed batch of `count` digits (32x32x3), train=True with the given rngs."""

  def __init__(self, model, learning_rate: float = 3e-3, seed: int = 0, count: int = 32):
    self.images, self.labels = digits_32x32(count)
    variables = fresh_like_variables(model, self.images[:1].shape, seed)
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
