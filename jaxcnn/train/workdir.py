"""The workdir: checked before anything is written, and held by one run at a time.

`prepare(workdir)` creates the folder and proves it writable (a file that is a
folder's parent, `/dev/null`, a read-only or full file system, a missing
permission: each one line naming the path and the cause).

`WorkdirLock` is one writer per workdir. Process 0 holds an exclusive POSIX
lock (`fcntl.lockf`, honoured over NFS by lockd) on `<workdir>/.lock` for the
whole run; the kernel drops it when the process ends in any way (SIGKILL
included), so a stale lock cannot outlive its process and needs no timeout.
The file names its holder (host, pid, start time) so a refused run can say who
holds it. Under several processes, process 0 takes the lock and tells the
others whether it got it, so all of them stop together.
"""
import errno
import fcntl
import json
import os
import socket
import time

import jax

from jaxcnn.errors import UserError

LOCK_NAME = ".lock"


def describe_os_error(e: OSError) -> str:
  """'No space left on device' and friends, without the Python exception decoration."""
  return e.strerror or (errno.errorcode.get(e.errno, "") if e.errno else "") or str(e)


def prepare(workdir: str) -> str:
  """Creates `workdir` if needed and checks a file can be written and removed there; returns its absolute path."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"workdir {path} exists and is not a directory: choose another --workdir")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create workdir {path}: {describe_os_error(e)}") from None
  probe = os.path.join(path, f".write-test-{socket.gethostname()}-{os.getpid()}")
  try:
    with open(probe, "w") as f:
      f.write("jaxcnn\n")
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
  except OSError as e:
    raise UserError(f"cannot write in workdir {path}: {describe_os_error(e)}") from None
  return path


class WorkdirLock:
  """Exclusive use of a workdir for the lifetime of the run (see the module doc)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self._file = None

  def acquire(self):
    error = self._try_acquire() if jax.process_index() == 0 else None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      import numpy as np
      held_elsewhere = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
      if int(held_elsewhere) and error is None:
        error = f"workdir {os.path.dirname(self.path)} is in use by another run (process 0 could not lock it)"
    if error:
      raise UserError(error)
    return self

  def _try_acquire(self):
    try:
      f = open(self.path, "a+")
    except OSError as e:
      return f"cannot open the workdir lock {self.path}: {describe_os_error(e)}"
    try:
      fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EACCES, errno.EAGAIN):
        f.close()
        return f"cannot lock the workdir {self.path}: {describe_os_error(e)}"
      f.seek(0)
      holder = _holder_text(f.read())
      f.close()
      return (f"workdir {os.path.dirname(self.path)} is in use by another run ({holder}); wait for it to end, "
              "or use another --workdir")
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}) + "\n")
    f.flush()
    self._file = f
    return None

  def release(self):
    if self._file is not None:
      try:
        fcntl.lockf(self._file, fcntl.LOCK_UN)
      finally:
        self._file.close()
        self._file = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
    return False


def _holder_text(content: str) -> str:
  try:
    info = json.loads(content)
    return f"pid {info['pid']} on {info['host']}, started {info['started']}"
  except (ValueError, KeyError, TypeError):
    return "holder unknown"
