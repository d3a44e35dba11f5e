#!/usr/bin/env bash
# cat-quantize on a shared machine: the embedded SmolLM2 at 4 x 128 calibration tokens (file), with
# the 2 x 64 quality reference sampled from the model, run quiet, beside one CPU burner
# (`python3 -c 'while 1: pass'`, normal priority), and two side by side. BEFORE = the installed
# package of the venv (no PYTHONPATH), AFTER = this checkout's sources. Hold the heavy-work lock:
#   flock /tmp/cat-heavy.lock bash benchmarks/probes/contention.sh [VENV] > benchmarks/results/contention_<date>.txt
set -u
cd "$(dirname "$0")/../.."
VENV=${1:-.venv}
CALIB=${CALIB:-../shared/data/lee-background.txt}
OUT=$(mktemp -d)
AFTER="PYTHONPATH=$PWD/packages/cat-core/src:$PWD/packages/cat-apps/src"
q() {  # label, env assignment (or X=1): one cat-quantize, its wall time and summary lines
  local t0=$(date +%s.%N)
  timeout 600 env $2 "$VENV/bin/cat-quantize" --n-samples 4 --seqlen 128 --calib "$CALIB" --quality-samples 2 \
    --quality-seqlen 64 --out "$OUT/$1-$RANDOM" --quiet > "$OUT/$1.log" 2>&1
  local rc=$? t1=$(date +%s.%N)
  printf '%-22s rc %s wall %6.1f s | %s | %s\n' "$1" "$rc" "$(echo "$t1 - $t0" | bc)" \
    "$(grep -o 'time .*' "$OUT/$1.log" | sed 's/ (AWQ:.*//')" "$(grep -o 'threads .*' "$OUT/$1.log")"
}
burner() { timeout 900 python3 -c 'while 1: pass' & echo $!; }
echo "date: $(date -u +%FT%TZ); $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(grep -o -m1 -w 'avx512f\|avx2' /proc/cpuinfo | tail -1)); load $(cut -d' ' -f1-3 /proc/loadavg)"
q quiet-before X=1
q quiet-after "$AFTER"
B=$(burner); sleep 2
q burner-before X=1
q burner-after "$AFTER"
kill "$B"; sleep 2
[ -n "${PAIR_BEFORE:-}" ] && { ( q pair-before-1 X=1 ) & sleep 3; q pair-before-2 X=1; wait; }
( q pair-after-1 "$AFTER" ) & sleep 3; q pair-after-2 "$AFTER"; wait
rm -rf "$OUT"
