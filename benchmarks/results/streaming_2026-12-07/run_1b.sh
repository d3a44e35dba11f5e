#!/bin/bash
# 1b preset: streaming (HEAD) vs in-memory (a9f5ffb) at 4x128 self; CI rehearsal; 32x512 text streaming
cd /work/main
source .venv/bin/activate
OLD="env PYTHONPATH=/tmp/wt-old/packages/cat-core/src:/tmp/wt-old/packages/cat-apps/src"
NEW="env PYTHONPATH=/tmp/wt-head/packages/cat-core/src:/tmp/wt-head/packages/cat-apps/src"
COMMON="--bits 4 --rounding nearest --no-quality"
run() { # name, then command
  local name=$1; shift
  rm -rf /tmp/$name; echo "== $name $(date -u +%T)"
  /usr/bin/time -v "$@" --out /tmp/$name > /tmp/$name.log 2>&1
  echo "rc=$? $(date -u +%T)"; grep -E "Maximum resident|Elapsed" /tmp/$name.log
  grep -E "^  time|peak memory" /tmp/$name.log
}
run q1b_s4 $NEW python -m cat_apps.quantize /tmp/r1b $COMMON --n-samples 4 --seqlen 128 --max-memory 3GB
run q1b_m4 $OLD python -m cat_apps.quantize /tmp/r1b $COMMON --n-samples 4 --seqlen 128
python /tmp/cmp.py /tmp/q1b_s4 /tmp/q1b_m4
echo "== CI rehearsal $(date -u +%T)"
rm -rf /tmp/ci14 && mkdir -p /tmp/ci14 && git clone -q /work/main /tmp/ci14/main && cp -r /work/shared /tmp/ci14/shared && chmod -R a-w /tmp/ci14/shared
(cd /tmp/ci14/main && git log --oneline -1 && env -u VIRTUAL_ENV PATH=/root/.cargo/bin:/root/.cargo/bin:/root/.pyenv/plugins/pyenv-virtualenv/shims:/root/.pyenv/shims:/root/.pyenv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin CI=true bash .ci/run > /tmp/ci14.log 2>&1; echo "CI rc=$? $(date -u +%T)")
tail -5 /tmp/ci14.log
run q1b_s32 $NEW python -m cat_apps.quantize /tmp/r1b $COMMON --n-samples 32 --seqlen 512 --calib /tmp/words.txt --max-memory 3GB
