"""Building and driving the host emulator of the v2 CUDA kernels (tests/emulator/).

The emulator is compiled with the host C++ compiler against the kernels' own headers
(csrc/cuda/decode.h, gemv_arith.h, tiled_v2_math.h) and runs their data flow without a GPU; the
tests compare what it computes with float64 references written from docs/format.md. numpy only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent / "csrc"
SOURCES = sorted((HERE / "emulator").glob("*.cpp"))

SCALE_DTYPES = ("float32", "float16", "bfloat16")  # the header's scale_dtype codes 0, 1, 2


def cxx() -> str | None:
    for c in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def build(out_dir: Path, csrc: Path = CSRC) -> Path:
    """Compiles the emulator against the headers under `csrc` (a mutated copy in the mutation
    tests); raises with the compiler's message when that fails."""
    compiler = cxx()
    if compiler is None:
        raise RuntimeError("no host C++ compiler (c++, g++ or clang++) for the kernel emulator")
    exe = out_dir / "emulate"
    flags = ["-std=c++17", "-O1", "-Wall", "-Werror", f"-I{csrc}"]
    r = subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", str(exe)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"building the emulator failed:\n{r.stderr[-4000:]}")
    return exe


def run(exe: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)


def bf16_bits(x32: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bfloat16 bit patterns (round to nearest even)."""
    u = np.ascontiguousarray(x32, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bits16(x32: np.ndarray, bf16: bool) -> np.ndarray:
    """float32 -> uint16 bit patterns of float16 / bfloat16 (round to nearest even)."""
    if bf16:
        return bf16_bits(x32)
    return np.asarray(x32, np.float32).astype(np.float16).view(np.uint16)


def value16(b: np.ndarray, bf16: bool) -> np.ndarray:
    """uint16 bit patterns -> their float64 values."""
    if not bf16:
        return b.view(np.float16).astype(np.float64)
    return (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def scale_storage(s: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Scales rounded to `dtype`: (their raw bits as uint32, their float64 values)."""
    s32 = np.asarray(s, np.float32)
    if dtype == "float32":
        return s32.view(np.uint32).copy(), s32.astype(np.float64)
    b = bits16(s32, dtype == "bfloat16")
    return b.astype(np.uint32), value16(b, dtype == "bfloat16")


def write_problem(path: Path, *, bits: int, bf16: bool, x_bits: np.ndarray, packed,
                  scale_raw: np.ndarray, scale_dtype: str, zeros, group_size: int, k: int,
                  x_vec_ok: bool = True, aligned16: bool = True) -> None:
    """The problem file of tests/emulator/model.h. group_size resolved (K for a whole row)."""
    m = x_bits.shape[0]
    n, ng = scale_raw.shape
    h = np.zeros(16, np.int64)
    h[:11] = [bits, bf16, m, n, k, group_size, ng, zeros is not None,
              SCALE_DTYPES.index(scale_dtype), x_vec_ok, aligned16]
    with open(path, "wb") as f:
        f.write(h.tobytes())
        f.write(np.ascontiguousarray(x_bits, np.uint16).tobytes())
        f.write(np.ascontiguousarray(packed, np.int32).tobytes())
        f.write(np.ascontiguousarray(scale_raw, np.uint32).tobytes())
        if zeros is not None:
            f.write(np.ascontiguousarray(zeros, np.int32).tobytes())
