#!/usr/bin/env bash
# OpenMP wait settings, quiet and beside one CPU burner (`python3 -c 'while 1: pass'`): libgomp's
# default spin, GOMP_SPINCOUNT=1000/3000, OMP_WAIT_POLICY=PASSIVE. Hold the heavy-work lock:
#   flock /tmp/cat-heavy.lock bash benchmarks/probes/omp_waits.sh [VENV]
set -u
cd "$(dirname "$0")/../.."
PY=${1:-.venv}/bin/python
export PYTHONPATH=$PWD/packages/cat-core/src:$PWD/packages/cat-apps/src
run() { timeout 120 env "${@:2}" "$PY" benchmarks/probes/omp_waits.py "$1" 4 48 2>/dev/null; }
echo "date $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
for mode in quiet burner; do
  if [ $mode = burner ]; then timeout 300 python3 -c 'while 1: pass' & B=$!; sleep 1; fi
  run $mode-default X=1
  run $mode-spin1000 GOMP_SPINCOUNT=1000
  run $mode-spin3000 GOMP_SPINCOUNT=3000
  run $mode-passive OMP_WAIT_POLICY=PASSIVE
done
kill "$B"
