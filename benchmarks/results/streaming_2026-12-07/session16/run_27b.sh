#!/bin/bash
# Session 16: the streamed 32 x 512 run again with the plan's 5% slack (after run_27.sh)
cd /work/main
source .venv/bin/activate
COMMON="--bits 4 --rounding nearest --no-quality --n-samples 32 --seqlen 512 --calib /tmp/words.txt"
name=q1b_s32b; rm -rf /tmp/$name; echo "== $name $(date -u +%T)"
/usr/bin/time -v python -m cat_apps.quantize /tmp/r1b $COMMON --max-memory 3GB --out /tmp/$name > /tmp/s16/$name.log 2>&1
echo "rc=$? $(date -u +%T)"; grep -E "Maximum resident|Elapsed" /tmp/s16/$name.log
grep -E "^  time|peak memory|read by block" /tmp/s16/$name.log
python benchmarks/same_tensors.py /tmp/q1b_s32b /tmp/q1b_m32
echo "== done $(date -u +%T)"
