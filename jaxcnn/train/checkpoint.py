"""Orbax checkpoints that are verified, compatible and never silently wrong.

A checkpoint step directory holds three items:
  state  the whole TrainState (params, optimizer, EMA, model state, step, RNG)
  data   the input iterator position (grain iterator state, JSON)
  meta   what the run was: task, model, a fingerprint of what must match to resume
         (see `jaxcnn.train.trainer.fingerprint`), and a checksum of every saved array
Orbax writes each step into a temporary directory and renames it when complete,
so a killed run never leaves a half-written step as the latest one.

On restore, the newest step is read and verified: its meta must be readable and
its fingerprint equal to this run's (a difference is refused in one line naming
the keys: another configuration is not corruption); every array must match its
saved checksum and be finite, and the iterator state must be the one a run at
that step has. A step failing any of these is corrupt: it is set aside under a
unique name (`<step>.corrupt-<time>`, kept, never deleted) and the previous step
is tried. When no good step is left the run stops with one line: it never
starts over silently (`checkpoint.start_fresh=True` sets every step aside and
starts from scratch).
"""
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxcnn.errors import UserError
from jaxcnn.train.workdir import describe_os_error

log = logging.getLogger("jaxcnn")
FORMAT = 2   # meta with fingerprint and checksums; format 1 (no "format" key) had neither


class Checkpointer:

  def __init__(self, directory: str, *, every: int, keep: int, best_metric: str = "",
               best_mode: str = "max", use_async: bool = True):
    self.directory = os.path.abspath(directory)
    self.every = every
    self.best_metric = best_metric
    preserve = [policies.LatestN(n=keep)]
    if best_metric:
      preserve.append(policies.BestN(get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min",
                                     n=1, keep_checkpoints_without_metrics=False))
    self._options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(preserve),
        enable_async_checkpointing=use_async, create=True, cleanup_tmp_directories=True)
    self._saving_step = None
    try:
      self._manager = self._open()
    except OSError as e:
      raise UserError(f"cannot open the checkpoint folder {self.directory}: {describe_os_error(e)}") from None

  def _open(self):
    return ocp.CheckpointManager(self.directory, options=self._options, item_names=("state", "data", "meta"))

  # --- restore -----------------------------------------------------------------
  def restore(self, abstract_state, expected_meta: dict, start_fresh: bool = False):
    """(state, data_state, step) from the newest good checkpoint, or None if there is none (see the module doc)."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    if start_fresh and steps:
      log.warning("checkpoint.start_fresh: setting aside every checkpoint in %s and starting from scratch",
                  self.directory)
      self._set_aside(steps)
      return None
    bad, restored = [], None
    _filter_event_loop_noise()
    restored = self._first_good(steps, abstract_state, expected_meta, bad)
    for step, why in bad:
      log.warning("checkpoint %d in %s is corrupt: %s", step, self.directory, why)
    if bad and restored is None:
      listing = "; ".join(f"{s}: {why}" for s, why in bad)
      raise UserError(f"no usable checkpoint in {self.directory} ({listing}); nothing was changed. To start over "
                      "from scratch pass --config.checkpoint.start_fresh=True (the damaged steps are kept, "
                      "renamed), or use another --workdir")
    if bad:
      self._set_aside([s for s, _ in bad])
      log.warning("resuming from checkpoint %d", restored[2])
    return restored

  def _first_good(self, steps, abstract_state, expected_meta, bad):
    """The newest step that reads and verifies; the others tried on the way are appended to `bad`."""
    for step in steps:
      try:
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(meta, dict):
          raise ValueError("meta is not a JSON object")
      except Exception as e:  # orbax/tensorstore raise many types for damaged files
        bad.append((step, f"unreadable meta ({_short(e)})"))
        continue
      check_compatible(meta, expected_meta, self.directory, step)
      try:
        items = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:
        bad.append((step, f"unreadable arrays ({_short(e)})"))
        continue
      problem = verify(items["state"], items["data"], meta, step)
      if problem:
        bad.append((step, problem))
        continue
      return items["state"], items["data"], step
    return None

  def _set_aside(self, steps):
    """Renames steps so the manager never picks them again; unique names, so a step damaged twice never collides."""
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for step in steps:
        path = os.path.join(self.directory, str(step))
        if not os.path.isdir(path):
          continue
        target, n = f"{path}.corrupt-{stamp}", 1
        while os.path.exists(target):
          n += 1
          target = f"{path}.corrupt-{stamp}-{n}"
        try:
          os.rename(path, target)
        except OSError as e:
          raise UserError(f"cannot set aside corrupt checkpoint {path}: {describe_os_error(e)}") from None
        log.warning("set aside %s as %s", path, os.path.basename(target))
    _sync("jaxcnn_set_aside_checkpoints")
    self._manager.close()
    self._manager = self._open()

  # --- save --------------------------------------------------------------------
  def should_save(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state, data_state: dict, meta: dict, metrics=None, wait: bool = False):
    """Saves `step` (asynchronously unless `wait`); any failure, now or of the previous async save, is a UserError."""
    self.check()
    if self.best_metric and metrics is not None and self.best_metric not in metrics:
      metrics = None
    meta = {**meta, "format": FORMAT, "step": step, "checksums": checksums(state)}
    self._saving_step = step
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)),
          metrics=metrics, force=True)
      if wait:
        self._manager.wait_until_finished()
    except Exception as e:
      raise self._save_error(e) from None
    if wait:
      self.check()

  def check(self):
    """Raises a UserError at once if an asynchronous save has failed (a full disk, a lost mount, ...).

    Called after every step: while a save is in progress it costs one flag read; once the save has ended,
    its step must be on disk, else the error that ended it is reported.
    """
    if self._saving_step is None or self._manager.is_saving_in_progress():
      return
    step, self._saving_step = self._saving_step, None
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except Exception as e:
      self._saving_step = step
      raise self._save_error(e) from None
    if jax.process_index() == 0 and not os.path.isdir(os.path.join(self.directory, str(step))):
      self._saving_step = step
      raise self._save_error(None)

  def _save_error(self, e):
    why = _save_failure_cause(e)
    last = _latest_complete(self.directory, exclude=self._saving_step)
    kept = f"the last complete checkpoint is step {last}" if last is not None else "no complete checkpoint exists"
    return UserError(f"could not save checkpoint {self._saving_step} in {self.directory}: {why}; "
                     f"training stopped ({kept})")

  def latest_step(self):
    return self._manager.latest_step()

  def wait(self):
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise self._save_error(e) from None
    self.check()

  def close(self, raise_errors: bool = True):
    try:
      self.wait()
    except UserError:
      if raise_errors:
        raise
    finally:
      try:
        self._manager.close()
      except Exception:  # closing after a failed save may fail again; the first error was reported
        if raise_errors:
          raise


# --- compatibility -------------------------------------------------------------
def check_compatible(meta: dict, expected: dict, directory: str, step: int):
  """Refuses (UserError) a checkpoint made by another configuration, naming the keys that differ."""
  want = expected.get("fingerprint", {})
  have = meta.get("fingerprint")
  if have is None:  # format 1: only the task and the model name were recorded
    have = {k: meta.get(k) for k in ("task", "model")}
    want = {k: expected.get(k) for k in ("task", "model")}
  keys = list(want) + [k for k in have if k not in want]  # the fingerprint's order: task and model first
  diffs = [k for k in keys if have.get(k) != want.get(k)]
  if not diffs:
    return
  shown = ", ".join(f"{k}: checkpoint {_brief(have.get(k))} vs now {_brief(want.get(k))}" for k in diffs[:4])
  more = f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""
  raise UserError(f"{directory} holds checkpoint {step} of another configuration ({shown}{more}); resume with "
                  "the same settings, or use another --workdir")


def _brief(value, limit: int = 60) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


# --- integrity -----------------------------------------------------------------
def _as_words(x):
  """A leaf's bits as uint32 words (bool and 8/16-bit dtypes widened, 64-bit ones split)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  x = jnp.ravel(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = x.dtype.itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  if size == 1:
    return jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
  return jnp.ravel(jax.lax.bitcast_convert_type(x, jnp.uint32))


def _leaf_digest(x):
  """Two 32-bit position-weighted sums of the words: any single flipped bit changes the first
  (its weight is odd), and the second mixes the bits so that compensating changes are unlikely.
  Integer sums wrap modulo 2^32 in any order, so the result is independent of sharding."""
  w = _as_words(x)
  i = jnp.arange(w.size, dtype=jnp.uint32)
  h1 = jnp.sum(w * (2 * i + 1), dtype=jnp.uint32)
  mixed = (w ^ (i * jnp.uint32(0x9E3779B9))) * jnp.uint32(0x85EBCA6B)
  h2 = jnp.sum(mixed ^ (mixed >> 13), dtype=jnp.uint32)
  finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
  return jnp.stack([h1, h2]), finite


@jax.jit
def _digests(leaves):
  return [_leaf_digest(x) for x in leaves]


def _paths_and_digests(state):
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  digests = jax.device_get(_digests([x for _, x in flat]))
  return {jax.tree_util.keystr(path): (f"{int(d[0]):08x}{int(d[1]):08x}", bool(ok))
          for (path, _), (d, ok) in zip(flat, digests)}


def checksums(state) -> dict:
  """{array path: 16 hex digits} of a pytree of arrays, computed where the arrays live (jitted, no gather)."""
  return {k: v for k, (v, _) in _paths_and_digests(state).items()}


def verify(state, data_state, meta: dict, step: int):
  """None if the restored step is sound, else what is wrong with it (one phrase)."""
  saved = meta.get("checksums")
  current = _paths_and_digests(state)
  if saved is not None:
    if not isinstance(saved, dict) or set(saved) != set(current):
      return "checksum list does not match the arrays"
    changed = [k for k, (digest, _) in current.items() if saved[k] != digest]
    if changed:
      return f"checksum mismatch in {len(changed)} array(s), e.g. {changed[0]}"
  elif meta.get("format", 1) >= FORMAT:
    return "checksums missing"
  non_finite = [k for k, (_, ok) in current.items() if not ok]
  if non_finite:
    return f"non-finite values in {len(non_finite)} array(s), e.g. {non_finite[0]}"
  return check_iterator_state(data_state, step)


def check_iterator_state(data_state, step: int):
  """The input position must be what a run at `step` has: one batch per step (None if so)."""
  if not isinstance(data_state, dict):
    return f"iterator state is {type(data_state).__name__}, not a JSON object"
  if "next_index" in data_state:
    position = data_state["next_index"]
    if isinstance(position, bool) or not isinstance(position, int):
      return f"iterator state next_index={position!r} is not an integer"
    if position != step:
      return f"iterator state next_index={position} does not match step {step}"
  return None


# --- helpers -------------------------------------------------------------------
def _root_os_error(e: BaseException):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError):
      return e
    for attr in ("exceptions",):  # ExceptionGroup
      for sub in getattr(e, attr, ()) or ():
        found = _root_os_error(sub)
        if found is not None:
          return found
    e = e.__cause__ or e.__context__
  return None


_STORAGE_ERRORS = {"RESOURCE_EXHAUSTED": "no space left on the device", "PERMISSION_DENIED": "permission denied",
                   "Read-only file system": "read-only file system", "No space left": "no space left on the device"}


def _save_failure_cause(e):
  if e is None:
    return "the step did not appear on disk"
  cause = _root_os_error(e)
  if cause is not None:
    return describe_os_error(cause)
  text = str(e)
  for marker, meaning in _STORAGE_ERRORS.items():
    if marker in text:
      return meaning
  return _short(e)


def _latest_complete(directory: str, exclude=None):
  try:
    steps = [int(n) for n in os.listdir(directory) if n.isdigit() and int(n) != exclude]
  except OSError:
    return None
  return max(steps) if steps else None


def _short(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:100] if text else ''}"


def _filter_event_loop_noise():
  """Drops the 'Event loop is closed' tracebacks printed when a read fails (one per array, from
  tensorstore callbacks into Orbax's already closed event loop, reported through sys.excepthook,
  possibly after the failed restore returned); they say nothing the one-line report of the failed
  read does not. Every other exception prints as before."""
  previous = sys.excepthook
  if getattr(previous, "_jaxcnn_filter", False):
    return

  def hook(kind, value, tb):
    if isinstance(value, RuntimeError) and "Event loop is closed" in str(value):
      return
    previous(kind, value, tb)

  hook._jaxcnn_filter = True
  sys.excepthook = hook


def _sync(name):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
