"""Export to / import from the GPTQ checkpoint layout (``desc_act: false``), 2/3/4/8-bit.

Per linear with weight ``[N, K]`` and group size ``G`` (public format facts):

- ``qweight`` int32 ``[K * bits / 32, N]``, packed along K: each column is a little-endian bit
  stream, value k at stream bits ``[bits*k, bits*k + bits)`` (4-bit: value k at bits ``4*(k%8)``
  of word ``k//8``; 3-bit: 32 values in 3 consecutive words);
- ``qzeros`` int32 ``[K/G, N * bits / 32]``, the zero points packed along N the same way;
- ``scales`` float16 ``[K/G, N]``; ``g_idx`` int32 ``[K]`` = ``k // G``.

Zero points. ``checkpoint_format: "gptq"`` (v1, read by every GPTQ loader) stores ``z - 1`` and
loaders add 1 back, so a zero point of 0 cannot be represented. The exporter then refuses (naming
the layer and how many groups) and points to ``checkpoint_format="gptq_v2"``, which stores ``z``
unshifted. It never re-quantizes silently: that would change the weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from cat_core.io._bitstream import pack_stream, unpack_stream
from cat_core.io._errors import CheckpointError
from cat_core.io._export_awq import _scales_fp16
from cat_core.io._foreign import import_dir, read_foreign_config
from cat_core.io._shards import DEFAULT_MAX_SHARD_SIZE
from cat_core.io._state import quantized_modules, unconverted_linears, uniform_settings
from cat_core.io._write import structure_record, write_checkpoint
from cat_core.nn import QuantLinear
from cat_core.quant import QuantizedTensor

_FORMATS = ("gptq", "gptq_v2")


def _shift(fmt: str) -> int:
    return 1 if fmt == "gptq" else 0


def _converter(fmt: str):
    def convert(name: str, mod: QuantLinear) -> dict[str, torch.Tensor]:
        bits, n, k = mod.bits, mod.out_features, mod.in_features
        if (k * bits) % 32:
            need = 32 if bits == 3 else 32 // bits
            raise ValueError(f"{name}: GPTQ packs {bits}-bit values along K; in_features={k} must be a multiple of {need}")
        if (n * bits) % 32:
            need = 32 if bits == 3 else 32 // bits
            raise ValueError(f"{name}: GPTQ packs {bits}-bit zero points along N; out_features={n} must be a multiple of {need}")
        qt = mod.to_quantized_tensor()
        g = k if qt.group_size == -1 else qt.group_size
        zeros = qt.zeros.to(torch.int64) if qt.zeros is not None else torch.full(qt.scales.shape, 2 ** (bits - 1), dtype=torch.int64)
        if fmt == "gptq":
            bad = int((zeros == 0).sum())
            if bad:
                raise ValueError(
                    f"{name}: {bad} group(s) have zero point 0, which the GPTQ v1 format (stores z-1) "
                    f"cannot represent; export with checkpoint_format='gptq_v2' (stores z as is)"
                )
        stored = zeros - _shift(fmt)
        return {
            "qweight": pack_stream(qt.codes.T.contiguous(), bits),
            "qzeros": pack_stream(stored.contiguous(), bits).T.contiguous(),
            "scales": _scales_fp16(name, qt.scales.T.contiguous()),
            "g_idx": (torch.arange(k, dtype=torch.int32) // g),
        }

    return convert


def export_gptq(
    model: nn.Module,
    out_dir: str | os.PathLike,
    tokenizer: Any = None,
    *,
    checkpoint_format: Literal["gptq", "gptq_v2"] = "gptq",
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    progress: bool = True,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a quantized model in the GPTQ layout (``quant_method: "gptq"``, ``desc_act: false``).

    ``checkpoint_format="gptq"`` (v1) stores zero points minus one and raises ``ValueError`` if a
    zero point is 0; ``"gptq_v2"`` stores them unshifted. Requires K (and N) such that the packed
    words are whole: multiples of 32 for 3-bit, of 8 for 4-bit. Same directory semantics and
    ``dtype`` as :func:`cat_core.io.save_quantized`.
    """
    if checkpoint_format not in _FORMATS:
        raise ValueError(f"checkpoint_format must be one of {_FORMATS}, got {checkpoint_format!r}")
    mods = quantized_modules(model)
    bits, gs, sym, _ = uniform_settings(mods)
    qcfg = {
        "quant_method": "gptq", "bits": bits, "group_size": gs, "desc_act": False, "sym": sym,
        "checkpoint_format": checkpoint_format, "static_groups": False, "true_sequential": True,
        "modules_to_not_convert": unconverted_linears(model) or None,
        **structure_record(model),
    }
    side = {k: qcfg[k] for k in ("bits", "group_size", "desc_act", "sym", "checkpoint_format", "static_groups", "true_sequential")}
    return write_checkpoint(model, out_dir, tokenizer, qcfg, {"format": "pt", "quant_method": "gptq"},
                            overwrite=overwrite, max_shard_size=max_shard_size, progress=progress, dtype=dtype,
                            convert=_converter(checkpoint_format),
                            extra_json={"quantize_config.json": {**side, "quant_method": "gptq"}})


def import_gptq(
    path: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, Any]:
    """Read a GPTQ checkpoint (v1 or v2, ``desc_act`` false or a trivial ``g_idx``) into
    :class:`~cat_core.nn.QuantLinear` layers; returns ``(model, tokenizer or None)``.

    Symmetric checkpoints whose zero points are all ``2**(bits-1)`` load as symmetric layers (no
    zero-point buffer). Raises :class:`CheckpointError`."""
    path = Path(path)
    cfg, q = read_foreign_config(path, "gptq", "a GPTQ checkpoint")
    bits, gs = q.get("bits"), q.get("group_size", -1)
    fmt = str(q.get("checkpoint_format", "gptq")).lower()
    if bits not in (2, 3, 4, 8):
        raise CheckpointError(f"{path / 'config.json'}: GPTQ with bits={bits!r} is not supported (2, 3, 4 or 8)")
    if fmt not in _FORMATS:
        raise CheckpointError(f"{path / 'config.json'}: checkpoint_format {fmt!r} is not supported ({_FORMATS})")
    if not isinstance(gs, int) or not (gs == -1 or (gs > 0 and gs % 32 == 0)):
        raise CheckpointError(f"{path / 'config.json'}: unsupported GPTQ group size {gs!r}")
    sym = bool(q.get("sym", False))

    def shapes(n: int, k: int) -> dict[str, tuple[list[int], torch.dtype]]:
        g = k if gs == -1 else gs
        if k % g or (k * bits) % 32 or (n * bits) % 32:
            raise CheckpointError(f"{path}: a linear [N={n}, K={k}] cannot be stored as {bits}-bit GPTQ with group size {gs}")
        return {"qweight": ([k * bits // 32, n], torch.int32), "qzeros": ([k // g, n * bits // 32], torch.int32),
                "scales": ([k // g, n], torch.float16), "g_idx": ([k], torch.int32)}

    def to_native(name: str, t: dict[str, torch.Tensor], n: int, k: int) -> QuantizedTensor:
        g = k if gs == -1 else gs
        if not torch.equal(t["g_idx"], torch.arange(k, dtype=torch.int32) // g):
            raise CheckpointError(f"{path}: {name}.g_idx is not k // group_size (act-order / desc_act checkpoints are not supported)")
        zeros = unpack_stream(t["qzeros"].T.contiguous(), bits, n).to(torch.int64) + _shift(fmt)
        if zeros.max() >= 2**bits:
            raise CheckpointError(f"{path}: {name}.qzeros holds a zero point of {int(zeros.max())}, beyond {bits}-bit")
        as_sym = sym and bool((zeros == 2 ** (bits - 1)).all())
        return QuantizedTensor(
            codes=unpack_stream(t["qweight"], bits, k).T.contiguous(),
            scales=t["scales"].T.contiguous(),
            zeros=None if as_sym else zeros.to(torch.uint8).contiguous(),
            bits=bits, group_size=gs,
        )

    return import_dir(path, cfg, shapes, to_native, device, dtype, hint=f"GPTQ {fmt}, bits={bits}, group_size={gs}",
                        model_kwargs=model_kwargs)
