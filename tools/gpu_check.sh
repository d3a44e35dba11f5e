#!/usr/bin/env bash
# One call on a lent GPU machine (device tool), sized for a 15-minute lease: build cat-kernels for
# the GPU that is present, then, most valuable first, each step under its own time limit and all
# of them inside DEADLINE seconds (a step that no longer fits is skipped and says so):
#   1. CUDA tests (every CUDA op against the CPU op and a float64 reference; v2 and legacy kernels)
#   2. the HBM gemm benchmark against cuBLAS fp16
#   3. cat-core on the GPU (QuantLinear paths, tiny models in fp16/bf16, generate, CUDA graphs,
#      torch.compile, AWQ on the device)
#   4. cat-bench's decode table on a random-weight Llama (unquantized fp16 vs 4- and 3-bit)
#   5. compute-sanitizer memcheck on the odd-shape matrix (racecheck too with SANITIZE=1)
#   6. the older gemm tests once more on the legacy kernels
# Everything it prints is also written under $OUT, to be committed under
# benchmarks/results/<date>-<gpu>/ by the session that ran it. The device tool returns at most 8
# files, so logs go to a work folder and $OUT receives gpu_check.tar.gz (re-packed after every
# step, so a run cut short still returns what it finished) plus env.txt, summary.txt and the
# CUDA test log for a first look.
#   usage (device tool): bash tools/gpu_check.sh      (timeout_s 600)
#   env: DEADLINE=540 (seconds for the whole script), STEPS="cuda bench core catbench memcheck
#        legacy" (which steps, in order; add "stream" for the block-by-block GPU memory test), BENCH_PRESET=1b|8b (model of the decode table),
#        PYTEST_ARGS=..., SANITIZE=1 (racecheck too), CPU_TESTS=1 (the CPU kernel tests too:
#        CI runs them, so they are off by default)
# The device image has its own python3 with torch, nanobind, scikit-build-core, cmake and ninja;
# nothing can be installed there, hence --no-build-isolation.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
DEADLINE=${DEADLINE:-540}
FINAL=${OUT:-/tmp/cat-gpu-out}
OUT=$(mktemp -d /tmp/cat-gpu-work.XXXXXX)
mkdir -p "$FINAL"
pack() {
  tar czf "$FINAL/gpu_check.tar.gz.part" -C "$OUT" . 2>/dev/null && mv "$FINAL/gpu_check.tar.gz.part" "$FINAL/gpu_check.tar.gz"
  for f in env.txt summary.txt cuda-tests.log; do [ -f "$OUT/$f" ] && cp "$OUT/$f" "$FINAL/"; done
  return 0
}
trap pack EXIT
trap 'pack; exit 124' TERM INT
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
[[ $PY == */* ]] && PY=$(realpath -s "$PY")  # the steps change directory
STEPS=${STEPS:-cuda bench core catbench memcheck legacy}
status=0

left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
# step NAME MAX_SECONDS LOG CMD...: runs CMD (in the current directory) under min(MAX, time left),
# logs to $OUT/LOG, records "NAME: rc, seconds" in summary.txt
step() {
  local name=$1 max=$2 log=$3; shift 3
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  local budget; budget=$(left)
  if [ "$budget" -lt 30 ]; then
    echo "$name: skipped (${budget} s left of DEADLINE=$DEADLINE)" | tee -a "$OUT/summary.txt"; return 0
  fi
  [ "$budget" -gt "$max" ] && budget=$max
  local s; s=$(date +%s)
  # bash -c: the command may be one of the functions below (exported), which timeout cannot run
  timeout -k 5 "$budget" bash -c '"$@"' _ "$@" > "$OUT/$log" 2>&1
  local rc=$?
  [ $rc -ne 0 ] && status=1
  local note=""; [ $rc -eq 124 ] && note=" (timed out at ${budget} s)"
  echo "$name: rc=$rc, $(( $(date +%s) - s )) s$note; $(grep -E '(passed|failed|error|skipped)' "$OUT/$log" | tail -1)" \
    | tee -a "$OUT/summary.txt"
  pack
}

{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,temperature.gpu,power.draw --format=csv
  nvcc --version | tail -1
  $PY -c "import sys, torch, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__, torch.version.cuda, '| transformers', transformers.__version__, '|', torch.cuda.get_device_name())"
  nproc
} 2>&1 | tee "$OUT/env.txt"

cap=${CAP:-$($PY -c "import torch; a, b = torch.cuda.get_device_capability(); print(f'{a}{b}')")}
t0=$(date +%s)
# Real code for this GPU only: the full six-generation build is CI's job, not the lease's.
# The build folder survives on a warm machine, so a second call rebuilds nothing.
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) $PY -m pip install -q --no-build-isolation --no-deps --upgrade \
    --target /tmp/cat-kernels-site -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="${cap}-real" \
    -Cbuild-dir=/tmp/cat-kernels-build ./packages/cat-kernels > "$OUT/build.log" 2>&1 \
    || { tail -50 "$OUT/build.log"; echo "build: FAILED" >> "$OUT/summary.txt"; exit 1; }
echo "build for sm_${cap}: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/env.txt" "$OUT/summary.txt"
export PYTHONPATH=/tmp/cat-kernels-site${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import cat_kernels, json; print(json.dumps(cat_kernels.build_info()))" 2>&1 | tee -a "$OUT/env.txt"
pack

cd "$ROOT/packages/cat-kernels"
# 1. CUDA tests, v2 (the default): the whole file; its v2-era tests run both kernel sets themselves.
step cuda 200 cuda-tests.log $PY -m pytest tests/test_cuda.py -q -rfE -p no:cacheprovider ${PYTEST_ARGS:-}
tail -25 "$OUT/cuda-tests.log" 2>/dev/null

# 2. HBM-bound gemm vs cuBLAS fp16 (benchmarks/test_bench_cuda.py: weights rotated past L2,
# CUDA graphs, CUDA events, output checks, the device's copy bandwidth)
CAT_BENCH_JSON="$OUT/cuda-bench.json" step bench 150 cuda-bench.log \
    $PY -m pytest benchmarks/test_bench_cuda.py -p no:cacheprovider -s -q
grep -A200 "CUDA gemm from HBM" "$OUT/cuda-bench.log" | head -120

# 3. cat-core and cat-apps are pure Python: run them from the checkout on the image's torch and
# transformers.
cd "$ROOT"
export PYTHONPATH=$ROOT/packages/cat-core/src:$ROOT/packages/cat-apps/src:$PYTHONPATH
step core 150 core-cuda-tests.log $PY -m pytest packages/cat-core/tests/test_cuda_runtime.py \
    packages/cat-core/tests/test_awq_devices.py -q -rfE -p no:cacheprovider
tail -15 "$OUT/core-cuda-tests.log" 2>/dev/null
# 3b. (STEPS="... stream") a model read block by block keeps one block on the GPU (issue #27)
step stream 120 stream-cuda-tests.log $PY -m pytest packages/cat-core/tests/test_stream.py -q -rfE -p no:cacheprovider \
    -k cuda

# 4. decode speed in transformers, batch 1 and 16 (issue #28): unquantized fp16 vs RTN 4- and 3-bit (same kernels and memory
# as an AWQ checkpoint) on random Llama weights of a public model's shapes
preset=${BENCH_PRESET:-1b}
catbench() {
  $PY benchmarks/random_llama.py --preset "$preset" --out "/tmp/llama-$preset-random" \
    && $PY -m cat_apps.bench "/tmp/llama-$preset-random" --device cuda --bits 4 3 --batch-sizes 1 16 \
         --prompt-len 128 --new-tokens 64 --out "$OUT/cat-bench"
}
export -f catbench; export PY OUT preset
step catbench 200 cat-bench.log catbench
tail -14 "$OUT/cat-bench.log" 2>/dev/null

# 5. compute-sanitizer on the odd-shape matrix, always on the first runs of new kernels: odd
# N/K/M, split-K with uneven chunks, unaligned views, the zero-point stream, a captured split-K
# GEMV (the v2 GEMV's per-tile counters across graph replays). Without torch's
# caching allocator every tensor is its own cudaMalloc, so memcheck sees the true end of each
# array rather than of a pooled block.
cd "$ROOT/packages/cat-kernels"
subset="test_gemm_odd_shapes_split_k or test_gemm_shapes or test_gemm_unaligned_views or test_pack_unpack_zeros or test_gemm_cuda_graph_capture_split_k_gemv"
sanitize() {
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$1" --error-exitcode 99 --print-limit 20 \
    $PY -m pytest tests/test_cuda.py -q -x -p no:cacheprovider -k "$subset"
}
export -f sanitize; export subset
step memcheck 150 sanitize-memcheck.log sanitize memcheck
grep -E 'ERROR SUMMARY|passed|failed|Invalid' "$OUT/sanitize-memcheck.log" | head -5
if [ "${SANITIZE:-0}" = "1" ]; then STEPS="$STEPS racecheck"; step racecheck 150 sanitize-racecheck.log sanitize racecheck; fi

# 6. the older gemm tests once more on the legacy kernels
CAT_KERNELS_CUDA_IMPL=legacy step legacy 90 cuda-tests-legacy.log $PY -m pytest tests/test_cuda.py -q -p no:cacheprovider \
    -k "test_gemm_matches_cpu_and_reference or test_gemm_shapes or test_gemm_unaligned_views or test_gemm_deterministic or test_gemm_cuda_graph_capture or test_packed_weight"

if [ "${CPU_TESTS:-0}" = "1" ]; then
  STEPS="$STEPS cpu"; step cpu 200 cpu-tests.log $PY -m pytest tests -q -p no:cacheprovider --deselect tests/test_cuda.py
fi
cd "$ROOT"
echo "---- summary ($(( $(date +%s) - T0 )) s in all)"; cat "$OUT/summary.txt"
exit $status
