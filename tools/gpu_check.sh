#!/usr/bin/env bash
# One call on a lent GPU machine (device tool), sized for a 15-minute lease (~8 minutes of
# work): build cat-kernels for the GPU that is present, run the CUDA tests (which compare every
# CUDA op with the CPU op and a float64 reference; the v2 and the legacy gemm kernels), the CPU
# tests, compute-sanitizer memcheck on the odd-shape matrix, and the HBM gemm benchmark against
# cuBLAS fp16. E2E=1 adds the cat-core runtime on the GPU and cat-bench's decode table (minutes
# more). Everything it prints is also written under $OUT, ready to be committed under
# benchmarks/results/<date>-<gpu>/ by the session that ran it.
# The device tool returns at most 8 files from $OUT, so the logs are written to a work folder and
# $OUT receives gpu_check.tar.gz (all of them, re-packed after every step, so a run cut short
# still returns what it finished) plus env.txt and the CUDA test log for a first look.
#   usage (device tool): bash tools/gpu_check.sh      (timeout_s 600)
#   env: SKIP_BENCH=1 (no benchmark), E2E=1 (cat-core/cat-bench step), BENCH_PRESET=1b|8b (model
#        of the decode table), PYTEST_ARGS=..., SANITIZE=1 (racecheck too),
#        SANITIZE_TIMEOUT=150 (seconds per sanitizer tool)
# The device image has its own python3 with torch, nanobind, scikit-build-core, cmake and ninja;
# nothing can be installed there, hence --no-build-isolation.
set -uo pipefail
cd "$(dirname "$0")/.."
FINAL=${OUT:-/tmp/cat-gpu-out}
OUT=$(mktemp -d /tmp/cat-gpu-work.XXXXXX)
mkdir -p "$FINAL"
pack() {
  tar czf "$FINAL/gpu_check.tar.gz.part" -C "$OUT" . 2>/dev/null && mv "$FINAL/gpu_check.tar.gz.part" "$FINAL/gpu_check.tar.gz"
  for f in env.txt cuda-tests.log; do [ -f "$OUT/$f" ] && cp "$OUT/$f" "$FINAL/"; done
  return 0
}
trap pack EXIT
trap 'pack; exit 124' TERM INT
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
# CUDA tests, v2 (the default): the whole file; its v2-era tests run both kernel sets themselves.
$PY -m pytest tests/test_cuda.py -v -p no:cacheprovider ${PYTEST_ARGS:-} > "$OUT/cuda-tests.log" 2>&1 || status=1
tail -15 "$OUT/cuda-tests.log"
pack
# the older gemm tests once more on the legacy kernels (CAT_KERNELS_CUDA_IMPL=legacy)
CAT_KERNELS_CUDA_IMPL=legacy $PY -m pytest tests/test_cuda.py -q -p no:cacheprovider \
    -k "test_gemm_matches_cpu_and_reference or test_gemm_shapes or test_gemm_unaligned_views or test_gemm_deterministic or test_gemm_cuda_graph_capture or test_packed_weight" \
    > "$OUT/cuda-tests-legacy.log" 2>&1 || status=1
echo "legacy: $(tail -1 "$OUT/cuda-tests-legacy.log")" | tee -a "$OUT/env.txt"
pack
$PY -m pytest tests -q -p no:cacheprovider --deselect tests/test_cuda.py > "$OUT/cpu-tests.log" 2>&1 || status=1
tail -3 "$OUT/cpu-tests.log"
pack

# compute-sanitizer memcheck on the odd-shape matrix, always on the first runs of new kernels:
# odd N/K/M, split-K with uneven chunks, unaligned views, the zero-point stream.
# without torch's caching allocator every tensor is its own cudaMalloc, so memcheck sees the
# true end of each array rather than of a pooled block. SANITIZE=1 adds racecheck.
subset="test_gemm_odd_shapes_split_k or test_gemm_shapes or test_gemm_unaligned_views or test_pack_unpack_zeros"
tools=(memcheck)
if [ "${SANITIZE:-0}" = "1" ]; then tools+=(racecheck); fi
for tool in "${tools[@]}"; do
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${SANITIZE_TIMEOUT:-150}" compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 \
      $PY -m pytest tests/test_cuda.py -q -x -p no:cacheprovider -k "$subset" \
      > "$OUT/sanitize-$tool.log" 2>&1 || status=1
  echo "compute-sanitizer $tool: $(grep -E 'ERROR SUMMARY|passed|failed' "$OUT/sanitize-$tool.log" | tr '\n' ' ')" | tee -a "$OUT/env.txt"
  pack
done

if [ "${SKIP_BENCH:-0}" != "1" ]; then
  # HBM-bound gemm vs cuBLAS fp16 (benchmarks/test_bench_cuda.py: weights rotated past L2,
  # CUDA graphs, CUDA events, output checks, the device's copy bandwidth)
  CAT_BENCH_JSON="$OUT/cuda-bench.json" $PY -m pytest benchmarks/test_bench_cuda.py -p no:cacheprovider -s -q \
      > "$OUT/cuda-bench.log" 2>&1 || status=1
  tail -60 "$OUT/cuda-bench.log"
  pack
fi
cd ../..

if [ "${E2E:-0}" = "1" ]; then
  # cat-core and cat-apps are pure Python: run them from the checkout on the image's torch and
  # transformers.
  export PYTHONPATH=$PWD/packages/cat-core/src:$PWD/packages/cat-apps/src:$PYTHONPATH
  $PY -m pytest packages/cat-core/tests/test_cuda_runtime.py packages/cat-core/tests/test_awq_devices.py -v -p no:cacheprovider \
      > "$OUT/core-cuda-tests.log" 2>&1 || status=1
  tail -8 "$OUT/core-cuda-tests.log"
  pack
  preset=${BENCH_PRESET:-1b}
  $PY benchmarks/random_llama.py --preset "$preset" --out "/tmp/llama-$preset-random" > "$OUT/cat-bench.log" 2>&1 \
    && $PY -m cat_apps.bench "/tmp/llama-$preset-random" --device cuda --bits 4 3 --batch-sizes 1 10 \
         --prompt-len 128 --new-tokens 64 --out "$OUT/cat-bench" >> "$OUT/cat-bench.log" 2>&1 || status=1
  tail -12 "$OUT/cat-bench.log"
fi
exit $status
