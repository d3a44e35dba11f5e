#!/bin/bash
# (session 15: the queue was stopped after q1b_s32; q1b_m32 and q1b_m4 did not run from it)
# Session 15 (2026-12-07): 1b preset runs for #27 at f867bb4 (streaming) vs a9f5ffb (in-memory), plus a 135M row
cd /work/main
source .venv/bin/activate
OLD="env PYTHONPATH=/tmp/wt-old/packages/cat-core/src:/tmp/wt-old/packages/cat-apps/src"
NEW="env PYTHONPATH=/tmp/wt-head/packages/cat-core/src:/tmp/wt-head/packages/cat-apps/src"
COMMON="--bits 4 --rounding nearest --no-quality"
run() { # name, then command
  local name=$1; shift
  rm -rf /tmp/$name; echo "== $name $(date -u +%T)"
  /usr/bin/time -v "$@" --out /tmp/$name > /tmp/s15/$name.log 2>&1
  echo "rc=$? $(date -u +%T)"; grep -E "Maximum resident|Elapsed" /tmp/s15/$name.log
  grep -E "^  time|peak memory|read by block" /tmp/s15/$name.log
}
run q1b_s4c $NEW python -m cat_apps.quantize /tmp/r1b $COMMON --n-samples 4 --seqlen 128 --max-memory 3GB
run q135_w4 $NEW python -m cat_apps.quantize builtin:smollm2 $COMMON --n-samples 4 --seqlen 128 --calib /tmp/words.txt
run q1b_s32 $NEW python -m cat_apps.quantize /tmp/r1b $COMMON --n-samples 32 --seqlen 512 --calib /tmp/words.txt --max-memory 3GB
run q1b_m32 $OLD python -m cat_apps.quantize /tmp/r1b $COMMON --n-samples 32 --seqlen 512 --calib /tmp/words.txt
python benchmarks/same_tensors.py /tmp/q1b_s32 /tmp/q1b_m32
run q1b_m4 $OLD python -m cat_apps.quantize /tmp/r1b $COMMON --n-samples 4 --seqlen 128
python benchmarks/same_tensors.py /tmp/q1b_s4c /tmp/q1b_m4
echo "== done $(date -u +%T)"
