#!/bin/bash
# issue #26 probe: the 16-level symmetric grid (benchmarks/probes/sym_full_grid.py), nearest and learned-from-nearest
cd /work/main
C="--model smollm2 --bits 4 --group-size 32 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq --out-dir /tmp/s17/fullgrid"
.venv/bin/python benchmarks/probes/sym_full_grid.py $C --quant-overrides '{"sym": true, "rounding": "nearest"}' > fullgrid.log 2>&1
.venv/bin/python benchmarks/probes/sym_full_grid.py $C --quant-overrides '{"sym": true, "rounding": "learned", "learned_round_init": "nearest"}' > fullgrid2.log 2>&1
