#!/bin/bash
# issue #28 (session 21): llama.cpp and Caterpillar side by side; usage: run_vs_llamacpp.sh NAME
# (writes NAME.md and NAME.log here). after_silu_attn_run1/2: at 5943a2f (per-thread pool ranges,
# gate/up gating inside the job, per-query-head attention items), two runs minutes apart.
cd /work/main
L=benchmarks/results/decode_2026-12-07/session21
.venv/bin/python benchmarks/decode_vs_llamacpp.py --threads 2 --out $L/$1.md > $L/$1.log 2>&1
