#!/bin/bash
# issue #26 (session 20): RTN 3-bit asym g64 on both texts (the 3-bit gap's baseline)
cd /work/main
R=benchmarks/results/imatrix_round_2026-12-07
.venv/bin/python benchmarks/awq_quality.py --model smollm2 --bits 3 --group-size 64 --methods rtn --eval-text wikitext2-test licenses --quiet --out-dir /tmp/s20/rtn3 > $R/rtn_3bit_g64.log 2>&1
