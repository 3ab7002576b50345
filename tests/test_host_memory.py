"""glibc keeps XLA:CPU's scratch block mapped between executions, so a repeated step does not page-fault."""
import os
import subprocess
import sys
import textwrap

import pytest

from jaxcnn import host_memory

# Runs a jitted function whose temporaries (67 MB) exceed glibc's mmap threshold; prints the fewest page
# faults of one run among 16 after four warm-up runs. With glibc's defaults every run maps its scratch afresh
# (~16k faults each); with the settings the heap keeps it, and while XLA frees a step's block asynchronously
# the heap can still grow for some runs (seen under load), but runs without faults are the rule.
_PROBE = textwrap.dedent("""
    import resource
    import jaxcnn, jax, jax.numpy as jnp
    def g(x):
      a = jnp.sin(x); b = jnp.cos(a[::-1]); c = jnp.tanh(b.T)
      return (a * c).sum() + jnp.cumsum(b, 0).sum()
    f, x = jax.jit(g), jnp.ones((2048, 2048))
    faults = []
    for i in range(20):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(min(faults[4:]))
""")


def _faults(setting):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{host_memory.ENV_VAR: setting})
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
  return float(out.stdout.split()[-1])


@pytest.mark.skipif(host_memory._glibc() is None, reason="glibc malloc settings only")
def test_repeated_execution_reuses_scratch_pages():
  assert _faults("1") < 1000           # pages stay mapped: no first touches
  assert _faults("0") > 10000          # glibc's default: fresh mmaps of the 67 MB (16k pages), every run


def test_accelerator_platforms_are_left_alone(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert not host_memory.cpu_only_process()
  assert not host_memory.configure()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host_memory.cpu_only_process()


def test_opt_out(monkeypatch):
  monkeypatch.setenv(host_memory.ENV_VAR, "0")
  assert not host_memory.configure()
