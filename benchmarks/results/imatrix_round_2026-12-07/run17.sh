#!/bin/bash
# issue #26 (session 23): ablations of the importance recipe (learned rounding from importance codes,
# scale and clip searches off), news calibration 64 x 512, WikiText-2 / licenses:
#  - where importance's column mean squares come from: the unquantized model (llama-imatrix's
#    choice; FP_IMATRIX=fp) or the quantized path (the product; FP_IMATRIX=path), at sym g32 and asym g64
#  - a learned factor on each start scale (benchmarks/probes/learned_scale.py)
#  - learned rounding's pool: every calibration sequence (64) instead of 32, also with 40 iterations
#    at half the step; at sym g32 on both models, and with GPTQ's start at the default format (asym g64)
#  - importance rounding alone with the unquantized model's statistics, and on the text's first 64
#    windows (benchmarks/probes/first_windows.py), against session 20's E1
#  - at the end: the scale search scored with importance rounding (with and without the clip search)
# Logs: f1..f9, g9, w1 and s1..s3 in this folder (the session's /tmp/s23/fN.log, progress bars stripped).
cd /work/main
R=benchmarks/results/imatrix_round_2026-12-07
S32="--model smollm2 --bits 4 --group-size 32 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq"
G64="--model smollm2 --bits 4 --group-size 64 --calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq"
IMP='"rounding": "learned", "learned_round_init": "importance", "scales": null, "clip": null'
FP_IMATRIX=fp .venv/bin/python benchmarks/probes/fp_imatrix.py $S32 --out-dir /tmp/s23/f1 --quant-overrides "{\"sym\": true, $IMP}" > $R/f1_sym32_importance_learned_fp_stats.log 2>&1
FP_IMATRIX=fp .venv/bin/python benchmarks/probes/fp_imatrix.py $G64 --out-dir /tmp/s23/f3 --quant-overrides "{$IMP}" > $R/f3_g64_importance_learned_fp_stats.log 2>&1
FP_IMATRIX=path .venv/bin/python benchmarks/probes/fp_imatrix.py $G64 --out-dir /tmp/s23/f4 --quant-overrides "{$IMP}" > $R/f4_g64_importance_learned_path_stats.log 2>&1
LEARNED_SCALE=0.2 FP_IMATRIX=path .venv/bin/python benchmarks/probes/learned_scale.py $S32 --out-dir /tmp/s23/f5 --quant-overrides "{\"sym\": true, $IMP}" > $R/f5_sym32_importance_learned_scale_factor.log 2>&1
FP_IMATRIX=path .venv/bin/python benchmarks/probes/fp_imatrix.py $S32 --out-dir /tmp/s23/f6 --quant-overrides "{\"sym\": true, $IMP, \"learned_round_samples\": 64, \"learned_round_iters\": 40, \"learned_round_lr\": 0.005}" > $R/f6_sym32_importance_learned_64x40.log 2>&1
FP_IMATRIX=path .venv/bin/python benchmarks/probes/fp_imatrix.py $S32 --out-dir /tmp/s23/f7 --quant-overrides "{\"sym\": true, $IMP, \"learned_round_samples\": 64}" > $R/f7_sym32_importance_learned_64.log 2>&1
FP_IMATRIX=fp .venv/bin/python benchmarks/probes/fp_imatrix.py $S32 --out-dir /tmp/s23/f8 --quant-overrides "{\"sym\": true, $IMP, \"learned_round_samples\": 64}" > $R/f8_sym32_importance_learned_64_fp_stats.log 2>&1
.venv/bin/python benchmarks/awq_quality.py $G64 --out-dir /tmp/s23/f9 --quant-overrides '{"rounding": "learned", "learned_round_samples": 64}' > $R/f9_g64_default_64.log 2>&1
.venv/bin/python benchmarks/awq_quality.py ${S32/smollm2/gemma3} --out-dir /tmp/s23/g9 --quant-overrides "{\"sym\": true, $IMP, \"learned_round_samples\": 64}" > $R/g9_gemma3_sym32_importance_learned_64.log 2>&1
FP_IMATRIX=fp .venv/bin/python benchmarks/probes/fp_imatrix.py $S32 --out-dir /tmp/s23/f2 --quant-overrides '{"sym": true, "rounding": "importance", "scales": null, "clip": null}' > $R/f2_sym32_importance_fp_stats.log 2>&1
.venv/bin/python benchmarks/probes/first_windows.py $S32 --out-dir /tmp/s23/w1 --quant-overrides '{"sym": true, "rounding": "importance", "scales": null, "clip": null}' > $R/w1_sym32_importance_first_windows.log 2>&1
# the scale search scored with importance rounding (benchmarks/probes/importance_scale_search.py; session 20's
# run13.sh at 20 grid points was stopped), here at 5 grid points, then learned rounding from importance codes, no clip search
C="--calib lee-background --n-samples 64 --seqlen 512 --eval-text wikitext2-test licenses --quiet --methods awq"
.venv/bin/python benchmarks/probes/importance_scale_search.py $C --model gemma3 --bits 3 --group-size 128 --out-dir /tmp/s23/s2 --quant-overrides '{"rounding": "learned", "learned_round_init": "importance", "scales": true, "clip": null, "n_grid": 5}' > $R/s2_gemma3_3bit_importance_scale_search_grid5.log 2>&1
.venv/bin/python benchmarks/probes/importance_scale_search.py $C --model smollm2 --bits 4 --group-size 64 --out-dir /tmp/s23/s1 --quant-overrides '{"rounding": "learned", "learned_round_init": "importance", "scales": true, "clip": null, "n_grid": 5}' > $R/s1_smollm2_g64_importance_scale_search_grid5.log 2>&1
.venv/bin/python benchmarks/probes/importance_scale_search.py $C --model gemma3 --bits 3 --group-size 128 --out-dir /tmp/s23/s3 --quant-overrides '{"rounding": "learned", "learned_round_init": "importance", "scales": true, "clip": true, "n_grid": 5}' > $R/s3_gemma3_3bit_importance_scale_search_grid5_clip.log 2>&1
# how many 512-token windows the Lee text gives the calibration sampler (cat_core.calib joins its lines with blank lines)
.venv/bin/python -c "
import sys; sys.path.insert(0, 'benchmarks'); import _models as M
_, tok = M.load_model('smollm2')
docs = [l for l in open('../shared/data/lee-background.txt').read().splitlines() if l.strip()]
ids = tok('\n\n'.join(docs))['input_ids']; print(len(ids), 'tokens,', len(ids) // 512, 'windows of 512')" > $R/lee_windows.txt 2>&1
