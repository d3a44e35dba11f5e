#!/bin/bash
# the llama.cpp rows (output: llamacpp_quality.log, rows in ../llamacpp_quality_2026-12-07.json)
cd /work/main
flock /tmp/cat-heavy.lock .venv/bin/python benchmarks/llamacpp_quality.py --model smollm2 --calib lee-background --eval-text wikitext2-test licenses --out /tmp/s17/llamacpp_quality.md
