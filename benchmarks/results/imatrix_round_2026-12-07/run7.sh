#!/bin/bash
# issue #26 (session 20): the product's implementation (no probe): rounding Learned(init=Importance()), scales=None, clip off
cd /work/main
C="--calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq --model smollm2"
R=benchmarks/results/imatrix_round_2026-12-07
# P1: sym g32 (Q4_0's format), to compare with the probe's E3
.venv/bin/python benchmarks/awq_quality.py $C --bits 4 --group-size 32 --out-dir /tmp/s20/p1 --quant-overrides '{"sym": true, "rounding": "learned", "learned_round_init": "importance", "scales": null, "clip": null}' > $R/p1_product_sym32_importance_learned.log 2>&1
# D4: 3-bit asym g64: the same recipe, and the default in the same run
.venv/bin/python benchmarks/awq_quality.py $C --bits 3 --group-size 64 --out-dir /tmp/s20/d4 --quant-overrides '{"rounding": "learned", "learned_round_init": "importance", "scales": null, "clip": null}' > $R/d4_3bit_g64_importance_learned.log 2>&1
.venv/bin/python benchmarks/awq_quality.py $C --bits 3 --group-size 64 --out-dir /tmp/s20/d5 > $R/d5_3bit_g64_default.log 2>&1
