"""A packed weight checked once and reused: the per-call path of a model's linear layer.

:func:`cat_kernels.gemm` re-validates the weight and exports every array through DLPack on
every call. That is right for a one-off product and far too slow for decoding, where each token
runs hundreds of small GEMVs whose arithmetic takes a few microseconds. :class:`PackedWeight`
validates the weight once, keeps it alive, and per call only looks at ``x`` (and ``out``): a
torch tensor through its attributes, anything else through DLPack.
"""

from __future__ import annotations

import sys
from typing import Any

from . import _C
from ._api import Array, _validate_weight
from ._arrays import _KDL_CUDA, FLOAT_DTYPES, _dtype_name, _empty, _inspect, _stream
from ._checks import _check_contiguous, _check_dtype, _check_ndim

_DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}
# torch dtype object -> kernel dtype code; filled on the first torch call (torch is never
# imported here unless the caller already passed a torch tensor).
_TORCH_CODES: dict[Any, int] = {}


def _torch_codes(torch: Any) -> dict[Any, int]:
    if not _TORCH_CODES:
        _TORCH_CODES.update({torch.float32: 0, torch.float16: 1, torch.bfloat16: 2})
    return _TORCH_CODES


class PackedWeight:
    """``packed``, ``scales`` and ``zeros`` of one weight, validated once, for repeated products.

    Args:
        packed, scales, zeros, group_size, k: as for :func:`cat_kernels.dequantize` (``k`` is
            required when ``group_size == -1``).
        int8_activations: as for :func:`cat_kernels.gemm` (CPU only); also a settable attribute.

    The arrays are referenced, not copied: the object keeps them alive, reads their *current*
    contents on every call (in-place updates are seen), and must be rebuilt if they are replaced
    by other arrays. Results are bit-identical to :func:`cat_kernels.gemm` and
    :func:`cat_kernels.dequantize` on the same arrays.

    Raises:
        ValueError / TypeError: as :func:`cat_kernels.dequantize`, naming the argument.
    """

    __slots__ = ("_w", "_ref", "_info", "_n", "_k", "_bits", "_group_size", "_dev", "_scale_dtype")

    def __init__(self, packed: Array, scales: Any, zeros: Any, group_size: int, *, k: int | None = None,
                 int8_activations: bool = False):
        packed, pi, scales, si, zeros, zi, n, k, gs = _validate_weight(packed, scales, zeros, group_size, k)
        self._w = _C._Weight(packed, scales, zeros, gs, k)
        if int8_activations:
            self._w.int8_activations = True
        self._ref, self._info = packed, pi
        self._n, self._k, self._bits, self._group_size = n, k, int(pi.shape[2]), gs
        self._scale_dtype = si.dtype
        self._dev = (pi.device_type, pi.device_id if pi.device_type == _KDL_CUDA else 0)

    @property
    def n(self) -> int:
        """Output features (rows of W)."""
        return self._n

    @property
    def k(self) -> int:
        """Input features (columns of W)."""
        return self._k

    @property
    def bits(self) -> int:
        return self._bits

    @property
    def group_size(self) -> int:
        """As given (-1: one group per row)."""
        return self._group_size

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda:<id>"``: where the weight lives and where x must be."""
        return self._info.device

    @property
    def int8_activations(self) -> bool:
        """Whether :meth:`gemm` rounds x to int8 first (see :func:`cat_kernels.gemm`); settable,
        CPU weights only."""
        return bool(self._w.int8_activations)

    @int8_activations.setter
    def int8_activations(self, on: bool) -> None:
        self._w.int8_activations = bool(on)

    def __repr__(self) -> str:
        return (f"PackedWeight(n={self._n}, k={self._k}, bits={self._bits}, "
                f"group_size={self._group_size}, device={self.device!r})")

    def gemm(self, x: Array, *, out: Array | None = None) -> Array:
        """``x @ W.T`` for ``x`` ``[M, K]`` (float32, float16 or bfloat16, C-contiguous, on the
        weight's device); same contract as :func:`cat_kernels.gemm`."""
        torch = sys.modules.get("torch")
        if torch is not None and type(x) is torch.Tensor and (out is None or type(out) is torch.Tensor):
            return self._gemm_torch(torch, x, out)
        return self._gemm_dlpack(x, out)

    def dequantize(self, dtype: Any = None) -> Array:
        """The dense ``[N, K]`` weight (default dtype: the scales' dtype), in the framework and on
        the device of ``packed``."""
        name = self._scale_dtype if dtype is None else _dtype_name(dtype)
        if name not in FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32, float16 or bfloat16, got {dtype!r}")
        out = _empty(self._ref, self._info, (self._n, self._k), name, "dequantize")
        self._w.dequantize(out, _stream(self._ref, self._info))
        return out

    def dequantize_rows(self, ids: Array) -> Array:
        """Rows ``ids`` of the dense weight as float32 ``[len(ids), K]``, bit-identical to those
        rows of :meth:`dequantize` in float32: table lookups from a packed weight (an output head
        tied to the input embedding) without dequantizing the table. CPU weights; ``ids`` a 1-D
        integer numpy array or CPU torch tensor (the result is of the same kind).

        Raises:
            IndexError: an id outside ``[0, N)``. ValueError / TypeError: a CUDA weight, or ids
            that are not a 1-D integer array.
        """
        torch = sys.modules.get("torch")
        if torch is not None and type(ids) is torch.Tensor:
            if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.device.type != "cpu":
                raise TypeError(f"ids: expected a 1-D integer CPU tensor, got {ids.dtype} {tuple(ids.shape)} "
                                f"on {ids.device}")
            ids = ids.to(torch.int64).contiguous()
            out = torch.empty((ids.numel(), self._k), dtype=torch.float32)
            self._w.dequantize_rows_ptr(ids.data_ptr(), ids.numel(), out.data_ptr())
            return out
        import numpy as np

        a = np.asarray(ids)
        if a.ndim != 1 or a.dtype.kind not in "iu":
            raise TypeError(f"ids: expected a 1-D integer array, got {a.dtype} {a.shape}")
        a = np.ascontiguousarray(a, dtype=np.int64)
        out = np.empty((a.size, self._k), np.float32)
        self._w.dequantize_rows_ptr(a.ctypes.data, a.size, out.ctypes.data)
        return out

    # ------------------------------------------------------------------ private

    def _device_error(self, got: str) -> ValueError:
        return ValueError(f"x: expected an array on {self.device} (where the weight is), got {got}")

    def _gemm_torch(self, torch: Any, x: Any, out: Any) -> Any:
        code = _torch_codes(torch).get(x.dtype)
        if code is None:
            raise TypeError(f"x: expected dtype float32, float16 or bfloat16, got {x.dtype}")
        if x.dim() != 2:
            raise ValueError(f"x: expected a 2-D array [M, K], got shape {tuple(x.shape)}")
        m, k = x.shape
        if k != self._k:
            raise ValueError(f"x: expected shape [M, {self._k}] (K of the weight), got {tuple(x.shape)}")
        if not x.is_contiguous():
            raise ValueError("x: must be C-contiguous (call .contiguous())")
        dev = x.device
        if dev.type == "cpu":
            dt, di = 1, 0
        elif dev.type == "cuda":
            dt, di = _KDL_CUDA, dev.index
        else:
            raise self._device_error(str(dev))
        if (dt, di) != self._dev:
            raise self._device_error(str(dev))
        if out is None:
            out = torch.empty((m, self._n), dtype=x.dtype, device=dev)
        else:
            if tuple(out.shape) != (m, self._n):
                raise ValueError(f"out: expected shape {(m, self._n)}, got {tuple(out.shape)}")
            if out.dtype != x.dtype:
                raise TypeError(f"out: expected dtype {x.dtype} (the dtype of x), got {out.dtype}")
            if not out.is_contiguous():
                raise ValueError("out: must be C-contiguous")
            if out.device != dev:
                raise ValueError(f"out: expected an array on {dev} (the device of x), got {out.device}")
        ws = ws_elems = stream = 0
        if dt == _KDL_CUDA and m > 0:
            stream = int(torch.cuda.current_stream(di).cuda_stream)
            ws_elems = self._w.workspace_elems(m)
            if ws_elems:
                workspace = torch.empty(ws_elems, dtype=torch.float32, device=dev)
                ws = workspace.data_ptr()
        self._w.gemm_ptr(x.data_ptr(), m, k, code, dt, di, out.data_ptr(), ws, ws_elems, stream)
        return out

    def _gemm_dlpack(self, x: Any, out: Any) -> Any:
        x, xi = _inspect(x, "x")
        _check_ndim(xi, 2, "x", "[M, K]")
        _check_dtype(xi, FLOAT_DTYPES, "x")
        _check_contiguous(xi, "x")
        m, k = xi.shape
        if k != self._k:
            raise ValueError(f"x: expected shape [M, {self._k}] (K of the weight), got {xi.shape}")
        if (xi.device_type, xi.device_id if xi.device_type == _KDL_CUDA else 0) != self._dev:
            raise self._device_error(xi.device)
        if out is None:
            out = _empty(x, xi, (m, self._n), xi.dtype, "gemm")
        workspace = None
        stream = 0
        if xi.device_type == _KDL_CUDA and m > 0:
            stream = _stream(x, xi)
            elems = self._w.workspace_elems(m)
            if elems > 0:
                workspace = _empty(x, xi, (elems,), "float32", "gemm workspace")
        # out is checked natively (shape, dtype, contiguity, device) with messages naming it.
        self._w.gemm(x, out, workspace, stream)
        return out
