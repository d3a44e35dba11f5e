"""Argument validation for the public API. Every message names the argument and what was
expected, so that bad input fails here with a ValueError/TypeError instead of reaching the
kernels (which assume well-formed arrays)."""

from __future__ import annotations

import operator
from typing import Any

from ._arrays import FLOAT_DTYPES, _KDL_CPU, _KDL_CUDA, _Info

VALID_BITS = (2, 3, 4, 8)
TILE_N = 16
BLOCK_K = 32


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an integer, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}") from None


def _check_bits(bits: Any, name: str = "bits") -> int:
    bits = _int(bits, name)
    if bits not in VALID_BITS:
        raise ValueError(f"{name}: expected one of 2, 3, 4, 8, got {bits}")
    return bits


def _valid_group_sizes(k: int) -> list[int]:
    return [-1] + [g for g in range(BLOCK_K, k + 1, BLOCK_K) if k % g == 0]


def _resolve_group_size(group_size: Any, k: int) -> int:
    """Returns the resolved group size G (k for -1)."""
    g = _int(group_size, "group_size")
    if g == -1:
        return k
    if g <= 0 or g % BLOCK_K or k % g:
        valid = ", ".join(str(v) for v in _valid_group_sizes(k))
        raise ValueError(
            f"group_size: {g} is not valid for K={k}; expected -1 (one group per row) or a "
            f"multiple of 32 that divides K. Valid values for K={k}: {valid}"
        )
    return g


def _check_ndim(info: _Info, ndim: int, name: str, what: str) -> None:
    if len(info.shape) != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array {what}, got shape {info.shape}")


def _check_dtype(info: _Info, allowed: tuple[str, ...], name: str) -> None:
    if info.dtype not in allowed:
        raise TypeError(f"{name}: expected dtype {' or '.join(allowed)}, got {info.dtype}")


def _check_contiguous(info: _Info, name: str) -> None:
    if not info.contiguous:
        raise ValueError(f"{name}: must be C-contiguous (make a contiguous copy first)")


def _check_device_kind(info: _Info, name: str) -> None:
    if info.device_type not in (_KDL_CPU, _KDL_CUDA):
        raise ValueError(f"{name}: arrays must be in CPU memory or on a CUDA device, got {info.device}")


def _check_same_device(infos: dict[str, _Info]) -> None:
    items = list(infos.items())
    ref_name, ref = items[0]
    _check_device_kind(ref, ref_name)
    for name, info in items[1:]:
        if (info.device_type, info.device_id if info.device_type != _KDL_CPU else 0) != (
            ref.device_type,
            ref.device_id if ref.device_type != _KDL_CPU else 0,
        ):
            raise ValueError(
                f"{name}: must be on the same device as {ref_name} ({ref.device}), got {info.device}"
            )


def _packed_shape(n: int, k: int, bits: int) -> tuple[int, int, int, int]:
    return (_ceil_div(n, TILE_N), _ceil_div(k, BLOCK_K), bits, TILE_N)


def _check_packed_bits(info: _Info, name: str = "packed") -> int:
    _check_ndim(info, 4, name, "[ceil(N/16), ceil(K/32), bits, 16]")
    _check_dtype(info, ("int32",), name)
    bits = info.shape[2]
    if bits not in VALID_BITS:
        raise ValueError(
            f"{name}: shape[2] is the bit width and must be one of 2, 3, 4, 8, got {bits} "
            f"(shape {info.shape})"
        )
    return bits


def _check_packed(info: _Info, n: int, k: int, name: str = "packed") -> int:
    bits = _check_packed_bits(info, name)
    want = _packed_shape(n, k, bits)
    if info.shape != want:
        raise ValueError(
            f"{name}: expected shape {want} for N={n}, K={k}, bits={bits} "
            f"([ceil(N/16), ceil(K/32), bits, 16]), got {info.shape}"
        )
    _check_contiguous(info, name)
    return bits


def _check_scales(info: _Info, name: str = "scales") -> tuple[int, int]:
    _check_ndim(info, 2, name, "[N, n_groups]")
    _check_dtype(info, FLOAT_DTYPES, name)
    _check_contiguous(info, name)
    n, ng = info.shape
    if n == 0 or ng == 0:
        raise ValueError(f"{name}: N and n_groups must be positive, got shape {info.shape}")
    return n, ng


def _zeros_shape(n: int, n_groups: int, bits: int) -> tuple[int, int, int]:
    return (_ceil_div(n, TILE_N), _ceil_div(n_groups * bits, 32), TILE_N)


def _check_zeros(info: _Info | None, n: int, n_groups: int, bits: int, name: str = "zeros") -> None:
    if info is None:
        return
    _check_ndim(info, 3, name, "[ceil(N/16), ceil(n_groups*bits/32), 16] from pack_zeros (or None)")
    _check_dtype(info, ("int32",), name)
    want = _zeros_shape(n, n_groups, bits)
    if info.shape != want:
        raise ValueError(
            f"{name}: expected shape {want} (the [N={n}, n_groups={n_groups}] zero points packed "
            f"by pack_zeros with bits={bits}: [ceil(N/16), ceil(n_groups*bits/32), 16]), "
            f"got {info.shape}"
        )
    _check_contiguous(info, name)
