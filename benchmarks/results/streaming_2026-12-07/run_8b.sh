#!/bin/bash
cd /work/main
source .venv/bin/activate
export PYTHONPATH=/tmp/wt-head/packages/cat-core/src:/tmp/wt-head/packages/cat-apps/src
rm -rf /tmp/q8b; date -u
/usr/bin/time -v python -m cat_apps.quantize /tmp/r8b --bits 4 --n-samples 4 --seqlen 128 --calib /tmp/words.txt --rounding nearest --no-quality --max-memory 6GB --out /tmp/q8b
date -u
