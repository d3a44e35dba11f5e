#!/bin/bash
# 8b preset on Sapphire Rapids (session 17 code): time per billion at 4 x 128 text, --max-memory 6GB
cd /work/main
source .venv/bin/activate
date -u
[ -f /tmp/r8b/config.json ] || python benchmarks/random_llama.py --preset 8b --dtype bfloat16 --out /tmp/r8b
date -u; du -sh /tmp/r8b
rm -rf /tmp/q8b
python benchmarks/rss_sampler.py 999999 /tmp/s17/q8b_rss.log "^python -m cat_apps.quantize /tmp/r8b" &
/usr/bin/time -v python -m cat_apps.quantize /tmp/r8b --bits 4 --n-samples 4 --seqlen 128 --calib /tmp/words.txt --rounding nearest --no-quality --max-memory 6GB --out /tmp/q8b > /tmp/s17/q8b.log 2>&1
echo "rc=$? $(date -u +%T)"; grep -E "Maximum resident|Elapsed" /tmp/s17/q8b.log; grep -E "^  time|peak memory" /tmp/s17/q8b.log
wait
date -u
