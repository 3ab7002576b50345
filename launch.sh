#!/usr/bin/env bash
# Starts `python -m experiments.run` on one host or a cluster, with the same experiment arguments.
#
#   bash launch.sh --procs=N --exp=NAME [--workdir=DIR] [--config.KEY=VALUE ...]
#       N processes on this host joined by jax.distributed over loopback (for testing multi-host code).
#   srun ... bash launch.sh --exp=NAME ...   (or sbatch a script that calls it)
#       under SLURM every task runs one process; jax.distributed finds the cluster from SLURM's variables.
#   bash launch.sh --exp=NAME ...
#       a single process (all local devices).
# Extra environment: PYTHON (default: python on PATH), JAXCNN_PORT (default: a free port).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
procs=""
args=()
for a in "$@"; do
  case "$a" in
    --procs=*) procs=${a#--procs=} ;;
    *) args+=("$a") ;;
  esac
done

if [ -z "$procs" ] && [ -n "${SLURM_JOB_ID:-}" ] && [ -n "${SLURM_PROCID:-}" ]; then
  # Already one SLURM task per process (srun started us): jax.distributed reads SLURM_* itself.
  exec "$PYTHON" -m experiments.run "${args[@]}"
fi
if [ -z "$procs" ] && [ -n "${SLURM_JOB_ID:-}" ] && command -v srun >/dev/null; then
  exec srun "$PYTHON" -m experiments.run "${args[@]}"
fi
procs=${procs:-1}
if ! [[ "$procs" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --procs must be a positive integer, got '$procs'" >&2; exit 2
fi
if [ "$procs" -eq 1 ]; then
  exec "$PYTHON" -m experiments.run "${args[@]}"
fi

port=${JAXCNN_PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
# SIGTERM / SIGINT (a scheduler's preemption notice, Ctrl-C) go to every process, which save a checkpoint at
# the same step and exit with 128 + the signal number; launch.sh waits for them and exits with that status.
forwarded=""
forward() {
  forwarded=$1
  for p in "${pids[@]}"; do kill -"$1" "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'forward TERM' TERM
trap 'forward INT' INT
for ((i = 0; i < procs; i++)); do
  JAXCNN_COORDINATOR="127.0.0.1:$port" JAXCNN_NUM_PROCESSES=$procs JAXCNN_PROCESS_ID=$i \
    "$PYTHON" -m experiments.run "${args[@]}" &
  pids+=($!)
done
status=0
# Wait for all; the first failure stops the others (a lone survivor would wait for its peers forever).
while [ ${#pids[@]} -gt 0 ] && [ -z "$forwarded" ]; do
  if wait -n "${pids[@]}"; then :; else
    rc=$?
    [ -n "$forwarded" ] || { status=$rc; break; }   # rc > 128 with $forwarded set: wait was interrupted
  fi
  alive=()
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
  pids=("${alive[@]+"${alive[@]}"}")
done
trap - TERM INT
if [ -n "$forwarded" ]; then
  expected=$([ "$forwarded" = TERM ] && echo 143 || echo 130)
  for p in "${pids[@]}"; do
    rc=0; wait "$p" || rc=$?
    if [ $rc -ne 0 ] && [ $rc -ne "$expected" ]; then status=$rc; fi
  done
  trap - EXIT
  if [ $status -ne 0 ]; then
    echo "launch.sh: after SIG$forwarded a process exited with status $status" >&2; exit $status
  fi
  echo "launch.sh: stopped by SIG$forwarded after the processes saved their state (run the same command to continue)" >&2
  exit "$expected"
fi
if [ $status -ne 0 ]; then
  echo "launch.sh: a process exited with status $status; stopping the others" >&2
  exit $status
fi
trap - EXIT
