"""Framework plumbing: inspect arrays through DLPack, allocate outputs next to the inputs.

Nothing here imports torch or cupy unless the caller already passed one of their arrays (the
framework is recognised from ``type(array).__module__``), so importing cat_kernels stays cheap.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple, Sequence

from . import _C

_KDL_CPU = 1
_KDL_CUDA = 2

FLOAT_DTYPES = ("float32", "float16", "bfloat16")


class _Info(NamedTuple):
    """What the kernels need to know about one array (read through DLPack)."""

    dtype: str  # "float32", "float16", "bfloat16", "int32", "uint8", ...
    shape: tuple[int, ...]
    contiguous: bool  # C-contiguous
    device_type: int  # DLPack device type: 1 = CPU, 2 = CUDA
    device_id: int
    framework: str  # "numpy", "torch", "cupy" or "other"

    @property
    def device(self) -> str:
        if self.device_type == _KDL_CPU:
            return "cpu"
        if self.device_type == _KDL_CUDA:
            return f"cuda:{self.device_id}"
        return f"dlpack-device({self.device_type}, {self.device_id})"


def _framework(a: Any) -> str:
    mod = type(a).__module__.split(".", 1)[0]
    return mod if mod in ("numpy", "torch", "cupy") else "other"


def _inspect(a: Any, name: str) -> tuple[Any, _Info]:
    """Returns the array to hand to _C (torch tensors that require grad are detached, a view, no
    copy) and its description. Raises TypeError for objects that are not DLPack arrays."""
    fw = _framework(a)
    if fw == "torch" and getattr(a, "requires_grad", False):
        a = a.detach()
    if a is None or isinstance(a, (int, float, bool, str, bytes, list, tuple, dict)):
        raise TypeError(
            f"{name}: expected an array (numpy, torch, cupy or any DLPack producer), "
            f"got {type(a).__name__}"
        )
    try:
        dtype, shape, contiguous, dev_type, dev_id = _C._inspect(a)
    except TypeError:
        raise TypeError(
            f"{name}: expected an array (numpy, torch, cupy or any DLPack producer) with a "
            f"DLPack-compatible dtype, got {type(a).__module__}.{type(a).__name__}"
            + (f" of dtype {a.dtype}" if hasattr(a, "dtype") else "")
        ) from None
    return a, _Info(dtype, tuple(shape), contiguous, dev_type, dev_id, fw)


def _torch_dtype(torch: Any, dtype: str) -> Any:
    return getattr(torch, dtype)


def _empty(ref: Any, info: _Info, shape: Sequence[int], dtype: str, what: str) -> Any:
    """An uninitialised array of `shape`/`dtype` in the framework and on the device of `ref`."""
    shape = tuple(int(s) for s in shape)
    if info.framework == "numpy":
        import numpy as np

        if dtype == "bfloat16":
            raise TypeError(
                f"{what}: numpy has no bfloat16 dtype; pass torch tensors (or out=) to get a "
                "bfloat16 result"
            )
        return np.empty(shape, dtype=np.dtype(dtype))
    if info.framework == "torch":
        torch = sys.modules["torch"]
        return torch.empty(shape, dtype=_torch_dtype(torch, dtype), device=ref.device)
    if info.framework == "cupy":
        cupy = sys.modules["cupy"]
        if dtype == "bfloat16":
            raise TypeError(f"{what}: cupy has no bfloat16 dtype; pass out= to get a bfloat16 result")
        with cupy.cuda.Device(info.device_id):
            return cupy.empty(shape, dtype=dtype)
    raise TypeError(
        f"{what}: cannot allocate the result for a {type(ref).__module__}.{type(ref).__name__} "
        "input; pass a preallocated array as out= (numpy, torch and cupy inputs get one allocated)"
    )


def _stream(ref: Any, info: _Info) -> int:
    """The caller's current CUDA stream for `ref`'s device (0 = legacy default stream)."""
    if info.device_type != _KDL_CUDA:
        return 0
    if info.framework == "torch":
        torch = sys.modules["torch"]
        return int(torch.cuda.current_stream(info.device_id).cuda_stream)
    if info.framework == "cupy":
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(info.device_id):
            return int(cupy.cuda.get_current_stream().ptr)
    return 0


def _dtype_name(dtype: Any) -> str:
    """'float16', np.float16, np.dtype('float16'), torch.float16 -> 'float16'."""
    if isinstance(dtype, str):
        name = dtype
    elif hasattr(dtype, "name") and isinstance(getattr(dtype, "name"), str):  # numpy dtype
        name = dtype.name
    elif isinstance(dtype, type) and hasattr(dtype, "__name__"):  # np.float16 (scalar type)
        name = dtype.__name__
    else:
        name = str(dtype)
    name = name.rsplit(".", 1)[-1]
    return {"float": "float32", "half": "float16", "bfloat": "bfloat16"}.get(name, name)
