#!/bin/bash
# issue #26 (session 20): identity scales (no AWQ scaling) with learned rounding from imatrix codes; identity scales + clip + nearest
cd /work/main
C="--model smollm2 --bits 4 --group-size 32 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq"
R=benchmarks/results/imatrix_round_2026-12-07
NOAWQ='"n_grid": 1, "duo_scaling": false'
# E3: E1 (identity scales, imatrix rounding) then learned rounding from those codes and scales
.venv/bin/python benchmarks/probes/imatrix_round.py $C --out-dir /tmp/s20/e3 --quant-overrides "{\"sym\": true, \"rounding\": \"learned\", \"learned_round_init\": \"nearest\", $NOAWQ, \"clip\": null}" > $R/e3_noawq_imatrix_learned.log 2>&1
# E5: identity scales, the product's clip search and nearest rounding (no probe patches)
.venv/bin/python benchmarks/awq_quality.py $C --out-dir /tmp/s20/e5 --quant-overrides "{\"sym\": true, \"rounding\": \"nearest\", $NOAWQ}" > $R/e5_noawq_clip_nearest.log 2>&1
