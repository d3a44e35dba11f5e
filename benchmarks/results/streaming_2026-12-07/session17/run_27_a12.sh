#!/bin/bash
# A12: 1b preset, 32 x 512 text, --max-memory 3GB, embedding lookups (run from the shell, output in q1b_s33.log)
cd /work/main
flock /tmp/cat-heavy.lock /usr/bin/time -v .venv/bin/python -m cat_apps.quantize /tmp/r1b --bits 4 --rounding nearest --no-quality --n-samples 32 --seqlen 512 --calib /tmp/words.txt --max-memory 3GB --out /tmp/q1b_s33 > /tmp/s17_run1.log 2>&1
