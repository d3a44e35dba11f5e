#!/bin/bash
# issue #26 (session 20): llama.cpp's imatrix rounding inside the pipeline (benchmarks/probes/imatrix_round.py), sym g32
cd /work/main
C="--model smollm2 --bits 4 --group-size 32 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq"
R=benchmarks/results/imatrix_round_2026-12-07
# E1 (log renamed e1_alpha0_imatrix.log: n_grid 1 with duo scaling still tries s = 1/w, see run2.sh): meant as no AWQ scaling, no clip: llama.cpp's Q4_0 + imatrix, in our pipeline
.venv/bin/python benchmarks/probes/imatrix_round.py $C --out-dir /tmp/s20/e1 --quant-overrides '{"sym": true, "rounding": "nearest", "n_grid": 1, "clip": null}' > $R/e1_noawq_imatrix.log 2>&1
# E2: AWQ scales, then imatrix rounding (no clip)
.venv/bin/python benchmarks/probes/imatrix_round.py $C --out-dir /tmp/s20/e2 --quant-overrides '{"sym": true, "rounding": "nearest", "clip": null}' > $R/e2_awq_imatrix.log 2>&1
