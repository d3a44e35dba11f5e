#!/bin/bash
# issue #26 (session 20): symmetric g64 (4.25 bits/w) with identity scales + importance rounding + learned rounding from it
cd /work/main
C="--model smollm2 --bits 4 --group-size 64 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq"
R=benchmarks/results/imatrix_round_2026-12-07
NOAWQ='"n_grid": 1, "duo_scaling": false'
.venv/bin/python benchmarks/probes/imatrix_round.py $C --out-dir /tmp/s20/d3 --quant-overrides "{\"sym\": true, \"rounding\": \"learned\", \"learned_round_init\": \"nearest\", $NOAWQ, \"clip\": null}" > $R/d3_sym64_noawq_imatrix_learned.log 2>&1
