#!/bin/bash
# issue #26 (session 20): the previous default (AWQ scales + clip + learned rounding from GPTQ), 4-bit g64, on this machine, for D2's comparison
cd /work/main
C="--model smollm2 --bits 4 --group-size 64 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq"
R=benchmarks/results/imatrix_round_2026-12-07
.venv/bin/python benchmarks/awq_quality.py $C --out-dir /tmp/s20/d6 --quant-overrides '{"rounding": "learned", "learned_round_init": "gptq"}' > $R/d6_g64_previous_default.log 2>&1
