"""The engine tier: real serving engines load our checkpoints. Opt-in (`-m engines`); each engine
runs in its own venv, found here or skipped with the command that creates it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def hf_engine_python() -> Path:
    """The python of the transformers + GPTQModel venv (CAT_ENGINES_HF_VENV or .venv-engines-hf)."""
    venv = Path(os.environ.get("CAT_ENGINES_HF_VENV", ROOT / ".venv-engines-hf"))
    py = venv / "bin" / "python"
    if not py.is_file():
        pytest.skip(f"no engine venv at {venv}: create it with tools/setup_engines_hf.sh")
    return py
