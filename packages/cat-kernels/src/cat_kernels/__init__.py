"""cat-kernels: low-bit (2/3/4/8-bit) weight kernels for Caterpillar.

Weights are stored in the packed format of docs/format.md. The operations accept numpy arrays
(CPU) and torch / cupy arrays or any DLPack producer (CPU or CUDA) without copying, and return
results in the framework and on the device of their input:

- :func:`pack` / :func:`unpack`: integer codes <-> packed int32 words;
- :func:`pack_zeros` / :func:`unpack_zeros`: the same for the zero points (their own, denser
  layout);
- :func:`dequantize`: packed weights -> dense ``[N, K]`` matrix;
- :func:`gemm`: ``x @ W.T`` straight from the packed weights;
- :class:`PackedWeight`: a weight validated once for repeated ``gemm``/``dequantize`` calls
  (the per-call path of a model's layers: only ``x`` is checked);
- :func:`build_info`, :func:`cuda_available`: what this build can do.

Environment: ``CAT_KERNELS_NUM_THREADS`` (CPU threads, default: the CPUs this process may use),
``CAT_KERNELS_ISA`` (force the CPU kernel path: ``scalar``, ``avx2`` or ``avx512``).
"""

from __future__ import annotations

from typing import Any

from . import _C
from ._api import dequantize, gemm, pack, pack_zeros, unpack, unpack_zeros
from ._weight import PackedWeight

__version__ = "0.2.1"

__all__ = [
    "pack",
    "unpack",
    "pack_zeros",
    "unpack_zeros",
    "dequantize",
    "gemm",
    "PackedWeight",
    "build_info",
    "cuda_available",
    "__version__",
]


def build_info() -> dict[str, Any]:
    """Describe this build and the machine it runs on.

    Returns:
        dict with keys ``version`` (str), ``cuda`` (bool: built with CUDA), ``cuda_archs``
        (list[str], e.g. ``["75-real", ..., "120-real", "90-virtual"]``; empty without CUDA),
        ``cuda_available`` (bool: CUDA built and a device visible), ``cpu_isa`` (str: the CPU
        kernel path in use, ``"scalar"``, ``"avx2"`` or ``"avx512"``), ``cpu_isas`` (list[str]:
        paths this CPU supports) and ``num_threads`` (int: CPU threads used).

    Raises:
        ValueError / RuntimeError: ``CAT_KERNELS_ISA`` names an unknown or unsupported path.
    """
    archs = [a for a in str(_C._cuda_archs).split(",") if a]
    return {
        "version": str(_C._version),
        "cuda": bool(_C._cuda_built),
        "cuda_archs": archs,
        "cuda_available": cuda_available(),
        "cpu_isa": _C._isa(),
        "cpu_isas": list(_C._available_isas()),
        "num_threads": int(_C._num_threads()),
    }


def cuda_available() -> bool:
    """True when this build has the CUDA kernels and a CUDA device is visible."""
    return bool(_C._cuda_available())
