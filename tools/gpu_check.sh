#!/usr/bin/env bash
# One call on a lent GPU machine (device tool): build cat-kernels for the GPU that is present,
# run the CUDA tests (which compare every CUDA op with the CPU op), then the CUDA and CPU kernel
# benchmarks. Everything it prints is also written under $OUT, ready to be committed under
# benchmarks/results/<date>-<gpu>/ by the session that ran it.
#   usage (device tool): bash tools/gpu_check.sh            [env: SKIP_BENCH=1, PYTEST_ARGS=...]
# The device image has its own python3 with torch, nanobind, scikit-build-core, cmake and ninja;
# nothing can be installed there, hence --no-build-isolation.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/cat-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
status=0

{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  nvcc --version | tail -1
  $PY -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt"

cap=$($PY -c "import torch; a, b = torch.cuda.get_device_capability(); print(f'{a}{b}')")
t0=$(date +%s)
# Real code for this GPU only: a full six-generation build is CI's job, not the lease's.
$PY -m pip install -q --no-build-isolation --no-deps --target /tmp/cat-kernels-site \
    -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="${cap}-real" -Cbuild-dir=/tmp/cat-kernels-build \
    ./packages/cat-kernels > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
echo "build for sm_${cap}: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/env.txt"
export PYTHONPATH=/tmp/cat-kernels-site${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import cat_kernels, json; print(json.dumps(cat_kernels.build_info()))" | tee -a "$OUT/env.txt"

cd packages/cat-kernels
$PY -m pytest tests/test_cuda.py -v -p no:cacheprovider ${PYTEST_ARGS:-} > "$OUT/cuda-tests.log" 2>&1 || status=1
tail -15 "$OUT/cuda-tests.log"
$PY -m pytest tests -q -p no:cacheprovider --deselect tests/test_cuda.py > "$OUT/cpu-tests.log" 2>&1 || status=1
tail -3 "$OUT/cpu-tests.log"

if [ "${SKIP_BENCH:-0}" != "1" ]; then
  $PY -m pytest benchmarks/test_bench_cuda.py -p no:cacheprovider -s \
      --benchmark-json="$OUT/cuda-bench.json" > "$OUT/cuda-bench.log" 2>&1 || status=1
  tail -40 "$OUT/cuda-bench.log"
fi
exit $status
