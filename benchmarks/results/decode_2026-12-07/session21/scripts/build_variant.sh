#!/bin/bash
# usage: build_variant.sh NAME  -- builds the current working tree's cat-kernels into /tmp/s21/ck_NAME
set -e
cd /work/main
rm -rf /tmp/s21/ck_$1
CAT_KERNELS_CUDA=OFF flock /tmp/cat-heavy.lock .venv/bin/pip install -q --no-deps --no-build-isolation --target /tmp/s21/ck_$1 -Cbuild-dir=/tmp/s21/ckb_$1 ./packages/cat-kernels 2>&1 | grep -v "^$" | tail -3
echo built $1
