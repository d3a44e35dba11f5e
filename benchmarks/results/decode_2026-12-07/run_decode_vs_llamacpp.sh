#!/bin/bash
# the side-by-side run of decode_vs_llamacpp_spr.md (session 17)
cd /work/main
flock /tmp/cat-heavy.lock bash tools/build_llamacpp.sh
flock /tmp/cat-heavy.lock .venv/bin/python benchmarks/decode_vs_llamacpp.py --threads 2 --out /tmp/s17/decode_vs_llamacpp.md
