#!/bin/bash
# usage: ab.sh SCRIPT VARIANT... : runs SCRIPT under each variant's build, 2 rounds, alternating
cd /work/main
S=$1; shift
for round in ${ROUNDS:-1 2}; do for v in "$@"; do
  echo "== $v round $round"; PYTHONPATH=/tmp/s21/ck_$v flock /tmp/cat-heavy.lock .venv/bin/python $S 2>&1 | tail -3
done; done
