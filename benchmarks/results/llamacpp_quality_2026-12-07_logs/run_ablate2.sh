#!/bin/bash
# issue #26: the clip search scored by the Gram's diagonal (an importance-matrix-like objective), sym g32 nearest
cd /work/main
source .venv/bin/activate
C="--model smollm2 --bits 4 --group-size 32 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet"
python benchmarks/awq_quality.py $C --methods awq --quant-overrides '{"sym": true, "rounding": "nearest", "clip_gram": "diagonal"}'
date -u
