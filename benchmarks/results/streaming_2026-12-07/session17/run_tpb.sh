#!/bin/bash
# time per billion on SPR: 135M and 1b at 4 x 128 text, nearest, quiet (session 17 code)
cd /work/main
source .venv/bin/activate
COMMON="--bits 4 --rounding nearest --no-quality --n-samples 4 --seqlen 128 --calib /tmp/words.txt"
for spec in "q135 builtin:smollm2" "q1b /tmp/r1b"; do
  set -- $spec; name=tpb17_$1; rm -rf /tmp/$name; echo "== $name $(date -u +%T)"
  /usr/bin/time -v python -m cat_apps.quantize $2 $COMMON --out /tmp/$name > /tmp/s17/$name.log 2>&1
  echo "rc=$? $(date -u +%T)"; grep -E "Maximum resident|Elapsed" /tmp/s17/$name.log; grep -E "^  time|peak memory" /tmp/s17/$name.log
done
echo "== done $(date -u +%T)"
