#!/bin/bash
# A10: shards capped at budget/8, RSS sampled (0.05 s) 
cd /work/main
source .venv/bin/activate
COMMON="--bits 4 --rounding nearest --no-quality --n-samples 32 --seqlen 512 --calib /tmp/words.txt"
name=q1b_s32d; rm -rf /tmp/$name; echo "== $name $(date -u +%T)"
/usr/bin/time -v python -m cat_apps.quantize /tmp/r1b $COMMON --max-memory 3GB --out /tmp/$name > /tmp/s16/$name.log 2>&1 &
sleep 2; pid=$(pgrep -f "^python -m cat_apps.quantize /tmp/r1b")
while kill -0 $pid 2>/dev/null; do echo "$(date -u +%T.%N | cut -c1-12) $(grep -E 'VmRSS' /proc/$pid/status 2>/dev/null | awk '{print int($2/1024)}')" >> /tmp/s16/${name}_rss.log; sleep 0.05; done
wait
echo "rc=$? $(date -u +%T)"; grep -E "Maximum resident|Elapsed" /tmp/s16/$name.log
grep -E "^  time|peak memory|read by block" /tmp/s16/$name.log
python benchmarks/same_tensors.py /tmp/q1b_s32d /tmp/q1b_m32
echo "== done $(date -u +%T)"
