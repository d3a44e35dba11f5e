"""llama.cpp's command-line tools as the benchmark tier builds them (``tools/build_llamacpp.sh``
puts them in ``.llamacpp/bin``): locating, running and requantizing, shared by the scripts that
judge Caterpillar against llama.cpp."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".llamacpp" / "bin"


def require(*tools: str) -> None:
    """Exit with the build command when any of ``tools`` is not built."""
    for tool in tools:
        if not (BIN / tool).is_file():
            sys.exit(f"{BIN / tool} not found: build llama.cpp first (bash tools/build_llamacpp.sh)")


def version() -> str:
    """The llama-cpp-python release whose vendored llama.cpp was built."""
    return (REPO / ".llamacpp" / "VERSION").read_text().strip()


def run(cmd: list[str], stdout_only: bool = False) -> tuple[str, float]:
    """``(output, seconds)`` of a command that must succeed (else exit with its stderr's tail);
    the output is stdout and stderr, or stdout alone."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return (p.stdout if stdout_only else p.stdout + "\n" + p.stderr), time.perf_counter() - t0


def run_or_fallback(cmd: list[str], fallback: list[str], stdout_only: bool = False) -> tuple[str, float, bool]:
    """``(output, seconds, fell_back)``: ``cmd``'s, or, when it dies of a signal, ``fallback``'s
    (which must succeed). This build's repacked weights (its AMX path on Sapphire Rapids) crash on
    batched prompts (SIGSEGV in ggml_backend_amx_mul_mat, 2026-12-07, llama-cpp-python 0.3.36):
    the callers fall back to the tools without repacking and say so. Any other failure exits."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode < 0:
        out, secs = run(fallback, stdout_only)
        return out, secs, True
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return (p.stdout if stdout_only else p.stdout + "\n" + p.stderr), time.perf_counter() - t0, False


def requantize(src: Path, dst: Path, typ: str, threads: int, *options: str) -> Path:
    """``llama-quantize --allow-requantize [options] src dst typ threads``; returns ``dst``."""
    run([str(BIN / "llama-quantize"), "--allow-requantize", *options, str(src), str(dst), typ, str(threads)])
    return dst
