"""optim.lr_multipliers: per-parameter-group learning rates (regex over 'a/b/kernel' paths -> m x the schedule)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxcnn.errors import UserError
from jaxcnn.tasks.base import Task, TrainState
from jaxcnn.train import finetune, optim

RULES = (("^backbone/", 0.1), ("^head/bias$", 0.0), ("^backbone/", 5.0))   # the first match wins
EXPECTED = {"backbone": {"conv": {"kernel": 0.1, "bias": 0.1}}, "neck": {"kernel": 1.0, "bias": 1.0},
            "head": {"kernel": 1.0, "bias": 0.0}}


def _params():
  rng = np.random.default_rng(0)
  return {"backbone": {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                                "bias": jnp.asarray(rng.normal(size=4), jnp.float32)}},
          "neck": {"kernel": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32),
                   "bias": jnp.asarray(rng.normal(size=4), jnp.float32)},
          "head": {"kernel": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32),
                   "bias": jnp.asarray(rng.normal(size=2), jnp.float32)}}


def _grads(params, seed=1):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)


def _cfg(**kw):
  c = ml_collections.ConfigDict(dict(name="sgd", lr=0.1, momentum=0.9, b1=0.9, b2=0.999, eps=1e-8,
                                     weight_decay=0.0, decay_all=False, grad_clip_norm=0.0, lr_multipliers=()))
  c.update(kw)
  return c


def _moves(tx, params, steps=3):
  """How far each parameter moved after `steps` updates with fixed per-step gradients."""
  state, p = tx.init(params), params
  for i in range(steps):
    updates, state = tx.update(_grads(params, seed=i), state, p)
    p = optax.apply_updates(p, updates)
  return jax.tree.map(jnp.subtract, p, params)


def _assert_scaled(moved, base, expected):
  for path, m in jax.tree_util.tree_flatten_with_path(expected)[0]:
    got, ref = _at(moved, path), _at(base, path)
    np.testing.assert_allclose(np.asarray(got), m * np.asarray(ref), rtol=2e-6, atol=1e-7,
                               err_msg=jax.tree_util.keystr(path))
    if m:
      assert float(jnp.abs(ref).max()) > 1e-3


def _at(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree


def test_path_multipliers_first_match_wins():
  rules = optim.parse_lr_multipliers(RULES)
  assert optim.path_multipliers(_params(), rules) == EXPECTED


@pytest.mark.parametrize("name, wd, clip", [("sgd", 0.0, 0.0), ("nesterov", 1e-2, 0.0), ("adamw", 0.1, 0.0),
                                            ("adam", 1e-2, 1.0), ("lamb", 0.1, 0.0)])
def test_each_group_moves_its_multiple_of_the_step(name, wd, clip):
  """With momentum / Adam moments, masked weight decay and clipping: m times the plain optimizer's movement
  (over several steps where the update does not depend on the parameters, else over one)."""
  params, schedule = _params(), optax.constant_schedule(0.1)
  steps = 3 if wd == 0 and name != "lamb" else 1
  base = _moves(optim.make_optimizer(_cfg(name=name, weight_decay=wd, grad_clip_norm=clip), schedule), params,
                steps)
  scaled = _moves(optim.make_optimizer(_cfg(name=name, weight_decay=wd, grad_clip_norm=clip,
                                            lr_multipliers=RULES), schedule), params, steps)
  _assert_scaled(scaled, base, EXPECTED)


def test_plain_sgd_step_is_exactly_m_lr_g():
  params = _params()
  tx = optim.make_optimizer(_cfg(momentum=0.0, lr_multipliers=(("^backbone/", 0.25),)), optax.constant_schedule(0.5))
  updates, _ = tx.update(_grads(params), tx.init(params), params)
  g = _grads(params)
  np.testing.assert_allclose(updates["backbone"]["conv"]["kernel"], -0.5 * 0.25 * g["backbone"]["conv"]["kernel"],
                             rtol=1e-6)
  np.testing.assert_allclose(updates["neck"]["kernel"], -0.5 * g["neck"]["kernel"], rtol=1e-6)


def test_no_rules_keep_the_optimizer_state_layout():
  params = _params()
  plain = optim.make_optimizer(_cfg(name="adamw"), optax.constant_schedule(0.1))
  ruled = optim.make_optimizer(_cfg(name="adamw", lr_multipliers=RULES), optax.constant_schedule(0.1))
  assert jax.tree.structure(plain.init(params)) == jax.tree.structure(
      optim.make_optimizer(_cfg(name="adamw", lr_multipliers=()), optax.constant_schedule(0.1)).init(params))
  # the rules add a stateless step: the same leaves (a checkpoint's arrays are unchanged)
  assert [x.shape for x in jax.tree.leaves(plain.init(params))] == [x.shape for x in jax.tree.leaves(ruled.init(params))]


def test_composes_with_finetune_freeze():
  """Frozen parameters stay put; the rest move by their multiplier."""
  params, schedule = _params(), optax.constant_schedule(0.1)
  base = _moves(optim.make_optimizer(_cfg(name="adamw", weight_decay=0.1), schedule), params, 1)
  tx = finetune.freeze(optim.make_optimizer(_cfg(name="adamw", weight_decay=0.1, lr_multipliers=RULES), schedule),
                       "^neck/")
  expected = {**EXPECTED, "neck": {"kernel": 0.0, "bias": 0.0}}
  _assert_scaled(_moves(tx, params, 1), base, expected)
  # a rule that only matches frozen parameters is refused
  with pytest.raises(UserError, match="matches no trained parameter"):
    finetune.freeze(optim.make_optimizer(_cfg(lr_multipliers=(("^neck/", 2.0),)), schedule), "^neck/").init(params)


class _Linear(Task):
  """y = head(neck(backbone(x))): enough for the generic step with gradient accumulation."""

  def init(self, rng, batch):
    return {"params": _params()}

  def loss(self, params, model_state, batch, rng):
    h = batch["x"] @ params["backbone"]["conv"]["kernel"] + params["backbone"]["conv"]["bias"]
    h = jnp.tanh(h) @ params["neck"]["kernel"] + params["neck"]["bias"]
    y = h @ params["head"]["kernel"] + params["head"]["bias"]
    loss = jnp.mean((y - batch["y"]) ** 2)
    return loss, (model_state, {"train/loss": loss})

  def eval_step(self, variables, batch):
    return {}


def test_composes_with_gradient_accumulation():
  """The multipliers act on the accumulated (mean) gradient: a step of accum 2 with rules moves m times the same
  step without them."""
  rng = np.random.default_rng(3)
  batch = {"x": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32), "y": jnp.asarray(rng.normal(size=(8, 2)),
                                                                                      jnp.float32)}
  config = ml_collections.ConfigDict({"train": {"grad_accum_steps": 2, "ema_decay": 0.0}})
  task, params = _Linear(config), _params()

  def moved(rules):
    tx = optim.make_optimizer(_cfg(name="adamw", weight_decay=0.1, lr_multipliers=rules),
                              optax.constant_schedule(0.01))
    state = TrainState(step=jnp.int32(0), params=params, model_state={}, opt_state=tx.init(params),
                       ema_params={}, rng=jax.random.PRNGKey(0))
    state, _ = task.train_step(state, batch, tx)
    return jax.tree.map(jnp.subtract, state.params, params)

  _assert_scaled(moved(RULES), moved(()), EXPECTED)


@pytest.mark.parametrize("rules, message", [
    ((("^backbone/(", 0.1),), "not a valid regular expression"),
    ((("^backbone/", -0.1),), "must be a finite number >= 0"),
    ((("^backbone/", float("nan")),), "must be a finite number >= 0"),
    ((("^backbone/", "0.1"),), "must be a finite number >= 0"),
    ((("^backbone/",),), "pair"),
])
def test_bad_rules_are_one_line_user_errors(rules, message):
  with pytest.raises(UserError, match=message) as err:
    optim.make_optimizer(_cfg(lr_multipliers=rules), optax.constant_schedule(0.1))
  assert "\n" not in str(err.value)
  with pytest.raises(UserError, match="list of"):
    optim.parse_lr_multipliers("^backbone/")


def test_one_pair_alone_is_one_rule():
  """--config.optim.lr_multipliers="('^backbone/', 0.1)" (the command line's form of a single rule)."""
  (regex, m), = optim.parse_lr_multipliers(("^backbone/", 0.1))
  assert regex.pattern == "^backbone/" and m == 0.1
  with pytest.raises(UserError, match="multiplier"):
    optim.parse_lr_multipliers(("^backbone/", -1))


def test_a_rule_matching_nothing_is_refused():
  tx = optim.make_optimizer(_cfg(lr_multipliers=(("^backbone/", 0.1), ("^bakbone/", 0.1))),
                            optax.constant_schedule(0.1))
  with pytest.raises(UserError, match="'\\^bakbone/' matches no trained parameter"):
    tx.init(_params())
