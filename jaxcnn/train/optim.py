"""Optimizers and learning-rate schedules from the `optim` config section."""
import re

import jax
import jax.numpy as jnp
import optax

from jaxcnn.errors import UserError, unknown

OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "lamb", "adadelta")
SCHEDULES = ("cosine", "step", "constant", "linear", "poly")


def make_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0, then cosine / step / constant / linear / poly decay to `end_lr_factor * lr`.

  'poly' (DeepLab; torchvision's segmentation reference `LambdaLR(lambda x: (1 - x / iters) ** 0.9)`):
  lr * (1 - t / T) ** optim.poly_power (0.9 if the config has no such key), t counted from the
  end of warmup and T the steps after it; with end_lr_factor > 0 it decays to that floor instead of 0.
  """
  lr, warmup = float(optim_cfg.lr), int(optim_cfg.warmup_steps)
  if lr <= 0:
    raise UserError(f"optim.lr must be > 0, got {lr}")
  if warmup < 0:
    raise UserError(f"optim.warmup_steps must be >= 0, got {warmup}")
  if warmup >= total_steps:  # a shortened run: keep the warmup's share of training rather than never peaking
    warmup = total_steps // 10
  decay_steps = max(total_steps - warmup, 1)
  end = lr * float(optim_cfg.end_lr_factor)
  name = optim_cfg.schedule
  if name == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr)
  elif name == "linear":
    decay = optax.linear_schedule(lr, end, decay_steps)
  elif name == "constant":
    decay = optax.constant_schedule(lr)
  elif name == "poly":
    power = float(optim_cfg.get("poly_power", 0.9))
    if not power > 0:
      raise UserError(f"optim.poly_power must be > 0, got {power}")
    decay = optax.polynomial_schedule(lr, end, power, decay_steps)
  elif name == "step":
    # Multiply by `step_factor` at each fraction of training in `step_at` (e.g. (0.5, 0.75) as in He et al.).
    boundaries = {int(f * decay_steps): float(optim_cfg.step_factor) for f in optim_cfg.step_at}
    decay = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    raise unknown("optim.schedule", name, SCHEDULES)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def decay_mask(params):
  """True for weights that get weight decay: kernels and embeddings, not biases or norm scales."""
  return jax.tree.map(lambda x: x.ndim > 1, params)


def norm_penalty(params, l1: float, l2: float, mask=decay_mask) -> jax.Array:
  """l1 * sum |w| + l2 * sum w^2 over the masked weights (Keras' L1L2 regulariser; both on: elastic net)."""
  chosen = [w for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask(params) if mask else
                                                                          jax.tree.map(lambda _: True, params))) if m]
  return sum((l1 * jnp.sum(jnp.abs(w)) + l2 * jnp.sum(jnp.square(w)) for w in chosen), jnp.zeros((), jnp.float32))


def add_norm_penalty(l1: float, l2: float, mask=decay_mask) -> optax.GradientTransformation:
  """Adds the gradient of `norm_penalty` (l1 sign(w) + 2 l2 w on masked weights) to the loss's gradient.

  This is the penalty added to the loss, placed first in the chain: it is clipped with the loss's gradient
  and goes through the optimizer's preconditioning (Adam's moments). Decoupled weight decay (AdamW's
  `optim.weight_decay`) instead shrinks the weights by lr * wd * w after the optimizer, untouched by the
  moments; for plain SGD the two coincide (l2 = wd / 2). The logged train/loss is the data term alone.
  """
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("add_norm_penalty needs the parameters")
    grads = jax.grad(norm_penalty)(params, l1, l2, mask)
    return jax.tree.map(lambda u, g: u + g.astype(u.dtype), updates, grads), state

  return optax.GradientTransformation(init, update)


def make_optimizer(optim_cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
  """The optimizer named by `optim.name`, with clipping, masked weight decay and norm penalties (optim.l1/l2)."""
  name, wd = optim_cfg.name, float(optim_cfg.weight_decay)
  if wd < 0:
    raise UserError(f"optim.weight_decay must be >= 0, got {wd}")
  l1, l2 = float(optim_cfg.get("l1", 0.0)), float(optim_cfg.get("l2", 0.0))
  if l1 < 0 or l2 < 0:
    raise UserError(f"optim.l1 and optim.l2 must be >= 0, got {l1} and {l2}")
  mask = None if optim_cfg.decay_all else decay_mask
  if name in ("sgd", "nesterov"):
    # Coupled L2 as in the classic SGD recipes: decay enters the gradient before momentum.
    tx = optax.chain(optax.add_decayed_weights(wd, mask),
                     optax.sgd(schedule, momentum=float(optim_cfg.momentum) or None,
                               nesterov=name == "nesterov"))
  elif name == "adam":
    tx = optax.chain(optax.add_decayed_weights(wd, mask),
                     optax.adam(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps))
  elif name == "adamw":
    tx = optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                     weight_decay=wd, mask=mask)
  elif name == "lamb":
    tx = optax.lamb(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                    weight_decay=wd, mask=mask)
  elif name == "adadelta":
    # Zeiler 2012 (CRNN's optimizer, rho 0.9): optim.lr scales the step (1.0 = the paper's), optim.rho.
    tx = optax.chain(optax.add_decayed_weights(wd, mask),
                     optax.adadelta(schedule, rho=float(optim_cfg.get("rho", 0.9)), eps=optim_cfg.eps))
  else:
    raise unknown("optimizer (optim.name)", name, OPTIMIZERS)
  rules = parse_lr_multipliers(optim_cfg.get("lr_multipliers", ()))
  if rules:
    tx = optax.chain(tx, scale_by_path(rules))
  clip = float(optim_cfg.grad_clip_norm)
  if clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  if l1 > 0 or l2 > 0:
    tx = optax.chain(add_norm_penalty(l1, l2, mask), tx)
  return tx


def parse_lr_multipliers(rules) -> tuple:
  """`optim.lr_multipliers` ((regex, multiplier), ...) checked and compiled: ((re.Pattern, float), ...)."""
  what = "optim.lr_multipliers"
  if isinstance(rules, (str, bytes)) or not isinstance(rules, (tuple, list)):
    raise UserError(f"{what} must be a list of (regex, multiplier) pairs, e.g. (('^backbone/', 0.1),); got {rules!r}")
  if len(rules) == 2 and isinstance(rules[0], str) and not isinstance(rules[1], (tuple, list)):
    rules = (rules,)  # one pair as the command line gives it: "('^backbone/', 0.1)"
  out = []
  for rule in rules:
    if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
      raise UserError(f"{what}: each entry must be a (regex, multiplier) pair, got {rule!r}")
    pattern, mult = rule
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise UserError(f"{what}: '{pattern}' is not a valid regular expression: {e}") from None
    if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not 0 <= mult < float("inf"):
      raise UserError(f"{what}: the multiplier of '{pattern}' must be a finite number >= 0, got {mult!r}")
    out.append((regex, float(mult)))
  return tuple(out)


def _path_name(path) -> str:
  """A pytree key path as 'a/b/kernel' (the form finetune.freeze and the sharding rules use)."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def path_multipliers(params, rules):
  """Per parameter: the multiplier of the first rule whose regex matches its 'a/b/kernel' path (else 1)."""
  def one(path, _):
    name = _path_name(path)
    return next((m for regex, m in rules if regex.search(name)), 1.0)
  return jax.tree_util.tree_map_with_path(one, params)


def scale_by_path(rules) -> optax.GradientTransformation:
  """The update of each parameter times its `path_multipliers` factor: its learning rate is that multiple of
  the schedule's, momentum, Adam's moments, clipping and weight decay included (the last transformation, as a
  PyTorch parameter group's `lr`). Stateless. A rule that matches no (trained) parameter is an error."""
  def init(params):
    names = [_path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for regex, _ in rules:
      if not any(regex.search(n) for n in names):
        raise UserError(f"optim.lr_multipliers: '{regex.pattern}' matches no trained parameter "
                        f"(paths look like '{names[0] if names else 'a/b/kernel'}')")
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    factors = path_multipliers(updates, rules)
    return jax.tree.map(lambda u, m: u if m == 1.0 else u * jnp.asarray(m, u.dtype), updates, factors), state

  return optax.GradientTransformation(init, update)

