#!/bin/bash
# Session 16 (2026-12-07): #27 1b preset 32 x 512 with token-bounded chunks: streamed under 3GB, then the in-memory path (same code), then tensor comparison
cd /work/main
source .venv/bin/activate
COMMON="--bits 4 --rounding nearest --no-quality --n-samples 32 --seqlen 512 --calib /tmp/words.txt"
run() { local name=$1; shift
  rm -rf /tmp/$name; echo "== $name $(date -u +%T)"
  /usr/bin/time -v "$@" --out /tmp/$name > /tmp/s16/$name.log 2>&1
  echo "rc=$? $(date -u +%T)"; grep -E "Maximum resident|Elapsed" /tmp/s16/$name.log
  grep -E "^  time|peak memory|read by block|budget" /tmp/s16/$name.log
}
run q1b_s32 python -m cat_apps.quantize /tmp/r1b $COMMON --max-memory 3GB
run q1b_m32 python /tmp/s16/inmem_quantize.py /tmp/r1b $COMMON
python benchmarks/same_tensors.py /tmp/q1b_s32 /tmp/q1b_m32
echo "== done $(date -u +%T)"
