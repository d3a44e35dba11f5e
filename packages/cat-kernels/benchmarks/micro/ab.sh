#!/bin/bash
# ab.sh "N K BITS M THREADS GROUP" BIN1 BIN2 ...: runs the gemm_micro binaries in turn,
# ROUNDS (default 5) times, and prints each one's best per-call time in microseconds.
args=$1; shift
declare -A best
for r in $(seq "${ROUNDS:-5}"); do
  for b in "$@"; do
    v=$("$b" $args 0.1 | sed -E 's/.*min +([0-9.]+) us.*/\1/')
    if [ -z "${best[$b]}" ] || (( $(echo "$v < ${best[$b]}" | bc) )); then best[$b]=$v; fi
  done
done
line="$args:"; for b in "$@"; do line="$line $(basename "$b")=${best[$b]}"; done; echo "$line"
