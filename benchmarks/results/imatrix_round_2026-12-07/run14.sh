#!/bin/bash
# issue #26 (session 20): Gemma-3-270m 3-bit g128, the previous default spelled out (AWQ scales + clip + learned rounding from GPTQ).
# (run9.sh's second row ran after the default changed, so it repeated G1; its log was dropped.)
cd /work/main
C="--model gemma3 --bits 3 --group-size 128 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq"
R=benchmarks/results/imatrix_round_2026-12-07
.venv/bin/python benchmarks/awq_quality.py $C --out-dir /tmp/s20/g2b --quant-overrides '{"rounding": "learned", "learned_round_init": "gptq"}' > $R/g2_gemma3_3bit_previous_default.log 2>&1
