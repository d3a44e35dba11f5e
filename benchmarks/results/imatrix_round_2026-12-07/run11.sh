#!/bin/bash
# issue #26 (session 20): the new recipe at sym g32 with 50 learned-rounding iterations (AutoRound's light recipe) instead of 20
cd /work/main
C="--model smollm2 --bits 4 --group-size 32 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq"
R=benchmarks/results/imatrix_round_2026-12-07
.venv/bin/python benchmarks/awq_quality.py $C --out-dir /tmp/s20/e7 --quant-overrides '{"sym": true, "rounding": "learned", "learned_round_init": "importance", "learned_round_iters": 50, "scales": null, "clip": null}' > $R/e7_sym32_importance_learned50.log 2>&1
