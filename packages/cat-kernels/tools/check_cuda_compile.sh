#!/usr/bin/env bash
# Compiles every csrc/cuda/*.cu of cat-kernels with nvcc for all target architectures, into a
# throwaway directory, and reports the wall time per file and in total. No GPU needed.
#
#   tools/check_cuda_compile.sh                 # all archs (the CI set)
#   ARCHS="90" tools/check_cuda_compile.sh      # one arch while iterating
#   JOBS=2 tools/check_cuda_compile.sh          # files compiled in parallel (default 1)
#   NVCC=/usr/local/cuda/bin/nvcc OUT=/tmp/x tools/check_cuda_compile.sh
#
# Archs: sm_75 (Turing), 80 (A100), 86 (RTX 30), 89 (L4/RTX 40), 90 (H100), 100 (B200; its
# code also runs on B300's sm_103), 120 (RTX 50 / Blackwell client) as SASS, plus compute_90
# PTX, which every GPU from Hopper on can JIT (compute_120 PTX would not load on sm_100/110).
# nvcc 13 has dropped everything below sm_75. Keep in step with CMakeLists.txt.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NVCC="${NVCC:-nvcc}"
ARCHS="${ARCHS:-75 80 86 89 90 100 120}"
PTX_ARCH="${PTX_ARCH-90}"
OUT="${OUT:-$(mktemp -d /tmp/cat_cuda_compile.XXXXXX)}"
JOBS="${JOBS:-1}"
mkdir -p "$OUT"

gencode=()
for a in $ARCHS; do gencode+=("-gencode=arch=compute_${a},code=sm_${a}"); done
if [[ -n "$PTX_ARCH" ]]; then gencode+=("-gencode=arch=compute_${PTX_ARCH},code=compute_${PTX_ARCH}"); fi

flags=(-std=c++17 -O3 -I"$here/csrc/include" -Xcompiler=-fPIC
       -Werror=all-warnings "${gencode[@]}")
echo "nvcc: $("$NVCC" --version | tail -n 2 | head -n 1)"
echo "archs: $ARCHS${PTX_ARCH:+ (+ PTX compute_$PTX_ARCH)}, out: $OUT"

start=$(date +%s.%N)
compile() {
  local f="$1" b t0 t1
  b="$(basename "$f" .cu)"
  t0=$(date +%s.%N)
  "$NVCC" "${flags[@]}" -c "$f" -o "$OUT/$b.o"
  t1=$(date +%s.%N)
  printf '  %-16s %6.1f s\n' "$b.cu" "$(echo "$t1 - $t0" | bc)"
}
export -f compile
export NVCC OUT
fail=0
if [[ "$JOBS" -gt 1 ]]; then
  printf '%s\n' "$here"/csrc/cuda/*.cu | xargs -P "$JOBS" -I{} bash -c "$(declare -p flags); compile {}" || fail=1
else
  for f in "$here"/csrc/cuda/*.cu; do compile "$f" || fail=1; done
fi
end=$(date +%s.%N)
printf 'total wall time: %.1f s\n' "$(echo "$end - $start" | bc)"
exit $fail
