#!/usr/bin/env bash
# Probe behind benchmarks/regression/conftest.py's GOMP_SPINCOUNT setting: (1) a 4096x11008
# 4-bit M=1 kernel call timed right after torch's fp32 matmul, 40 rounds, in fresh processes,
# at libgomp's default spin and at GOMP_SPINCOUNT=10000; (2) SmolLM2 decode (cat-bench, batch 1
# and 10) at the default, GOMP_SPINCOUNT=10000 and OMP_WAIT_POLICY=PASSIVE.
#   bash benchmarks/probes/omp_spin.sh > benchmarks/results/omp_spin_<date>.txt
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
probe='
import statistics, time, numpy as np, torch, cat_kernels as ck
n, k, bits, G = 4096, 11008, 4, 128
rng = np.random.default_rng(0)
pw = ck.PackedWeight(torch.from_numpy(ck.pack(rng.integers(0, 16, (n, k), dtype=np.uint8), bits)),
                     torch.from_numpy((rng.random((n, k // G), dtype=np.float32) * 0.01).astype(np.float16)),
                     torch.from_numpy(ck.pack_zeros(rng.integers(0, 16, (n, k // G), dtype=np.uint8), bits)), G)
x, w, out, d = torch.randn(1, k), torch.randn(n, k), torch.empty(1, n), torch.empty(1, n)
b, s = [], []
for r in range(42):
    t = time.perf_counter(); torch.matmul(x, w.T, out=d); b.append(time.perf_counter() - t)
    t = time.perf_counter(); pw.gemm(x, out=out); s.append(time.perf_counter() - t)
b, s = b[2:], s[2:]
print(f"fp32 matmul {1e3*statistics.median(b):.2f} ms, kernel {1e3*statistics.median(s):.2f} ms, ratio {statistics.median(b)/statistics.median(s):.2f}")
'
echo "date: $(date -u +%FT%TZ); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
for env in "GOMP_DEFAULT=1" "GOMP_SPINCOUNT=10000"; do
  echo "== kernel after matmul, $env (one line per process)"
  for i in 1 2 3 4 5 6; do env $env $PY -c "$probe"; done
done
for env in "GOMP_DEFAULT=1" "GOMP_SPINCOUNT=10000" "OMP_WAIT_POLICY=PASSIVE"; do
  echo "== SmolLM2 cat-bench, $env: weights batch prefill-tok/s decode-tok/s"
  env $env .venv/bin/cat-bench builtin:smollm2 --bits 4 --batch-sizes 1 10 --prompt-len 64 --new-tokens 24 --quiet 2>/dev/null \
    | awk -F'|' '/^\| builtin/ {print $3, $5, $8, $9}'
done
