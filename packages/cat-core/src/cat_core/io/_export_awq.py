"""Export to / import from the AWQ "GEMM" checkpoint layout (4-bit, zero point, fp16 scales).

Per linear with weight ``[N, K]`` and group size ``G`` (public format facts):

- ``qweight`` int32 ``[K, N/8]``: row k, word j holds columns ``8j .. 8j+7`` of the transposed
  codes, column ``8j + ORDER[i]`` at bits ``4i .. 4i+3`` with ``ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``;
- ``qzeros`` int32 ``[K/G, N/8]``: the zero points, packed the same way;
- ``scales`` float16 ``[K/G, N]``;
- dequantization ``W[n, k] = (q - z) * s``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cat_core.io._bitstream import pack_stream, unpack_stream
from cat_core.io._errors import CheckpointError
from cat_core.io._foreign import import_dir, read_foreign_config
from cat_core.io._shards import DEFAULT_MAX_SHARD_SIZE
from cat_core.io._state import quantized_modules, unconverted_linears, uniform_settings
from cat_core.io._write import structure_record, write_checkpoint
from cat_core.nn import QuantLinear
from cat_core.quant import QuantizedTensor

#: position i of a word holds column 8j + _ORDER[i]
_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _perm(n: int) -> torch.Tensor:
    """Column gather index: packed position 8j+i <- column 8j+ORDER[i]."""
    base = torch.arange(0, n, 8).view(-1, 1)
    return (base + torch.tensor(_ORDER).view(1, 8)).reshape(-1)


def _pack_rows(m: torch.Tensor) -> torch.Tensor:
    """``[R, N]`` 4-bit codes -> ``[R, N/8]`` int32 in the AWQ nibble order."""
    return pack_stream(m[:, _perm(m.shape[1])].T.contiguous(), 4).T.contiguous()


def _unpack_rows(words: torch.Tensor, n: int) -> torch.Tensor:
    permuted = unpack_stream(words.T.contiguous(), 4, n).T
    out = torch.empty_like(permuted)
    out[:, _perm(n)] = permuted
    return out


def _scales_fp16(name: str, s: torch.Tensor) -> torch.Tensor:
    s16 = s.to(torch.float16)
    if s.dtype != torch.float16 and not torch.equal(s16.to(s.dtype), s):
        err = ((s16.float() - s.float()).abs() / s.float().abs().clamp_min(1e-30)).max().item()
        warnings.warn(
            f"{name}: scales are {s.dtype}, the format stores float16; rounding changes them by up "
            f"to {err:.2e} (relative), so the exported weights differ slightly", stacklevel=3,
        )
    return s16


def _convert(name: str, mod: QuantLinear) -> dict[str, torch.Tensor]:
    if mod.bits != 4:
        raise ValueError(
            f"{name}: the AWQ GEMM format holds 4-bit weights only, this layer is {mod.bits}-bit; "
            f"export it with cat_core.io.export_gptq (3- and 4-bit) or keep the native format"
        )
    if mod.group_size == -1:
        raise ValueError(f"{name}: the AWQ GEMM format needs a group size; group_size=-1 is not supported")
    if mod.out_features % 8:
        raise ValueError(f"{name}: AWQ GEMM packs 8 output features per int32; out_features={mod.out_features} is not a multiple of 8")
    qt = mod.to_quantized_tensor()
    zeros = qt.zeros if qt.zeros is not None else torch.full_like(qt.scales, 8, dtype=torch.uint8)  # symmetric: z = 8
    return {
        "qweight": _pack_rows(qt.codes.T.contiguous()),
        "qzeros": _pack_rows(zeros.T.contiguous()),
        "scales": _scales_fp16(name, qt.scales.T.contiguous()),
    }


def export_awq(
    model: nn.Module,
    out_dir: str | os.PathLike,
    tokenizer: Any = None,
    *,
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    progress: bool = True,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a 4-bit quantized model in the AWQ GEMM layout (``quant_method: "awq"``).

    Symmetric layers are stored with zero point 8; non-float16 scales are rounded to float16
    (with a warning when that changes them). Raises ``ValueError`` for other bit widths,
    ``group_size=-1`` or out_features not a multiple of 8. Same directory semantics and ``dtype``
    as :func:`cat_core.io.save_quantized`.
    """
    mods = quantized_modules(model)
    bits, gs, _, _ = uniform_settings(mods)
    if bits != 4:
        raise ValueError(
            f"the AWQ GEMM format cannot hold {bits}-bit weights (4-bit only); use "
            f"cat_core.io.export_gptq for 3-bit, or the native format (save_quantized)"
        )
    qcfg = {
        "quant_method": "awq", "version": "gemm", "zero_point": True, "bits": 4, "group_size": gs,
        "w_bit": 4, "q_group_size": gs, "modules_to_not_convert": unconverted_linears(model) or None,
        **structure_record(model),
    }
    autoawq = {"zero_point": True, "q_group_size": gs, "w_bit": 4, "version": "GEMM"}
    return write_checkpoint(model, out_dir, tokenizer, qcfg, {"format": "pt", "quant_method": "awq"},
                            overwrite=overwrite, max_shard_size=max_shard_size, progress=progress, dtype=dtype,
                            convert=_convert, extra_json={"quant_config.json": autoawq})


def import_awq(
    path: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, Any]:
    """Read an AWQ GEMM checkpoint (4-bit, zero point) into :class:`~cat_core.nn.QuantLinear`
    layers; returns ``(model, tokenizer or None)``. Raises :class:`CheckpointError`."""
    path = Path(path)
    cfg, q = read_foreign_config(path, "awq", "an AWQ checkpoint")
    version = str(q.get("version", "gemm")).lower()
    bits = q.get("bits", q.get("w_bit"))
    gs = q.get("group_size", q.get("q_group_size"))
    if version != "gemm":
        raise CheckpointError(f"{path / 'config.json'}: AWQ version {version!r} is not supported (only 'gemm')")
    if bits != 4:
        raise CheckpointError(f"{path / 'config.json'}: AWQ with bits={bits!r} is not supported (only 4)")
    if q.get("zero_point", True) is not True:
        raise CheckpointError(f"{path / 'config.json'}: AWQ without zero points is not supported")
    if not isinstance(gs, int) or gs <= 0 or gs % 32:
        raise CheckpointError(f"{path / 'config.json'}: unsupported AWQ group size {gs!r} (a multiple of 32)")

    def shapes(n: int, k: int) -> dict[str, tuple[list[int], torch.dtype]]:
        if k % gs or n % 8:
            raise CheckpointError(f"{path}: a linear [N={n}, K={k}] cannot be stored with group size {gs} in AWQ GEMM")
        return {"qweight": ([k, n // 8], torch.int32), "qzeros": ([k // gs, n // 8], torch.int32),
                "scales": ([k // gs, n], torch.float16)}

    def to_native(name: str, t: dict[str, torch.Tensor], n: int, k: int) -> QuantizedTensor:
        return QuantizedTensor(
            codes=_unpack_rows(t["qweight"], n).T.contiguous(),
            scales=t["scales"].T.contiguous(),
            zeros=_unpack_rows(t["qzeros"], n).T.contiguous(),
            bits=4, group_size=gs,
        )

    return import_dir(path, cfg, shapes, to_native, device, dtype, hint=f"AWQ GEMM, bits=4, group_size={gs}",
                        model_kwargs=model_kwargs)
