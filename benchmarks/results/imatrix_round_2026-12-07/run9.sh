#!/bin/bash
# issue #26 (session 20): Gemma-3-270m 3-bit g128: the new recipe (no scale search, no clip, learned rounding from importance codes) and the default, both texts.
# The second row ran after the default had changed to the new recipe, so it repeated the first; its log was dropped: run14.sh has the previous default spelled out.
cd /work/main
C="--model gemma3 --bits 3 --group-size 128 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq"
R=benchmarks/results/imatrix_round_2026-12-07
.venv/bin/python benchmarks/awq_quality.py $C --out-dir /tmp/s20/g1 --quant-overrides '{"rounding": "learned", "learned_round_init": "importance", "scales": null, "clip": null}' > $R/g1_gemma3_3bit_importance_learned.log 2>&1
.venv/bin/python benchmarks/awq_quality.py $C --out-dir /tmp/s20/g2 > $R/g2_gemma3_3bit_default.log 2>&1
