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
- :class:`Decoder`: a whole decoder step of a Llama-family model in one call (CPU), over
  PackedWeight linears and a caller-owned KV cache;
- :func:`build_info`, :func:`cuda_available`: what this build can do;
- :func:`cuda_impl` / :func:`set_cuda_impl`: which CUDA gemm kernels run (``"v2"``, the default,
  or ``"legacy"``, selectable until a GPU run has verified v2).

Environment: ``CAT_KERNELS_NUM_THREADS`` (CPU threads, default: the CPUs this process may use),
``CAT_KERNELS_ISA`` (force the CPU kernel path: ``scalar``, ``avx2`` or ``avx512``),
``CAT_KERNELS_CUDA_IMPL`` (``v2`` or ``legacy``: the CUDA gemm kernels; read on first use).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from . import _C
from ._api import dequantize, gemm, pack, pack_zeros, unpack, unpack_zeros
from ._decoder import Decoder
from ._weight import PackedWeight

__version__ = "0.3.0"

__all__ = [
    "pack",
    "unpack",
    "pack_zeros",
    "unpack_zeros",
    "dequantize",
    "gemm",
    "PackedWeight",
    "Decoder",
    "build_info",
    "cuda_available",
    "cuda_impl",
    "set_cuda_impl",
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


CudaImpl = Literal["v2", "legacy"]


def cuda_impl() -> CudaImpl:
    """Which CUDA gemm kernels run: ``"v2"`` (default) or ``"legacy"``.

    Raises:
        ValueError: ``CAT_KERNELS_CUDA_IMPL`` holds something other than ``v2`` / ``legacy``.
    """
    try:
        return _C._cuda_impl()  # type: ignore[no-any-return]
    except ValueError as e:
        raise ValueError(str(e)) from None


def set_cuda_impl(impl: Optional[CudaImpl]) -> None:
    """Select the CUDA gemm kernels for this process.

    Args:
        impl: ``"v2"`` (the kernels of issue 15: tensor-core GEMV for M <= 8), ``"legacy"``
            (the kernels before it, kept selectable until a GPU run has verified v2), or None to
            follow ``CAT_KERNELS_CUDA_IMPL`` again (unset: v2). Both meet the same numeric
            contract (docs/format.md). CPU arrays are unaffected.

    Raises:
        ValueError: any other value.
    """
    if impl is not None and impl not in ("v2", "legacy"):
        raise ValueError(f"impl: expected 'v2', 'legacy' or None, got {impl!r}")
    _C._set_cuda_impl(impl or "")
