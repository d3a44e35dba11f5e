#!/bin/bash
# issue #26 (session 22): Gemma-3-270m at Q4_0's format (4-bit symmetric g32): llama.cpp Q4_0 with and
# without an importance matrix, Caterpillar's default recipe (AWQ scales + clip + learned rounding from
# GPTQ codes) and the importance recipe (learned rounding from importance codes, no scale or clip search).
# fp and RTN asym g128 (the gap reference) are in g3_gemma3_4bit_fp_rtn.log (run15.sh).
cd /work/main
R=benchmarks/results/imatrix_round_2026-12-07
.venv/bin/python benchmarks/llamacpp_quality.py --model gemma3 --calib lee-background --types Q4_0 Q4_0+imatrix \
  --rtn-group 128 --out $R/g6_gemma3_llamacpp_q4_0.md > $R/g6_gemma3_llamacpp_q4_0.log 2>&1
C="--model gemma3 --bits 4 --group-size 32 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq"
.venv/bin/python benchmarks/awq_quality.py $C --out-dir /tmp/s22/g7 --quant-overrides '{"sym": true}' > $R/g7_gemma3_sym32_default.log 2>&1
.venv/bin/python benchmarks/awq_quality.py $C --out-dir /tmp/s22/g8 --quant-overrides '{"sym": true, "rounding": "learned", "learned_round_init": "importance", "scales": null, "clip": null}' > $R/g8_gemma3_sym32_importance_learned.log 2>&1
