#!/usr/bin/env bash
# cat-quantize on a shared machine: the embedded SmolLM2 at 4 x 128 calibration tokens (file), with
# the 2 x 64 quality reference sampled from the model, run quiet, beside one CPU burner
# (`python3 -c 'while 1: pass'`, normal priority, started 2 s before), and two side by side
# (the second started 3 s after the first).
#   BEFORE = the sources of a checkout of the code before the thread/wait changes (default
#            ../wt-s7-before: `git worktree add --detach ../wt-s7-before dbb05a1`, main's last
#            commit before the h/apps merge 3e02374 that brought cat_apps/_threads.py)
#   AFTER  = the sources of a checkout with them (AFTER_DIR; default: this checkout). Point it at a
#            fixed checkout (`git worktree add --detach ../wt-s7-after 48d66b6`) when this one changes.
# Both run in the same venv (its installed cat-kernels; the CPU kernels are the same in both:
# `git diff dbb05a1 48d66b6 -- packages/cat-kernels/csrc/cpu` is empty) with PYTHONPATH set to
# the checkout's packages/cat-core/src and packages/cat-apps/src. Ratios are against the quiet
# run of the same code in the same run. Hold the heavy-work lock:
#   flock /tmp/cat-heavy.lock timeout 1500 bash benchmarks/probes/contention.sh [VENV] > benchmarks/results/contention_<date>.txt
# ROWS (default "quiet burner pair") picks the sections to run.
set -u
cd "$(dirname "$0")/../.."
VENV=${1:-.venv}
CALIB=${CALIB:-../shared/data/lee-background.txt}
BEFORE_DIR=$(cd "${BEFORE_DIR:-../wt-s7-before}" && pwd) || exit 2
ROWS=${ROWS:-quiet burner pair}
OUT=$(mktemp -d)
BEFORE="PYTHONPATH=$BEFORE_DIR/packages/cat-core/src:$BEFORE_DIR/packages/cat-apps/src"
AFTER_DIR=$(cd "${AFTER_DIR:-.}" && pwd) || exit 2
AFTER="PYTHONPATH=$AFTER_DIR/packages/cat-core/src:$AFTER_DIR/packages/cat-apps/src"
q() {  # label, env assignment: one cat-quantize, its wall time and summary lines
  local t0=$(date +%s.%N) l0=$(cut -d' ' -f1 /proc/loadavg)
  timeout 600 env $2 "$VENV/bin/cat-quantize" --n-samples 4 --seqlen 128 --calib "$CALIB" --quality-samples 2 \
    --quality-seqlen 64 --out "$OUT/$1-$RANDOM" --quiet > "$OUT/$1.log" 2>&1
  local rc=$? t1=$(date +%s.%N)
  printf '%-16s rc %s wall %6.1f s load1 %s->%s | %s | %s\n' "$1" "$rc" "$(echo "$t1 - $t0" | bc)" \
    "$l0" "$(cut -d' ' -f1 /proc/loadavg)" \
    "$(grep -o 'time .*' "$OUT/$1.log" | sed 's/ (AWQ:.*//')" "$(grep -o 'threads .*' "$OUT/$1.log")"
  [ $rc = 0 ] || tail -3 "$OUT/$1.log"
}
burner() {  # its output away from the caller's $(...), which would wait for it to exit
  timeout 900 python3 -c 'while 1: pass' > /dev/null 2>&1 & echo $!
}
echo "date: $(date -u +%FT%TZ); $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(grep -o -m1 -w 'avx512f\|avx2' /proc/cpuinfo | tail -1)); load $(cut -d' ' -f1-3 /proc/loadavg)"
at() { echo "$1 at $(git -C "$1" rev-parse --short HEAD)$(git -C "$1" diff --quiet HEAD -- packages || echo ' + uncommitted changes')"; }
echo "before: $(at "$BEFORE_DIR"); after: $(at "$AFTER_DIR")"
for row in $ROWS; do
  case $row in
    quiet) q quiet-before "$BEFORE"; q quiet-after "$AFTER" ;;
    burner) B=$(burner); sleep 2
            q burner-before "$BEFORE"; q burner-after "$AFTER"
            kill "$B"; sleep 2 ;;
    pair) ( q pair-before-1 "$BEFORE" ) & sleep 3; q pair-before-2 "$BEFORE"; wait
          ( q pair-after-1 "$AFTER" ) & sleep 3; q pair-after-2 "$AFTER"; wait ;;
  esac
done
echo "end: $(date -u +%FT%TZ); load $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$OUT"
