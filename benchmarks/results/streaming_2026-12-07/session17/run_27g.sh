#!/bin/bash
# 1b preset, 32 x 512 text, --max-memory 3GB, with the embedding lookups: where the peak is now (py-spy dumps above 2750 MiB, quiet)
cd /work/main
source .venv/bin/activate
COMMON="--bits 4 --rounding nearest --no-quality --n-samples 32 --seqlen 512 --calib /tmp/words.txt"
name=q1b_s33g; rm -rf /tmp/$name; echo "== $name $(date -u +%T)"
python benchmarks/rss_sampler.py 2750 /tmp/s17/${name}_rss.log "^python -m cat_apps.quantize /tmp/r1b" &
/usr/bin/time -v python -m cat_apps.quantize /tmp/r1b $COMMON --max-memory 3GB --out /tmp/$name > /tmp/s17/$name.log 2>&1
echo "rc=$? $(date -u +%T)"; grep -E "Maximum resident|Elapsed" /tmp/s17/$name.log; grep -E "^  time|peak memory" /tmp/s17/$name.log
wait
echo "== done $(date -u +%T)"
