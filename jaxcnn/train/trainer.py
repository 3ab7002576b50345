"""The one trainer: every experiment, whatever its task, runs through `train_and_evaluate`.

    devices -> mesh -> task (models, loss, eval) -> data iterators -> state (fresh or resumed)
    -> jitted, sharded, donated train step in a loop -> logs, evals, checkpoints -> summary

The default path is `jax.jit` with explicit NamedShardings over a 1-D 'data'
mesh; `train.parallel='pmap'` selects the legacy `jax.pmap` path, which gives the
same numbers (gradients and BatchNorm statistics averaged over the mapped axis).
"""
import hashlib
import json
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import data as data_lib
from jaxcnn.errors import UserError
from jaxcnn.tasks import TrainState, get_task
from jaxcnn.train import early_stopping, finetune, optim, sharding, writers
from jaxcnn.train import workdir as workdir_lib
from jaxcnn.train.checkpoint import Checkpointer
from jaxcnn.train.preemption import StopOnSignal
from jaxcnn.utils import param_count

log = logging.getLogger("jaxcnn")
PMAP_AXIS = "batch"


class Diverged(UserError):
  """The loss or gradient became NaN/Inf."""


def train_and_evaluate(config, workdir: str, devices=None) -> dict:
  """Trains `config` in `workdir` (resuming from its checkpoints), returns the summary.

  `devices` restricts a single-process run to some local devices (default: all).
  """
  # XLA:CPU compiles the partitionable threefry 3x slower (a ResNet-20 init: 50 s vs 16 s on 2 cores);
  # on accelerators keep it, so FSDP-sharded parameters are generated shard by shard.
  with jax.threefry_partitionable(jax.default_backend() != "cpu"):
    return _train_and_evaluate(config, workdir, devices)


def _train_and_evaluate(config, workdir, devices):
  t_start = time.time()
  validate(config, num_devices=len(devices) if devices else None)
  workdir = workdir_lib.prepare(workdir)
  with workdir_lib.WorkdirLock(workdir):
    return _run(config, workdir, devices, t_start)


def _run(config, workdir, devices, t_start):
  is_main = jax.process_index() == 0
  use_pmap = config.train.parallel == "pmap"
  mesh = sharding.make_mesh(devices)
  info = data_lib.dataset_info(config.data.name)
  task = get_task(config, info, axis_name=PMAP_AXIS if use_pmap else None)
  steps = int(config.train.steps)
  schedule = optim.make_schedule(config.optim, steps)
  tx = task.optimizer(lambda optim_cfg: optim.make_optimizer(optim_cfg, schedule))
  finetune_cfg = config.get("finetune")
  if finetune_cfg and finetune_cfg.freeze:
    if isinstance(tx, dict):
      raise UserError("finetune.freeze works with single-optimizer tasks only")
    tx = finetune.freeze(tx, finetune_cfg.freeze)

  # Data: every process reads only its part of each global batch.
  batch_size, nproc, pid = int(config.train.batch_size), jax.process_count(), jax.process_index()
  train_iter = data_lib.train_iterator(config.data, global_batch_size=batch_size, seed=int(config.train.seed),
                                       process_index=pid, process_count=nproc)

  def eval_batches():
    return data_lib.eval_iterator(config.data, global_batch_size=int(config.eval.batch_size),
                                  process_index=pid, process_count=nproc)

  # State: created directly with its final sharding; replaced by a checkpoint if there is one.
  init_state = _state_initializer(task, tx, config)
  base_key = jax.random.PRNGKey(int(config.train.seed))
  abstract = jax.eval_shape(init_state, base_key)
  shardings = sharding.state_shardings(abstract, mesh, fsdp=bool(config.train.fsdp))
  meta = {**task.describe(), "fingerprint": fingerprint(config, task, abstract)}
  stopper = early_stopping.EarlyStopping.from_config(config, task)  # None: off
  if stopper:  # refused before training when the task's evals cannot log the metric
    stopper.check_names(*_eval_metric_names(task, abstract, config))
  best_metric, best_mode = (stopper.CHECKPOINT_KEY, "max") if stopper else (
      task.best_metric if config.checkpoint.keep_best else ("", "max"))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), every=int(config.checkpoint.every),
                      keep=int(config.checkpoint.keep), best_metric=best_metric,
                      best_mode=best_mode, use_async=bool(config.checkpoint.use_async))
  abstract_sharded = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  # Resuming is refused before anything is written when the checkpoint belongs to another configuration.
  try:
    restored = ckpt.restore(abstract_sharded, meta, start_fresh=bool(config.checkpoint.get("start_fresh", False)))
  except BaseException:
    ckpt.close(raise_errors=False)
    raise
  if is_main:
    writers.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  if restored:
    state, data_state, start = restored
    train_iter.set_state(data_state)
    log.info("resumed from %s at step %d", ckpt.directory, start)
    if stopper:
      stopper.replay(os.path.join(workdir, "metrics.jsonl"), start)
  else:
    state, start = jax.jit(init_state, out_shardings=shardings)(base_key), 0
    if finetune_cfg and finetune_cfg.weights:
      state = finetune.apply_pretrained(state, finetune_cfg, config.model.name)
  n_params = task.parameter_count(state.params)
  log.info("model %s: %s parameters; %d device(s) in %d process(es); global batch %d; %s",
           config.model.name, f"{n_params:,}", mesh.devices.size, nproc, batch_size,
           "pmap" if use_pmap else ("jit + FSDP" if config.train.fsdp else "jit, data parallel"))

  runner = (_PmapRunner if use_pmap else _JitRunner)(task, tx, mesh, shardings)
  state = runner.place(state)
  writer = writers.MetricWriter(workdir, steps, enabled=is_main, start_step=start)
  last_eval, last_eval_step, pending = {}, -1, []
  watch, images_since = writers.Stopwatch(), 0
  failed = True
  last_step = start
  try:
    with StopOnSignal() as stop:
      for step in range(start + 1, steps + 1 if not (stopper and stopper.stopped) else start + 1):
        state, metrics = runner.train_step(state, next(train_iter))
        pending.append(metrics)
        images_since += batch_size
        if step == start + 1:  # throughput starts after the first step, which includes compilation
          jax.block_until_ready(metrics)
          watch.lap()
          images_since = 0
        log_now = step % int(config.train.log_every) == 0 or step == steps
        eval_now = (int(config.eval.every) > 0 and step % int(config.eval.every) == 0) or step == steps
        save_now = ckpt.should_save(step) or step == steps or (stopper is not None and eval_now)
        if log_now or save_now:
          summary = _mean_metrics(sharding.to_host(pending))
          pending = []
          _check_finite(summary, step, ckpt)
          if log_now:
            summary["train/lr"] = float(schedule(step - 1))
            summary["throughput/images_per_s"] = images_since / max(watch.lap(), 1e-9)
            images_since = 0
            writer.write(step, summary)
        if eval_now:
          last_eval, last_eval_step = runner.evaluate(state, eval_batches()), step
          last_eval.update(task.on_eval(runner.variables_for_eval(state), step, workdir))
          writer.write(step, last_eval)
        stop_early = stopper is not None and eval_now and stopper.update(step, last_eval)
        if save_now:
          evaluated = last_eval if last_eval_step == step else None
          ckpt.save(step, runner.checkpointable(state), train_iter.get_state(), meta,
                    metrics=stopper.checkpoint_metrics(step, evaluated) if stopper and evaluated else evaluated)
        else:
          ckpt.check()  # a failed asynchronous save stops the run now, not one interval later
        last_step = step
        if stop_early:
          log.info("early stopping at step %d: no %s improvement in %d eval(s); best %.6g at step %d",
                   step, stopper.metric, stopper.wait, stopper.best, stopper.best_step)
          break
        if step < steps and stop.stop_now(step):
          if save_now:
            ckpt.wait()
          else:
            ckpt.save(step, runner.checkpointable(state), train_iter.get_state(), meta, wait=True)
          raise stop.preempted(step, ckpt.directory)
        if eval_now or save_now:
          watch.lap()  # throughput counts training time only
      ckpt.wait()  # the final checkpoint is complete before the (possibly long) final eval and hooks
      if last_eval_step != last_step:  # resumed after the last step: evaluate what was restored
        last_eval = runner.evaluate(state, eval_batches())
        last_eval.update(task.on_eval(runner.variables_for_eval(state), last_step, workdir))
      extra = task.finish(runner.variables_for_eval(state), workdir, lambda: runner.evaluate(state, eval_batches()))
    failed = False
  finally:
    ckpt.close(raise_errors=not failed)
    writer.close()

  if stopper:
    extra["early_stopping"] = stopper.report(ckpt.directory)
  summary = {"step": last_step, **last_eval, **extra, "headline_metric": task.best_metric[0], "param_count": n_params,
             "model": config.model.name, "data": config.data.name,
             "devices": int(mesh.devices.size), "processes": nproc,
             "wall_time_s": round(time.time() - t_start, 2)}
  if is_main:
    writers.write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2, sort_keys=True))
    writers.plot_curves(workdir)
  return summary


# What may change when a workdir is resumed: everything not in the fingerprint below, e.g. train.steps,
# eval.*, checkpoint.every/keep, train.log_every, the device and process count, train.parallel, train.fsdp,
# optim.* (the schedule is rebuilt from the new values; an optimizer with another state layout is refused by
# the state structure), data.num_threads/prefetch and the augmentation.
FINGERPRINT_KEYS = ("train.batch_size", "train.seed", "data.name", "data.train_split", "data.image_size",
                    "data.channels", "data.repeated_aug")
# Options added after workdirs existed: recorded only away from their default, so older workdirs still resume.
FINGERPRINT_OPTIONAL = {"data.frames": 0, "data.max_captions": 0, "data.context_length": 77,
                        "data.sampler": "shuffle"}


def fingerprint(config, task, abstract_state) -> dict:
  """What must match for a checkpoint to be resumed by `config`: flat {key: JSON value} (see FINGERPRINT_KEYS)."""
  fp = {"task": type(task).__name__, "model.name": config.model.name}
  for key, value in sorted(config.model.to_dict().items()):
    fp[f"model.{key}"] = value
  for key in FINGERPRINT_KEYS:
    section, leaf = key.split(".")
    fp[key] = config[section].get(leaf)
  for key, default in FINGERPRINT_OPTIONAL.items():
    section, leaf = key.split(".")
    if config[section].get(leaf, default) != default:
      fp[key] = config[section].get(leaf)
  leaves = jax.tree_util.tree_flatten_with_path(abstract_state.params)[0]
  fp["parameter shapes"] = _digest([(jax.tree_util.keystr(p), x.shape, str(x.dtype)) for p, x in leaves])
  whole = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  fp["state structure"] = _digest([(jax.tree_util.keystr(p), x.shape, str(x.dtype)) for p, x in whole])
  return json.loads(json.dumps(fp, default=str))  # as it reads back from JSON (tuples become lists)


def _digest(items) -> str:
  return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


def _state_initializer(task, tx, config):
  spec = data_lib.element_spec(config.data, int(config.train.batch_size), jax.process_index(), jax.process_count())
  dummy = task.init_batch(spec)
  use_ema = float(config.train.ema_decay) > 0

  def init(key):
    variables = dict(task.init(jax.random.fold_in(key, 0), dummy))
    params = variables.pop("params")
    opt_state = ({k: t.init(params[k]) for k, t in tx.items()} if isinstance(tx, dict) else tx.init(params))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                      opt_state=opt_state, ema_params=params if use_ema else {},
                      rng=jax.random.fold_in(key, 1))
  return init


def _eval_metric_names(task, abstract_state, config):
  """(names of the eval metrics the task logs, whether that list is complete), without running anything: the
  eval step's outputs by shape (jax.eval_shape), through the task's `eval_metrics` on zeros. Host-side
  evaluators and on_eval hooks add names only a real eval shows: then the list is not complete."""
  from jaxcnn.tasks.base import Task
  spec = data_lib.element_spec(config.data, int(config.eval.batch_size), jax.process_index(), jax.process_count())
  batch = {**spec, "mask": jax.ShapeDtypeStruct(next(iter(spec.values())).shape[:1], jnp.float32)}
  context_fn = getattr(task, "eval_context", lambda variables: None)

  def eval_step(state, batch):
    variables = task.eval_variables(state)
    context = context_fn(variables)
    return task.eval_step(variables, batch) if context is None else task.eval_step(variables, batch, context)
  out = jax.eval_shape(eval_step, abstract_state, batch)
  sums = {k: (0.0 if not v.shape else np.zeros(v.shape, v.dtype)) for k, v in out.items()
          if not k.startswith(PER_EXAMPLE)}
  names = set(task.eval_metrics(sums)) if sums else set()
  complete = all(getattr(type(task), hook, None) is getattr(Task, hook)
                 for hook in ("host_eval", "on_eval", "finish"))
  return names, complete


def _advance(task, tx):
  def step_fn(state, batch):
    new_state, metrics = task.train_step(state, batch, tx)
    return new_state.replace(step=state.step + 1), metrics
  return step_fn


class _JitRunner:
  """jax.jit with explicit in/out shardings; the state is donated."""

  def __init__(self, task, tx, mesh, shardings):
    self.task, self.mesh = task, mesh
    self.batch_sharding = sharding.batch_sharding(mesh)
    repl = sharding.replicated(mesh)
    self._step = jax.jit(_advance(task, tx), in_shardings=(shardings, self.batch_sharding),
                         out_shardings=(shardings, repl), donate_argnums=0,
                         compiler_options=task.compiler_options() or None)
    self._context = jax.jit(lambda s: _eval_context(task, s), in_shardings=(shardings,), out_shardings=repl)
    self._eval = jax.jit(lambda s, c, b: _eval_step(task, s, c, b),
                         in_shardings=(shardings, repl, self.batch_sharding), out_shardings=repl)

  def place(self, state):
    return state

  def train_step(self, state, local_batch):
    return self._step(state, sharding.global_batch(local_batch, self.batch_sharding))

  def evaluate(self, state, batches):
    context = self._context(state)   # once per evaluation, not per batch
    return evaluate(self.task, batches, lambda b: sharding.to_host(
        self._eval(state, context, sharding.global_batch(b, self.batch_sharding))))

  def checkpointable(self, state):
    return state

  def variables_for_eval(self, state):
    return self.task.eval_variables(state)


class _PmapRunner:
  """Legacy jax.pmap: the state is replicated per local device; the batch gets a leading device axis."""

  def __init__(self, task, tx, mesh, shardings):
    self.task, self.mesh, self.shardings = task, mesh, shardings
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    self.n = len(local)
    self._step = jax.pmap(_advance(task, tx), axis_name=PMAP_AXIS, donate_argnums=0, devices=local)
    def eval_fn(state, context, batch):
      out = _eval_step(task, state, context, batch)
      outputs = {k: v for k, v in out.items() if k.startswith(PER_EXAMPLE)}
      sums = jax.lax.psum({k: v for k, v in out.items() if not k.startswith(PER_EXAMPLE)}, PMAP_AXIS)
      return sums, outputs
    self._eval = jax.pmap(eval_fn, axis_name=PMAP_AXIS, devices=local)
    self._context = jax.pmap(lambda s: _eval_context(task, s), axis_name=PMAP_AXIS, devices=local)

  def _split(self, tree):
    return jax.tree.map(lambda x: x.reshape((self.n, x.shape[0] // self.n) + x.shape[1:]), tree)

  def place(self, state):
    host = sharding.to_host(state)
    return jax.tree.map(lambda x: np.broadcast_to(x, (self.n,) + np.shape(x)), host)

  def train_step(self, state, local_batch):
    state, metrics = self._step(state, self._split(local_batch))
    return state, jax.tree.map(lambda x: x[0], metrics)

  def evaluate(self, state, batches):
    context = self._context(state)   # once per evaluation, not per batch

    def run(local_batch):
      sums, outputs = self._eval(state, context, self._split(local_batch))
      sums = _sum_over_processes(jax.device_get(jax.tree.map(lambda x: x[0], sums)))
      outputs = jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), jax.device_get(outputs))
      return {**sums, **_gather_over_processes(outputs)}
    return evaluate(self.task, batches, run)

  def checkpointable(self, state):
    """Device 0's replica as global replicated arrays, the same layout the jit path saves."""
    host = jax.device_get(jax.tree.map(lambda x: x[0], state))
    return jax.tree.map(lambda x, s: jax.device_put(x, s), host, self.shardings)

  def variables_for_eval(self, state):
    return self.task.eval_variables(jax.device_get(jax.tree.map(lambda x: x[0], state)))


PER_EXAMPLE = "per_example/"


def _eval_context(task, state):
  """The task's per-evaluation context (`Task.eval_context`; None for tasks without one or duck-typed ones)."""
  context_fn = getattr(task, "eval_context", None)
  return context_fn(task.eval_variables(state)) if context_fn else None


def _eval_step(task, state, context, batch):
  variables = task.eval_variables(state)
  return task.eval_step(variables, batch) if context is None else task.eval_step(variables, batch, context)


def evaluate(task, batches, run_batch) -> dict:
  """The eval loop of both runners: one pass over `batches`, then the task's metrics.

  `run_batch(local_batch)` returns the task's eval_step outputs on the host, on every process, for the
  global batch. Outputs are summed over the split as arrays (scalars, confusion matrices, ...), except
  `per_example/...` entries: per-example arrays of the global batch, which go through the task's
  `host_batch` hook once per batch (default: kept as they are; detection turns instance masks into COCO
  RLEs there, so the split's masks are never held as pixels), are concatenated over the split, padding
  dropped (by `per_example/mask`, read before the hook), and handed to the task's host-side evaluator
  (`Task.host_eval`, e.g. COCO mAP or retrieval recall).
  """
  sums, outputs, valid = {}, {}, []
  host_batch = getattr(task, "host_batch", None) or (lambda per_example: per_example)  # duck-typed tasks too
  for local_batch in batches:
    out = run_batch(local_batch)
    per_example = {}
    for k, v in out.items():
      if k.startswith(PER_EXAMPLE):
        per_example[k[len(PER_EXAMPLE):]] = np.asarray(v)
      else:
        v = np.asarray(v)
        v = v.astype(np.float64) if v.dtype.kind == "f" else v.astype(np.int64)
        sums[k] = sums[k] + v if k in sums else v
    if per_example:
      valid.append(np.asarray(per_example.get("mask", np.ones(len(next(iter(per_example.values())))))))
      for k, v in host_batch(per_example).items():
        outputs.setdefault(k, []).append(np.asarray(v))
  metrics = task.eval_metrics({k: (float(v) if v.ndim == 0 else v) for k, v in sums.items()}) if sums else {}
  if outputs:
    keep = np.concatenate(valid) > 0
    metrics.update(task.host_eval({k: np.concatenate(v)[keep] for k, v in outputs.items()}))
  return metrics


def _sum_over_processes(tree):
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils
  return jax.tree.map(lambda x: np.sum(multihost_utils.process_allgather(x), axis=0), tree)


def _gather_over_processes(tree):
  """Per-example arrays of every process, in process order (= global batch order)."""
  if jax.process_count() == 1 or not tree:
    return tree
  from jax.experimental import multihost_utils
  return jax.tree.map(lambda x: np.concatenate(list(multihost_utils.process_allgather(x)), axis=0), tree)


def _mean_metrics(history):
  keys = history[0].keys() if history else []
  return {k: float(np.mean([np.asarray(m[k], np.float64) for m in history])) for k in keys}


def _check_finite(metrics, step, ckpt):
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if bad:
    ckpt.wait()
    last = ckpt.latest_step()
    kept = f"the last good checkpoint (step {last}) is kept in {ckpt.directory}" if last is not None else \
        "no checkpoint had been written yet"
    raise Diverged(f"training diverged at step {step}: {', '.join(f'{k}={v}' for k, v in bad.items())}; "
                   f"{kept}; try a lower optim.lr or optim.grad_clip_norm")


PARALLEL = ("jit", "pmap")
DTYPES = ("float32", "bfloat16", "float16")


def validate(config, num_devices=None):
  """Value checks the config's types cannot express; each failure is one readable line."""
  t = config.train

  def positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise UserError(f"{name} must be a positive integer, got {value!r}")

  positive("train.steps", t.steps)
  positive("train.batch_size", t.batch_size)
  positive("train.log_every", t.log_every)
  positive("train.grad_accum_steps", t.grad_accum_steps)
  positive("eval.batch_size", config.eval.batch_size)
  for name, value in (("eval.every", config.eval.every), ("checkpoint.every", config.checkpoint.every)):
    if not isinstance(value, int) or value < 0:
      raise UserError(f"{name} must be an integer >= 0 (0: only at the end), got {value!r}")
  positive("checkpoint.keep", config.checkpoint.keep)
  for section in ("optim", "train"):
    for key, value in config[section].items():
      if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{section}.{key} must be a finite number, got {value}")
  if t.parallel not in PARALLEL:
    raise UserError(f"train.parallel must be one of {', '.join(PARALLEL)}, got {t.parallel!r}")
  if t.compute_dtype not in DTYPES:
    raise UserError(f"train.compute_dtype must be one of {', '.join(DTYPES)}, got {t.compute_dtype!r}")
  if not 0.0 <= float(t.ema_decay) < 1.0:
    raise UserError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
  if not 0.0 <= float(t.label_smoothing) < 1.0:
    raise UserError(f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}")
  n = num_devices or jax.device_count()
  per_step = t.batch_size // t.grad_accum_steps
  if t.batch_size % t.grad_accum_steps or per_step % n:
    raise UserError(f"train.batch_size ({t.batch_size}) must split into train.grad_accum_steps ({t.grad_accum_steps}) "
                    f"micro-batches that each divide over {n} device(s)")
  if config.eval.batch_size % n:
    raise UserError(f"eval.batch_size ({config.eval.batch_size}) must be divisible by the {n} device(s)")
  if t.parallel == "pmap" and t.fsdp:
    raise UserError("train.fsdp needs train.parallel='jit' (pmap replicates parameters)")
  if config.data.name not in data_lib.dataset_names():
    from jaxcnn.errors import unknown
    raise unknown("dataset (data.name)", config.data.name, data_lib.dataset_names())
