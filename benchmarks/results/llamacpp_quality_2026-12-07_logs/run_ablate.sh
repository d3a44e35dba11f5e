#!/bin/bash
# issue #26 ablations at Q4_0's format (sym g32, 4.5 bits/w), SmolLM2, Lee 64 x 512, two held-out texts
cd /work/main
source .venv/bin/activate
C="--model smollm2 --bits 4 --group-size 32 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet"
python benchmarks/awq_quality.py $C --methods fp rtn awq --quant-overrides '{"sym": true, "rounding": "nearest"}'
python benchmarks/awq_quality.py $C --methods awq --quant-overrides '{"sym": true, "rounding": "nearest", "clip": false}'
python benchmarks/awq_quality.py $C --methods awq --quant-overrides '{"sym": true, "rounding": "learned", "learned_round_init": "nearest"}'
date -u
