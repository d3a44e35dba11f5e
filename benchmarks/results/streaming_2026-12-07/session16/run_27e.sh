#!/bin/bash
# A11: where the peak is: py-spy dumps above 2750 MiB
cd /work/main
source .venv/bin/activate
COMMON="--bits 4 --rounding nearest --no-quality --n-samples 32 --seqlen 512 --calib /tmp/words.txt"
name=q1b_s32e; rm -rf /tmp/$name; echo "== $name $(date -u +%T)"
python benchmarks/rss_sampler.py 2750 /tmp/s16/q1b_s32e_rss.log "^python -m cat_apps.quantize /tmp/r1b" &
/usr/bin/time -v python -m cat_apps.quantize /tmp/r1b $COMMON --max-memory 3GB --out /tmp/$name > /tmp/s16/$name.log 2>&1
echo "rc=$? $(date -u +%T)"; grep -E "Maximum resident|Elapsed" /tmp/s16/$name.log
wait
echo "== done $(date -u +%T)"
