#!/bin/bash
# issue #28 (session 21): the 1b preset at batch 1 after the pool/gating/attention changes (HEAD e48aa0b, same kernels as 6a37034)
cd /work/main
flock /tmp/cat-heavy.lock .venv/bin/python benchmarks/random_llama.py --preset 1b --out /tmp/r1b
D=benchmarks/results/decode_2026-12-07/session21/cat_bench_1b_batch1
flock /tmp/cat-heavy.lock .venv/bin/cat-bench /tmp/r1b --bits 4 --group-size 128 --batch-sizes 1 --new-tokens 16 --activations both --out $D > $D/log 2>&1
