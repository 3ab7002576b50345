"""Save-and-exit on SIGTERM and SIGINT (what SLURM, preemptible VMs and Ctrl-C send).

The handler only records the signal; the loop asks `stop_now(step)` after
every step, saves a checkpoint of that step synchronously on every process
and raises `Preempted`, so the run exits with the conventional status 128 +
signal number (143 for SIGTERM, 130 for SIGINT). Running the same command
again resumes from that step exactly as if nothing had happened.

With several processes they must stop at the same step. JAX's preemption
service (started by `jax.distributed.initialize`) catches SIGTERM itself and
agrees on a step with the other processes: `stop_now` then asks
`multihost_utils.reached_preemption_sync_point(step)`, a local flag check
until a notice arrives. SIGINT is turned into SIGTERM for it.
"""
import logging
import os
import signal

import jax

from jaxcnn.errors import UserError

log = logging.getLogger("jaxcnn")


class Preempted(UserError):
  """The run was stopped by a signal after saving its state; `exit_status` is 128 + the signal number."""

  def __init__(self, message, signum):
    super().__init__(message)
    self.exit_status = 128 + int(signum)


class StopOnSignal:
  """Context manager that turns SIGTERM/SIGINT into a request the training loop honours between steps."""

  def __init__(self):
    self.signum = None
    self._previous = {}
    self._multi = jax.process_count() > 1 and _preemption_service_running()

  def _record(self, signum, frame):
    if self.signum is None:
      log.warning("received %s: finishing this step, saving a checkpoint, then exiting (send SIGKILL to stop "
                  "without saving)", signal.Signals(signum).name)
    self.signum = signum

  def _forward_to_service(self, signum, frame):
    self._record(signum, frame)
    os.kill(os.getpid(), signal.SIGTERM)  # the preemption service's own handler agrees on the step

  def __enter__(self):
    if self._multi:
      # SIGTERM stays with JAX's preemption service; remember that it came, for the exit status.
      self.signum = None
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward_to_service)
    else:
      for s in (signal.SIGTERM, signal.SIGINT):
        self._previous[s] = signal.signal(s, self._record)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False

  def stop_now(self, step: int) -> bool:
    if self._multi:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.signum = self.signum or signal.SIGTERM
        return True
      return False
    return self.signum is not None

  def preempted(self, step: int, directory: str) -> Preempted:
    name = signal.Signals(self.signum).name
    return Preempted(f"stopped by {name} after step {step}; checkpoint {step} saved in {directory}: "
                     "run the same command to continue", self.signum)


def _preemption_service_running() -> bool:
  try:
    from jax._src import distributed
  except ImportError:
    return False
  return getattr(distributed.global_state, "preemption_sync_manager", None) is not None
