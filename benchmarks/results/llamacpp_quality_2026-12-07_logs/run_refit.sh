#!/bin/bash
# issue #26 probe (session 18): weighted least-squares scale refit after rounding (benchmarks/probes/sym_lsq_refit.py,
# on the 16-level symmetric grid), nearest and learned-from-nearest
cd /work/main
C="--model smollm2 --bits 4 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq"
.venv/bin/python benchmarks/probes/sym_lsq_refit.py $C --group-size 32 --out-dir /tmp/s18/refit_nearest --quant-overrides '{"sym": true, "rounding": "nearest"}' > refit_nearest.log 2>&1
.venv/bin/python benchmarks/probes/sym_lsq_refit.py $C --group-size 32 --out-dir /tmp/s18/refit_learned --quant-overrides '{"sym": true, "rounding": "learned", "learned_round_init": "nearest"}' > refit_learned.log 2>&1
# the default format (asym g64), learned rounding from nearest codes with the refit
.venv/bin/python benchmarks/probes/sym_lsq_refit.py $C --group-size 64 --out-dir /tmp/s18/refit_asym64 --quant-overrides '{"rounding": "learned", "learned_round_init": "nearest"}' > refit_asym64.log 2>&1
