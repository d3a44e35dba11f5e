#!/bin/bash
# issue #28 (session 20): llama.cpp and Caterpillar side by side after the pool's guided claims (1fe2671), quiet machine
cd /work/main
L=benchmarks/results/decode_2026-12-07/session20
.venv/bin/python benchmarks/decode_vs_llamacpp.py --threads 2 --out $L/decode_vs_llamacpp_spr.md > $L/decode_vs_llamacpp_spr.log 2>&1
