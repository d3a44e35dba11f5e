"""The public operations. See docs/format.md for the packed layout."""

from __future__ import annotations

from typing import Any, Optional, TypeVar

from . import _C
from ._arrays import FLOAT_DTYPES, _KDL_CUDA, _dtype_name, _empty, _Info, _inspect, _stream
from ._checks import (
    _check_bits,
    _check_contiguous,
    _check_dtype,
    _check_ndim,
    _check_packed,
    _check_packed_bits,
    _check_same_device,
    _check_scales,
    _check_zeros,
    _int,
    _packed_shape,
    _resolve_group_size,
    _zeros_shape,
)

#: Any array type: numpy.ndarray on the CPU; torch.Tensor, cupy.ndarray (or any DLPack
#: producer) on the CPU or a CUDA device. Results come back in the type of the main input.
Array = TypeVar("Array")


def pack(codes: Array, bits: int) -> Array:
    """Pack integer codes into the cat-kernels weight format.

    Args:
        codes: ``[N, K]`` uint8 or int32, C-contiguous, every value in ``0 <= q < 2**bits``.
        bits: 2, 3, 4 or 8.

    Returns:
        ``[ceil(N/16), ceil(K/32), bits, 16]`` int32, same framework and device as ``codes``;
        padded rows/columns hold code 0 (docs/format.md).

    Raises:
        ValueError: bad ``bits``, shape, contiguity, or a code out of range (the message gives
            its position and value).
        TypeError: ``codes`` is not an array or not uint8/int32.
    """
    return _pack(codes, bits, zero_layout=False)


def unpack(packed: Array, n: int, k: int) -> Array:
    """Inverse of :func:`pack`.

    Args:
        packed: ``[ceil(n/16), ceil(k/32), bits, 16]`` int32, C-contiguous; ``bits`` is read
            from ``packed.shape[2]``.
        n: number of rows N (> 0).
        k: number of columns K (> 0).

    Returns:
        ``[n, k]`` uint8 codes, same framework and device as ``packed``.
    """
    n = _int(n, "n")
    k = _int(k, "k")
    if n <= 0 or k <= 0:
        raise ValueError(f"n, k: must be positive, got n={n}, k={k}")
    packed, pi = _inspect(packed, "packed")
    _check_packed(pi, n, k)
    _check_same_device({"packed": pi})
    out = _empty(packed, pi, (n, k), "uint8", "unpack")
    _C._unpack(packed, n, k, -1, out, _stream(packed, pi))
    return out


def _pack(values: Any, bits: int, *, zero_layout: bool) -> Any:
    """pack (codes [N, K]) or pack_zeros (zero points [N, n_groups]): the same checks and kernel,
    two output layouts."""
    bits = _check_bits(bits)
    if zero_layout:
        name, dims, shape_of, op = "zeros", "[N, n_groups]", _zeros_shape, "pack_zeros"
    else:
        name, dims, shape_of, op = "codes", "[N, K]", _packed_shape, "pack"
    values, vi = _inspect(values, name)
    _check_ndim(vi, 2, name, dims)
    _check_dtype(vi, ("uint8", "int32"), name)
    _check_contiguous(vi, name)
    _check_same_device({name: vi})
    out = _empty(values, vi, shape_of(*vi.shape, bits), "int32", op)
    ok, row, col, value = _C._pack(values, bits, out, _stream(values, vi), zero_layout)
    if not ok:
        raise ValueError(
            f"{name}: {name}[{row}, {col}] = {value} is out of range for bits={bits} "
            f"(expected 0 <= value < {1 << bits})"
        )
    return out


def pack_zeros(zeros: Array, bits: int) -> Array:
    """Pack integer zero points into the cat-kernels zero-point format.

    Each row's ``n_groups`` zero points form one dense bit stream (``bits`` bits each, no padding
    between groups), so a zero point costs exactly ``bits`` bits (docs/format.md "Zero points").

    Args:
        zeros: ``[N, n_groups]`` uint8 or int32, C-contiguous, every value in ``0 <= z < 2**bits``.
        bits: 2, 3, 4 or 8 (the bit width of the weights they belong to).

    Returns:
        ``[ceil(N/16), ceil(n_groups*bits/32), 16]`` int32, same framework and device as ``zeros``.

    Raises:
        ValueError: bad ``bits``, shape, contiguity, or a value out of range (with its position).
        TypeError: ``zeros`` is not an array or not uint8/int32.
    """
    return _pack(zeros, bits, zero_layout=True)


def unpack_zeros(packed_zeros: Array, n: int, n_groups: int, bits: int) -> Array:
    """Inverse of :func:`pack_zeros`.

    Args:
        packed_zeros: ``[ceil(n/16), ceil(n_groups*bits/32), 16]`` int32, C-contiguous.
        n: number of rows N (> 0).
        n_groups: zero points per row (> 0).
        bits: 2, 3, 4 or 8 (not recoverable from the shape).

    Returns:
        ``[n, n_groups]`` uint8, same framework and device as ``packed_zeros``.
    """
    bits = _check_bits(bits)
    n = _int(n, "n")
    ng = _int(n_groups, "n_groups")
    if n <= 0 or ng <= 0:
        raise ValueError(f"n, n_groups: must be positive, got n={n}, n_groups={ng}")
    packed_zeros, zi = _inspect(packed_zeros, "packed_zeros")
    _check_zeros(zi, n, ng, bits, "packed_zeros")
    _check_same_device({"packed_zeros": zi})
    out = _empty(packed_zeros, zi, (n, ng), "uint8", "unpack_zeros")
    _C._unpack(packed_zeros, n, ng, bits, out, _stream(packed_zeros, zi), True)
    return out


def _weight_infos(
    packed: Any, scales: Any, zeros: Any
) -> tuple[Any, _Info, Any, _Info, Any, Optional[_Info]]:
    packed, pi = _inspect(packed, "packed")
    scales, si = _inspect(scales, "scales")
    zi = None
    if zeros is not None:
        zeros, zi = _inspect(zeros, "zeros")
    return packed, pi, scales, si, zeros, zi


def _validate_weight(
    packed: Any, scales: Any, zeros: Any, group_size: Any, k: Optional[int]
) -> tuple[Any, _Info, Any, _Info, Any, Optional[_Info], int, int, int]:
    """Every check of a packed weight on its own (no x): returns the arrays to hand to _C, their
    infos, N, the true K and the group size as given (-1 kept)."""
    packed, pi, scales, si, zeros, zi = _weight_infos(packed, scales, zeros)
    n, ng = _check_scales(si)
    gs = _int(group_size, "group_size")
    if k is None:
        if gs == -1:
            raise ValueError(
                "k: required when group_size=-1 (the true K cannot be recovered from the "
                "packed array, whose K is padded to a multiple of 32)"
            )
        if gs <= 0 or gs % 32:
            raise ValueError(
                f"group_size: expected -1 or a positive multiple of 32, got {gs}"
            )
        k = ng * gs
    k = _int(k, "k")
    if k <= 0:
        raise ValueError(f"k: must be positive, got {k}")
    _, _, infos = _check_weight_shapes(pi, si, zi, k, gs, "")
    _check_same_device(infos)
    return packed, pi, scales, si, zeros, zi, n, k, gs


def _check_weight_shapes(
    pi: _Info, si: _Info, zi: Optional[_Info], k: int, group_size: Any, k_note: str
) -> tuple[int, int, dict[str, _Info]]:
    """The weight's arrays against each other and K (`k_note` says where K came from): returns
    N, bits and the infos for the device check."""
    g = _resolve_group_size(group_size, k)
    n, ng = _check_scales(si)
    if ng != k // g:
        raise ValueError(
            f"scales: expected shape [N, K/group_size] = [{n}, {k // g}] for K={k}{k_note}, "
            f"group_size={group_size}, got {si.shape}"
        )
    bits = _check_packed(pi, n, k)
    _check_zeros(zi, n, ng, bits)
    infos = {"packed": pi, "scales": si}
    if zi is not None:
        infos["zeros"] = zi
    return n, bits, infos


def dequantize(
    packed: Array,
    scales: Any,
    zeros: Any,
    group_size: int,
    *,
    k: Optional[int] = None,
    dtype: Any = None,
) -> Array:
    """Reconstruct the weight matrix ``W[n, k] = float32(q - z) * float32(s)``.

    Args:
        packed: ``[ceil(N/16), ceil(K/32), bits, 16]`` int32 codes (bits = ``shape[2]``).
        scales: ``[N, n_groups]`` float32, float16 or bfloat16, ``n_groups = K / G``.
        zeros: ``[ceil(N/16), ceil(n_groups*bits/32), 16]`` int32 zero points from
            :func:`pack_zeros`, or None for symmetric quantization (zero point ``2**(bits-1)``).
        group_size: G, a multiple of 32 that divides K, or -1 (one group per row).
        k: the true K. Required when ``group_size == -1`` (the packed array only knows K rounded
            up to 32); otherwise optional and must equal ``n_groups * group_size``.
        dtype: output dtype, "float32", "float16" or "bfloat16" (numpy/torch dtypes accepted);
            default: the dtype of ``scales``.

    Returns:
        ``[N, K]`` array of ``dtype``, same framework and device as ``packed``, each element
        rounded once from the float32 product.
    """
    packed, pi, scales, si, zeros, zi, n, k, gs = _validate_weight(packed, scales, zeros, group_size, k)
    out_dtype = si.dtype if dtype is None else _dtype_name(dtype)
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32, float16 or bfloat16, got {dtype!r}")
    out = _empty(packed, pi, (n, k), out_dtype, "dequantize")
    _C._dequantize(packed, scales, zeros, gs, k, out, _stream(packed, pi))
    return out


def gemm(
    x: Array,
    packed: Any,
    scales: Any,
    zeros: Any,
    group_size: int,
    *,
    out: Optional[Array] = None,
    int8_activations: bool = False,
) -> Array:
    """``y = x @ dequantize(packed, scales, zeros, group_size).T`` without materialising W.

    Args:
        x: ``[M, K]`` float32, float16 or bfloat16, C-contiguous (M may be 0).
        packed: ``[ceil(N/16), ceil(K/32), bits, 16]`` int32 packed codes (bits = ``shape[2]``).
        scales: ``[N, n_groups]`` float32, float16 or bfloat16, ``n_groups = K / G``.
        zeros: ``[ceil(N/16), ceil(n_groups*bits/32), 16]`` int32 zero points from
            :func:`pack_zeros`, or None (symmetric).
        group_size: G, a multiple of 32 that divides K, or -1 (one group per row; K may then be
            any positive integer).
        out: optional ``[M, N]`` C-contiguous array of x's dtype on x's device to write into.
            Required for inputs other than numpy, torch and cupy arrays.
        int8_activations: CPU only. Round x to int8 per block of 32 columns (scale
            ``max|x| / 127``, as llama.cpp's Q8_0) and multiply the rounded x. With AVX-512 VNNI
            (+ VBMI, VBMI2: Ice Lake, Sapphire Rapids, Zen 4 and later) the products are integer
            dot products, several times fewer instructions per weight; with AVX2 too for 2-, 4-
            and 8-bit weights; elsewhere the float kernels multiply the same rounded x (same
            result to float rounding, no speed gain). See
            docs/format.md, "int8 activations". Default False: x is used exactly as given.

    Returns:
        ``[M, N]`` array of x's dtype (``out`` if given; otherwise same framework and device as
        ``x``). Accumulation is float32 and deterministic (bit-identical across calls and
        thread counts). CUDA inputs run on the caller's current torch/cupy stream.
    """
    x, xi = _inspect(x, "x")
    _check_ndim(xi, 2, "x", "[M, K]")
    _check_dtype(xi, FLOAT_DTYPES, "x")
    _check_contiguous(xi, "x")
    m, k = xi.shape
    if k <= 0:
        raise ValueError(f"x: K = x.shape[1] must be positive, got shape {xi.shape}")
    packed, pi, scales, si, zeros, zi = _weight_infos(packed, scales, zeros)
    n, bits, weight_infos = _check_weight_shapes(pi, si, zi, k, group_size, " (x.shape[1])")
    infos = {"x": xi, **weight_infos}
    g = _resolve_group_size(group_size, k)
    if out is not None:
        out, oi = _inspect(out, "out")
        if oi.shape != (m, n):
            raise ValueError(f"out: expected shape {(m, n)}, got {oi.shape}")
        if oi.dtype != xi.dtype:
            raise TypeError(f"out: expected dtype {xi.dtype} (the dtype of x), got {oi.dtype}")
        _check_contiguous(oi, "out")
        infos["out"] = oi
    _check_same_device(infos)
    if out is None:
        out = _empty(x, xi, (m, n), xi.dtype, "gemm")
    workspace = None
    stream = 0
    if xi.device_type == _KDL_CUDA and m > 0:
        stream = _stream(x, xi)
        elems = _C._cuda_gemm_workspace_elems(m, n, k, bits, g)
        if elems > 0:
            workspace = _empty(x, xi, (elems,), "float32", "gemm workspace")
    _C._gemm(x, packed, scales, zeros, group_size, out, workspace, stream, bool(int8_activations))
    return out
