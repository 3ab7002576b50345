"""The task interface: everything the one trainer does not know about a problem.

A task turns a batch into a loss and metrics (classification, VAE, GAN, ...),
owns its model(s) and optimizer(s), and says how eval runs. The trainer
(`jaxcnn.train`) owns the loop, devices, checkpoints and logging.

The train state is one pytree (`TrainState`); a task with several networks
(a GAN) keeps them side by side in `params` / `opt_state` under their names.
"""
import abc
from typing import Any, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

Metrics = Dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32 scalar: optimizer steps taken
  params: Any                # trainable variables
  model_state: Any           # non-trainable collections (batch_stats, ...)
  opt_state: Any
  ema_params: Any            # {} when EMA is off
  rng: jax.Array             # uint32[2] base key; each step folds in `step`


class Task(abc.ABC):
  """Base class. Subclasses implement `init`, `loss` and `eval_step` (or override `train_step`)."""

  # Metric that keep-best checkpointing and the summary headline use, and whether higher is better.
  best_metric: Tuple[str, str] = ("eval/loss", "min")

  def __init__(self, config, axis_name: Optional[str] = None):
    self.config = config
    # Name of the mapped device axis on the legacy pmap path (gradients and BatchNorm
    # statistics are averaged over it); None under jit, where sharding does that.
    self.axis_name = axis_name

  # --- what a task must define -------------------------------------------------
  @abc.abstractmethod
  def init(self, rng: jax.Array, batch: Dict[str, jax.Array]) -> Dict[str, Any]:
    """Initial variables {'params': ..., other collections...} for one (abstract) batch."""

  @abc.abstractmethod
  def loss(self, params, model_state, batch, rng) -> Tuple[jax.Array, Tuple[Any, Metrics]]:
    """Training loss for one batch: (loss, (new_model_state, metrics))."""

  @abc.abstractmethod
  def eval_step(self, variables, batch) -> Metrics:
    """Per-batch SUMS over real examples (batch['mask']), e.g. {'correct': ., 'count': .}.

    Values may be arrays (a confusion matrix): they are summed elementwise over the split.
    Entries named `per_example/<name>` are per-example arrays instead, collected for `host_eval`
    (return `per_example/mask` = batch['mask'] with them so padding is dropped).
    """

  def eval_context(self, variables) -> Any:
    """What every eval batch needs that depends on the variables only (contrastive: the zero-shot classifier,
    the class names' text embeddings): computed once per evaluation, jitted, by both runners, and handed to
    `eval_step(variables, batch, context)`. None (the default): eval_step is called without it."""
    return None

  def eval_metrics(self, sums: Dict[str, float]) -> Dict[str, float]:
    """Turns the summed eval_step outputs of a whole split into 'eval/...' metrics."""
    count = max(sums.pop("count"), 1.0)
    return {f"eval/{k}": float(v) / count for k, v in sums.items()}

  def host_batch(self, outputs: Dict[str, Any]) -> Dict[str, Any]:
    """What to keep of one eval batch's `per_example/<name>` outputs (default: all of them, unchanged).

    Called on the host, on every process, once per global eval batch (after the runner has gathered it
    over processes), with the names without the prefix, padding examples included. The result's values
    keep the leading example axis (NumPy arrays, object arrays allowed); they are concatenated over the
    split for `host_eval`. A task whose per-example outputs are large turns them into a compact form here
    (detection: instance masks [B, D, H, W] into COCO RLEs) instead of holding the whole split's pixels.
    """
    return outputs

  def host_eval(self, outputs: Dict[str, Any]) -> Dict[str, float]:
    """Host-side evaluator over the whole split (COCO mAP, retrieval recall, ...), on every process.

    `outputs` holds the `per_example/<name>` arrays eval_step returned (as `host_batch` kept them),
    concatenated over the split in order with padding examples removed (without the prefix). Returns
    'eval/...' metrics.
    """
    return {}

  def init_batch(self, spec: Dict[str, jax.ShapeDtypeStruct]) -> Dict[str, jax.Array]:
    """The batch `init` sees: zeros shaped like two examples of the data pipeline's batches.

    `spec` is `jaxcnn.data.element_spec(...)` (every field the pipeline yields); a task whose
    models need something else (e.g. token ids it makes itself) overrides this.
    """
    return {k: jnp.zeros((2,) + tuple(v.shape[1:]), v.dtype) for k, v in spec.items()}

  def optimizer(self, make_tx) -> optax.GradientTransformation:
    """The optimizer; `make_tx(optim_cfg)` builds one from a config section with the run's schedule."""
    return make_tx(self.config.optim)

  def parameter_count(self, params) -> int:
    from jaxcnn.utils import param_count
    return param_count(params)

  def compiler_options(self) -> Dict[str, Any]:
    """XLA options for compiling the train step: the model's `cpu_compiler_options` on CPU.

    Only with the CPU formulations enabled (`jaxcnn.layers.cpu_conv`): `JAXCNN_CPU_CONV=0`
    keeps plain XLA, options included. GPU/TPU compiles get none.
    """
    from jaxcnn.layers import cpu_conv
    model = getattr(self, "model", None)
    if model is None or not cpu_conv.enabled():
      return {}
    return dict(getattr(model, "cpu_compiler_options", {}))

  def describe(self) -> Dict[str, Any]:
    """What a checkpoint must match to be resumed by this config (model name, ...)."""
    return {"task": type(self).__name__, "model": self.config.model.name}

  def on_eval(self, variables, step: int, workdir: str) -> Dict[str, Any]:
    """Hook after each eval (sample grids, FID, ...), on every process; returns extra metrics to log.

    Only process 0 should write files (`jax.process_index() == 0`).
    """
    return {}

  def finish(self, variables, workdir: str, evaluate) -> Dict[str, Any]:
    """Hook at the end of a run (plots, sample grids, FID, ...); returns extra summary entries."""
    return {}

  # --- the generic single-loss step --------------------------------------------
  def train_step(self, state: TrainState, batch, tx: optax.GradientTransformation):
    rng = jax.random.fold_in(state.rng, state.step)
    grads, model_state, metrics = self.accumulated_grads(state.params, state.model_state, batch, rng)
    state = self.apply_gradients(state, grads, tx, model_state=model_state)
    return state, metrics

  def accumulated_grads(self, params, model_state, batch, rng, loss_fn=None):
    """Mean gradient over `train.grad_accum_steps` micro-batches (and over devices on pmap)."""
    loss_fn = loss_fn or self.loss
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    accum = int(self.config.train.grad_accum_steps)
    if accum <= 1:
      (_, (model_state, metrics)), grads = grad_fn(params, model_state, batch, rng)
    else:
      micro = jax.tree.map(lambda x: _split_micro(x, accum), batch)

      def body(carry, xs):
        grads_sum, model_state = carry
        i, mb = xs
        (_, (model_state, m)), g = grad_fn(params, model_state, mb, jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, grads_sum, g), model_state), m

      zeros = jax.tree.map(jnp.zeros_like, params)
      (grads, model_state), metrics = jax.lax.scan(body, (zeros, model_state), (jnp.arange(accum), micro))
      grads = jax.tree.map(lambda g: g / accum, grads)
      metrics = jax.tree.map(jnp.mean, metrics)
    if self.axis_name:
      grads, metrics = jax.lax.pmean((grads, metrics), self.axis_name)
    metrics = dict(metrics, **{"train/grad_norm": optax.tree.norm(grads)})
    return grads, model_state, metrics

  def apply_gradients(self, state: TrainState, grads, tx, *, model_state=None, key=None):
    """One optimizer update (of `params[key]` only, when `key` is given) plus the EMA."""
    params, opt_state = state.params, state.opt_state
    sub_params = params[key] if key else params
    sub_opt = opt_state[key] if key else opt_state
    updates, sub_opt = tx.update(grads, sub_opt, sub_params)
    sub_params = optax.apply_updates(sub_params, updates)
    if key:
      params = {**params, key: sub_params}
      opt_state = {**opt_state, key: sub_opt}
    else:
      params, opt_state = sub_params, sub_opt
    ema = state.ema_params
    decay = float(self.config.train.ema_decay)
    if decay > 0:
      ema = optax.incremental_update(params, ema, 1.0 - decay)
    return state.replace(params=params, opt_state=opt_state, ema_params=ema,
                         model_state=state.model_state if model_state is None else model_state)

  def eval_variables(self, state: TrainState):
    """Variables used for eval: the EMA parameters when EMA is on."""
    params = state.ema_params if float(self.config.train.ema_decay) > 0 else state.params
    return {"params": params, **state.model_state}


def model_kwargs(model_cfg, train_cfg, axis_name=None, **extra):
  """Keyword arguments for `create_model` from a `model` config section.

  Every key but `name` is passed on; the compute dtype comes from
  `train.compute_dtype`, and `bn_axis_name` is set on the pmap path.
  """
  from jaxcnn.registry import model_options
  kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
  options = model_options(model_cfg.name)
  extra["dtype"] = jnp.dtype(train_cfg.compute_dtype)
  if axis_name:
    extra["bn_axis_name"] = axis_name
  for key, value in extra.items():
    if options is None or key in options:
      kwargs.setdefault(key, value)
  return kwargs


def _split_micro(x, k):
  """[B, ...] -> [k, B/k, ...] taking every k-th example, so each micro-batch stays spread over all devices."""
  b = x.shape[0]
  return jnp.moveaxis(x.reshape((b // k, k) + x.shape[1:]), 1, 0)
