"""Row and column slices of the cat-kernels packed arrays, for tensor-parallel loading.

Pure torch (no vLLM). The arrays are those of ``packages/cat-kernels/docs/format.md``:

- ``qweight`` int32 ``[ceil(N/16), ceil(K/32), bits, 16]``: rows in tiles of 16, columns in
  blocks of 32, so a row slice must start on a tile (16 rows) and a column slice on a block
  (32 columns); a slice may end off a tile/block only where the matrix itself ends;
- ``scales`` ``[N, K/G]``: any row slice; a column slice must be whole groups;
- ``qzeros`` int32 ``[ceil(N/16), ceil((K/G)*bits/32), 16]``: rows as ``qweight``; each row's
  zero points are one dense bit stream, so a slice of groups is unpacked and packed again
  (a 3-bit zero point straddles words; zero points are 1/G of the weights, so this is cheap).

Column (K) slices must also be whole groups: a group's scale and zero point cannot be split.
With ``group_size = -1`` every K slice shares the row's one scale and zero point.
"""

from __future__ import annotations

import torch

TILE_ROWS = 16
BLOCK_COLS = 32
KINDS = ("qweight", "scales", "qzeros")


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def row_slice_problem(start: int, n: int, n_total: int) -> str | None:
    """Why rows ``[start, start+n)`` of a packed ``n_total``-row matrix cannot be sliced, or None."""
    if start < 0 or n <= 0 or start + n > n_total:
        return f"rows [{start}, {start + n}) are outside the {n_total} rows"
    if start % TILE_ROWS:
        return f"rows start at {start}, not on a {TILE_ROWS}-row packing tile"
    if n % TILE_ROWS and start + n != n_total:
        return f"rows [{start}, {start + n}) end at {start + n}, inside a {TILE_ROWS}-row packing tile"
    return None


def col_slice_problem(start: int, k: int, k_total: int, group_size: int) -> str | None:
    """Why columns ``[start, start+k)`` of a packed ``k_total``-column matrix cannot be sliced."""
    if start < 0 or k <= 0 or start + k > k_total:
        return f"columns [{start}, {start + k}) are outside the {k_total} columns"
    if group_size != -1 and (start % group_size or k % group_size):
        return (f"columns [{start}, {start + k}) do not start and end on a quantization group "
                f"(group_size={group_size})")
    if start % BLOCK_COLS:
        return f"columns start at {start}, not on a {BLOCK_COLS}-column packing block"
    if k % BLOCK_COLS and start + k != k_total:
        return f"columns [{start}, {start + k}) end at {start + k}, inside a {BLOCK_COLS}-column packing block"
    return None


def rows(kind: str, t: torch.Tensor, start: int, n: int, n_total: int) -> torch.Tensor:
    """Rows ``[start, start+n)`` of the packed array ``t`` (a view), whose matrix has ``n_total``
    rows. Raises ValueError when the slice would cut a packing tile."""
    _check_kind(kind)
    problem = row_slice_problem(start, n, n_total)
    if problem:
        raise ValueError(problem)
    if kind == "scales":
        return t.narrow(0, start, n)
    return t.narrow(0, start // TILE_ROWS, _ceil(n, TILE_ROWS))


def cols(kind: str, t: torch.Tensor, start: int, k: int, k_total: int, *, bits: int, group_size: int) -> torch.Tensor:
    """Columns ``[start, start+k)`` of the packed array ``t`` of a ``k_total``-column matrix (a view
    for ``qweight`` and ``scales``; new packed zero points, on the CPU, for ``qzeros``).
    Raises ValueError when the slice would cut a group or a packing block."""
    _check_kind(kind)
    problem = col_slice_problem(start, k, k_total, group_size)
    if problem:
        raise ValueError(problem)
    if kind == "qweight":
        return t.narrow(1, start // BLOCK_COLS, _ceil(k, BLOCK_COLS))
    if group_size == -1:  # one group per row, shared by every column slice
        return t
    g0, ng, n_groups = start // group_size, k // group_size, k_total // group_size
    if kind == "scales":
        return t.narrow(1, g0, ng)
    import cat_kernels

    n_rows = t.shape[0] * TILE_ROWS  # padded rows hold zeros and stay zeros
    z = cat_kernels.unpack_zeros(t.detach().cpu().contiguous(), n_rows, n_groups, bits)
    return cat_kernels.pack_zeros(z[:, g0:g0 + ng].contiguous(), bits)


def awq_to_native(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> "QuantizedTensor":
    """One AWQ-GEMM linear (or one rank's part of it: vLLM slices that layout itself) as codes,
    zero points and scales (``qweight`` ``[K, N/8]``, ``qzeros`` ``[K/G, N/8]``, ``scales``
    ``[K/G, N]`` float16; ``group_size`` -1 or G)."""
    from cat_core.io._export_awq import _unpack_rows
    from cat_core.quant import QuantizedTensor

    k, n = int(qweight.shape[0]), int(scales.shape[1])
    return QuantizedTensor(
        codes=_unpack_rows(qweight, n).T.contiguous(),
        scales=scales.T.contiguous(),
        zeros=_unpack_rows(qzeros, n).T.contiguous(),
        bits=4, group_size=-1 if group_size == -1 or group_size == k else group_size,
    )
