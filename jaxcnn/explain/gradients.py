"""Input attributions: vanilla gradients, SmoothGrad, Integrated Gradients, Guided Backprop, Guided Grad-CAM,
occlusion sensitivity. Every function takes images [B, H, W, C] and a `probe.Target` and returns [B, H, W, C]
(occlusion: [B, H, W]); `jax.jit` them with the model static (`explain.run` does).

Guided Backprop (Springenberg et al. 2015) and ZFNet's deconvnet differ from the gradient only in the
backward rule of ReLU. The models are left untouched: `with_relu_backward(fn, rule)` traces `fn` to a
jaxpr and re-evaluates it with every `jax.nn.relu` (flax's `nn.relu` is the same function; it appears as
one `custom_jvp_call` named 'relu') replaced by a `jax.custom_vjp` ReLU whose backward is `rule(x, g)`:
  gradient     g * (x > 0)
  guided       relu(g) * (x > 0)   (positive signal through positive units)
  deconvnet    relu(g)             (Zeiler & Fergus: ReLU on the backward signal, forward mask ignored)
The rewrite descends into jitted sub-functions; ReLUs inside `nn.scan` / `nn.remat` bodies, or written as
`jnp.maximum(x, 0)`, keep their gradient (no model of the zoo does that with a ReLU). Chosen over
`nn.intercept_methods` (ReLU is a function, not a module, in most of the zoo's models) and over
monkey-patching `nn.relu` (global state, missed by modules that bound the function at import).
"""
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from jaxcnn.errors import UserError, unknown
from jaxcnn.explain import probe

RELU_RULES = {
    "gradient": lambda x, g: g * (x > 0),
    "guided": lambda x, g: jnp.maximum(g, 0) * (x > 0),
    "deconvnet": lambda x, g: jnp.maximum(g, 0),
}


@functools.lru_cache(maxsize=None)
def _relu_with(rule_name: str):
  rule = RELU_RULES[rule_name]

  @jax.custom_vjp
  def relu(x):
    return jnp.maximum(x, 0)

  relu.defvjp(lambda x: (jnp.maximum(x, 0), x), lambda x, g: (rule(x, g).astype(g.dtype),))
  return relu


def _is_relu(eqn) -> bool:
  """`jax.nn.relu`: a custom_jvp_call around one jitted function named 'relu'."""
  inner = eqn.params["call_jaxpr"].jaxpr.eqns
  return len(inner) == 1 and inner[0].primitive.name in ("jit", "pjit") and inner[0].params.get("name") == "relu"


def _eval_jaxpr(jaxpr, consts, args, relu):
  env = {}
  read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]
  for var, val in zip(jaxpr.constvars, consts):
    env[var] = val
  for var, val in zip(jaxpr.invars, args):
    env[var] = val
  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name == "custom_jvp_call" and _is_relu(eqn):
      outs = [relu(ins[-1])]
    elif name in ("jit", "pjit", "closed_call"):
      sub = eqn.params.get("jaxpr") or eqn.params["call_jaxpr"]
      outs = _eval_jaxpr(sub.jaxpr, sub.consts, ins, relu)
    else:
      with eqn.ctx.manager:
        outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
      outs = outs if eqn.primitive.multiple_results else [outs]
    for var, val in zip(eqn.outvars, outs):
      env[var] = val
  return [read(v) for v in jaxpr.outvars]


def with_relu_backward(fn: Callable, rule: str) -> Callable:
  """`fn` with every ReLU's backward pass replaced by RELU_RULES[rule] (same forward values)."""
  relu = _relu_with(rule)

  def wrapped(*args):
    closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    outs = _eval_jaxpr(closed.jaxpr, closed.consts, jax.tree.leaves(args), relu)
    return jax.tree.unflatten(jax.tree.structure(shape), outs)
  return wrapped


def _score_fn(model, variables, target, forward=None, relu_rule: Optional[str] = None):
  """x -> summed target score (images are independent in eval mode: its gradient is each image's)."""
  def total(x):
    return jnp.sum(probe.scores(model, variables, x, target, forward))
  return with_relu_backward(total, relu_rule) if relu_rule else total


def vanilla(model, variables, x, target, forward=None):
  """d(score)/d(input) (Simonyan et al. 2014)."""
  return jax.grad(_score_fn(model, variables, target, forward))(x)


def guided_backprop(model, variables, x, target, forward=None):
  """The gradient with guided ReLUs (Springenberg et al. 2015)."""
  return jax.grad(_score_fn(model, variables, target, forward, "guided"))(x)


def smoothgrad(model, variables, x, target, samples: int = 25, noise: float = 0.15, seed: int = 0, forward=None):
  """Mean gradient over `samples` noisy copies, noise std = `noise` * (max - min) per image (Smilkov 2017)."""
  grad = jax.grad(_score_fn(model, variables, target, forward))
  sigma = noise * (jnp.max(x, axis=(1, 2, 3), keepdims=True) - jnp.min(x, axis=(1, 2, 3), keepdims=True))

  def one(k):
    return grad(x + sigma * jax.random.normal(k, x.shape, x.dtype))
  return jnp.mean(jax.lax.map(one, jax.random.split(jax.random.key(seed), samples)), axis=0)


def ig_alphas(steps: int, integration: str = "gausslegendre"):
  """(alphas, weights) of the path integral over [0, 1], captum's methods and scaling."""
  if steps < 1:
    raise UserError(f"integrated gradients: steps must be >= 1, got {steps}")
  if integration == "gausslegendre":
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return 0.5 * (nodes + 1), 0.5 * weights
  if integration == "riemann_trapezoid":
    if steps < 2:
      raise UserError("integrated gradients: riemann_trapezoid needs steps >= 2")
    alphas = np.linspace(0, 1, steps)
    return alphas, np.r_[0.5, np.ones(steps - 2), 0.5] / (steps - 1)
  offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
  if integration not in offsets:
    raise unknown("integration method", integration, [*offsets, "riemann_trapezoid", "gausslegendre"])
  return (np.arange(steps) + offsets[integration]) / steps, np.full(steps, 1.0 / steps)


def integrated_gradients(model, variables, x, target, baseline=None, steps: int = 50,
                         integration: str = "gausslegendre", forward=None):
  """(attributions [B, H, W, C], completeness gap [B]) of Sundararajan et al. 2017.

  attributions = (x - baseline) * sum_i w_i grad(baseline + a_i (x - baseline)); the gap is
  sum(attributions) - (F(x) - F(baseline)), which shrinks as `steps` grows (the completeness axiom).
  Defaults (zero baseline, 50 Gauss-Legendre steps) are captum's.
  """
  baseline = jnp.zeros_like(x) if baseline is None else jnp.broadcast_to(baseline, x.shape)
  alphas, weights = ig_alphas(steps, integration)
  grad = jax.grad(_score_fn(model, variables, target, forward))

  def step(carry, aw):
    a, w = aw
    return carry + w * grad(baseline + a * (x - baseline)), None

  total, _ = jax.lax.scan(step, jnp.zeros_like(x), (jnp.asarray(alphas, x.dtype), jnp.asarray(weights, x.dtype)))
  attributions = (x - baseline) * total
  delta = probe.scores(model, variables, x, target, forward) - probe.scores(model, variables, baseline, target,
                                                                            forward)
  return attributions, jnp.sum(attributions, axis=(1, 2, 3)) - delta


def occlusion(model, variables, x, target, window: int = 8, stride: int = 4, value: float = 0.0, forward=None):
  """Score drop when a `window` square (filled with `value`) covers each pixel, averaged over the windows
  covering it (Zeiler & Fergus 2014, section 4.2; captum's Occlusion with one channel-spanning window)."""
  h, w = x.shape[1:3]
  if window < 1 or stride < 1 or window > min(h, w):
    raise UserError(f"occlusion: window {window} and stride {stride} must be >= 1 and window <= {min(h, w)}")
  tops = np.arange(0, h - window + 1, stride)
  lefts = np.arange(0, w - window + 1, stride)
  corners = np.stack(np.meshgrid(tops, lefts, indexing="ij"), -1).reshape(-1, 2)
  rows, cols = np.arange(h), np.arange(w)
  clean = probe.scores(model, variables, x, target, forward)

  def drop(corner):
    inside = (((rows >= corner[0]) & (rows < corner[0] + window))[:, None]
              & ((cols >= corner[1]) & (cols < corner[1] + window))[None, :])
    occluded = jnp.where(inside[None, :, :, None], jnp.asarray(value, x.dtype), x)
    diff = clean - probe.scores(model, variables, occluded, target, forward)
    return inside, diff

  inside, diffs = jax.lax.map(drop, jnp.asarray(corners))  # [P, H, W], [P, B]
  counts = jnp.sum(inside, axis=0)
  total = jnp.einsum("phw,pb->bhw", inside.astype(x.dtype), diffs)
  return total / jnp.maximum(counts, 1)
