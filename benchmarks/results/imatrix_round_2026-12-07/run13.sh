#!/bin/bash
# Stopped after S1 had run 11 minutes (the scale search scoring every candidate with importance rounding is slow); no row came out.
# issue #26 (session 20): the scale search scored with importance rounding (benchmarks/probes/importance_scale_search.py),
# then learned rounding from importance codes (the new default start), no clip search
cd /work/main
C="--calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq"
R=benchmarks/results/imatrix_round_2026-12-07
.venv/bin/python benchmarks/probes/importance_scale_search.py $C --model smollm2 --bits 4 --group-size 64 --out-dir /tmp/s20/s1 --quant-overrides '{"rounding": "learned", "learned_round_init": "importance", "scales": true, "clip": null}' > $R/s1_smollm2_g64_importance_scale_search.log 2>&1
.venv/bin/python benchmarks/probes/importance_scale_search.py $C --model gemma3 --bits 3 --group-size 128 --out-dir /tmp/s20/s2 --quant-overrides '{"rounding": "learned", "learned_round_init": "importance", "scales": true, "clip": null}' > $R/s2_gemma3_3bit_importance_scale_search.log 2>&1
