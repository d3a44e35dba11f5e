#!/usr/bin/env bash
# The transformers engine tier's own environment: torch 2.13.0 (CPU), transformers 5 and
# GPTQModel 7.6, which load our AWQ and GPTQ exports (tests/engines/). Kept apart from the
# project's venv so that GPTQModel's dependencies never change what the main tests run on.
#
#   tools/setup_engines_hf.sh [VENV]        (default: .venv-engines-hf at the repository root)
#
# torch is installed first and pinned by a constraints file, so no later requirement can swap it
# for a CUDA build from PyPI (nothing here asks for torchvision/torchaudio). GPTQModel 7.6 is a
# pure-Python source distribution (its kernels compile on first use, where a GPU is present); on
# CPU it runs its torch kernels. GPTQModel 7.7 needs a newer torch than 2.13.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-$ROOT/.venv-engines-hf}
PY=${PYTHON:-python3}

cons=$(mktemp)
trap 'rm -f "$cons"' EXIT
cat >"$cons" <<'EOF'
torch==2.13.0
transformers>=5.0,<6
gptqmodel==7.6.0
EOF

"$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q -c "$cons")
"${pip[@]}" torch==2.13.0
"${pip[@]}" "transformers>=5.0,<6" accelerate safetensors tokenizers numpy setuptools wheel packaging
"${pip[@]}" gptqmodel==7.6.0
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
assert torch.__version__.startswith("2.13.0") and torch.version.cuda is None, torch.__version__
print({p: md.version(p) for p in ("torch", "transformers", "gptqmodel")})
EOF
