#!/bin/bash
# issue #28 (session 20): claiming pool items in guided runs instead of one at a time.
# A = the installed build (HEAD's pool), B = the same kernels with the new Pool::work(), built into /tmp/ck_pool
# and put first on PYTHONPATH. Alternated A B A B on a quiet machine (run under the heavy-job lock).
cd /work/main
L=benchmarks/results/decode_2026-12-07/session20
rm -rf /tmp/ck_pool
CAT_KERNELS_CUDA=OFF .venv/bin/pip install -q --no-deps --no-build-isolation -Cbuild-dir=/tmp/ckbuild_pool --target /tmp/ck_pool ./packages/cat-kernels > $L/pool_build.log 2>&1 || exit 1
for round in 1 2; do
  for v in A B; do
    if [ $v = B ]; then export PYTHONPATH=/tmp/ck_pool; else unset PYTHONPATH; fi
    echo "== round $round, build $v ($(.venv/bin/python -c 'import cat_kernels; print(cat_kernels.__file__)'))"
    .venv/bin/python benchmarks/probes/native_step_time.py
    .venv/bin/python benchmarks/probes/native_decode_speed.py
  done
done > $L/pool_ab.log 2>&1
