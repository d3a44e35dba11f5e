#!/bin/bash
# issue #26 (session 20): identity scales + the clip search, then importance rounding of the clipped weight (IMATRIX_CLIP=1), sym g32
cd /work/main
C="--model smollm2 --bits 4 --group-size 32 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq"
R=benchmarks/results/imatrix_round_2026-12-07
NOAWQ='"n_grid": 1, "duo_scaling": false'
IMATRIX_CLIP=1 .venv/bin/python benchmarks/probes/imatrix_round.py $C --out-dir /tmp/s20/e6 --quant-overrides "{\"sym\": true, \"rounding\": \"nearest\", $NOAWQ}" > $R/e6_noawq_clip_imatrix.log 2>&1
