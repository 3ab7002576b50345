"""Orbax checkpoints: periodic async saves, keep-last-N plus keep-best, resume that survives a bad latest.

A checkpoint step directory holds three items:
  state  the whole TrainState (params, optimizer, EMA, model state, step, RNG)
  data   the input iterator position (grain iterator state, JSON)
  meta   what the run was (model, task), so a different model is refused
Orbax writes each step into a temporary directory and renames it when complete,
so a killed run never leaves a half-written step as the latest one.
"""
import logging
import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxcnn.errors import UserError

log = logging.getLogger("jaxcnn")


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
    self._manager = self._open()

  def _open(self):
    return ocp.CheckpointManager(self.directory, options=self._options, item_names=("state", "data", "meta"))

  def restore(self, abstract_state, expected_meta: dict):
    """(state, data_state, step) from the newest readable checkpoint, or None if there is none.

    A checkpoint that cannot be read is reported and set aside (renamed to
    `<step>.corrupt`), and the one before it is tried. A readable checkpoint of
    a different model is a UserError: the workdir belongs to another run.
    """
    bad = []
    restored = None
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      except Exception as e:  # orbax/tensorstore raise many types for damaged files
        bad.append(step)
        log.warning("checkpoint %d in %s is corrupt or unreadable (%s); trying the previous one",
                    step, self.directory, _short(e))
        continue
      _check_meta(meta, expected_meta, self.directory, step)
      try:
        items = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:
        bad.append(step)
        log.warning("checkpoint %d in %s is corrupt or unreadable (%s); trying the previous one",
                    step, self.directory, _short(e))
        continue
      restored = (items["state"], items["data"], step)
      break
    if bad:
      self._set_aside(bad)
    if bad and restored is None:
      log.warning("no readable checkpoint left in %s; starting from scratch", self.directory)
    return restored

  def _set_aside(self, steps):
    """Renames unreadable steps so the manager never picks them again (they are kept, not deleted)."""
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      for step in steps:
        path = os.path.join(self.directory, str(step))
        if os.path.isdir(path):
          os.rename(path, f"{path}.corrupt")
    _sync("jaxcnn_set_aside_checkpoints")
    self._manager.close()
    self._manager = self._open()

  def should_save(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state, data_state: dict, meta: dict, metrics=None):
    if self.best_metric and metrics is not None and self.best_metric not in metrics:
      metrics = None
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)),
        metrics=metrics, force=True)

  def latest_step(self):
    return self._manager.latest_step()

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def _check_meta(meta, expected, directory, step):
  for key, want in expected.items():
    have = meta.get(key)
    if have != want:
      raise UserError(f"{directory} holds a checkpoint (step {step}) of {key} '{have}', but this run's {key} is "
                      f"'{want}': use another --workdir, or remove that one")


def _short(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def _sync(name):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
