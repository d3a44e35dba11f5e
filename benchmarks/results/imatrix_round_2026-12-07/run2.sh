#!/bin/bash
# issue #26 (session 20): E1 again with identity scales for real (n_grid 1 with duo scaling tries s = 1/w: run1's E1, renamed e1_alpha0_imatrix.log)
cd /work/main
C="--model smollm2 --bits 4 --group-size 32 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq"
R=benchmarks/results/imatrix_round_2026-12-07
.venv/bin/python benchmarks/probes/imatrix_round.py $C --out-dir /tmp/s20/e1b --quant-overrides '{"sym": true, "rounding": "nearest", "n_grid": 1, "duo_scaling": false, "clip": null}' > $R/e1_noawq_imatrix.log 2>&1
