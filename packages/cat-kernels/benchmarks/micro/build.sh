#!/bin/bash
# Builds gemm_micro (a standalone C++ timing loop around cat::cpu::gemm, no Python) from a
# csrc/cpu tree, with the same per-file ISA flags as CMakeLists.txt.
#   build.sh OUT [CPU_DIR]      (CPU_DIR defaults to this checkout's csrc/cpu)
# Run: OUT N K BITS M [THREADS=1] [GROUP=128] [SECONDS=0.2]; NOREF=1 skips the float64 check.
# To compare two versions, build both (e.g. CPU_DIR of a `git worktree` at the old commit) and
# alternate them with ab.sh: on a shared machine only interleaved minima are comparable.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$1
S=${2:-$HERE/../../csrc/cpu}
mkdir -p "$OUT.d"
F="-O3 -std=c++17 -I$S/../include -I$S/.. -I$S -DCAT_KERNELS_X86 -fPIC"
for f in threadpool isa pack dequantize gemm kernels_scalar; do nice -n 5 g++ $F -c "$S/$f.cpp" -o "$OUT.d/$f.o" & done
nice -n 5 g++ $F -mavx2 -mfma -mf16c -c "$S/kernels_avx2.cpp" -o "$OUT.d/kernels_avx2.o" &
nice -n 5 g++ $F -mavx512f -mavx512bw -mavx512vl -mavx2 -mfma -mf16c -c "$S/kernels_avx512.cpp" -o "$OUT.d/kernels_avx512.o" &
nice -n 5 g++ $F -c "$HERE/gemm_micro.cpp" -o "$OUT.d/gemm_micro.o" &
wait
g++ -O3 "$OUT.d"/*.o -o "$OUT" -lpthread
