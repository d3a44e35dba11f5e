#!/bin/bash
# issue #26 (session 21): Gemma-3-270m 4-bit g128 on both texts: fp and RTN (gap reference), the default
# (AWQ scales + clip + learned rounding from GPTQ codes), and the importance recipe (learned rounding
# from importance codes, no scale or clip search)
cd /work/main
C="--model gemma3 --bits 4 --group-size 128 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet"
R=benchmarks/results/imatrix_round_2026-12-07
.venv/bin/python benchmarks/awq_quality.py $C --methods fp rtn --out-dir /tmp/s21/g4ref > $R/g3_gemma3_4bit_fp_rtn.log 2>&1
.venv/bin/python benchmarks/awq_quality.py $C --methods awq --out-dir /tmp/s21/g4def > $R/g4_gemma3_4bit_default.log 2>&1
.venv/bin/python benchmarks/awq_quality.py $C --methods awq --out-dir /tmp/s21/g4imp --quant-overrides '{"rounding": "learned", "learned_round_init": "importance", "scales": null, "clip": null}' > $R/g5_gemma3_4bit_importance_learned.log 2>&1
