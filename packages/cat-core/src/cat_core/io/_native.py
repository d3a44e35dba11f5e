"""The native Caterpillar checkpoint: a Hugging Face style directory whose quantized linears hold
the cat-kernels packed arrays as they are in memory (``qweight``, ``scales``, ``qzeros``)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cat_core.io._config import load_generation_and_tokenizer, read_config
from cat_core.io._errors import CheckpointError
from cat_core.io._experts import unfuse_recorded
from cat_core.io._shards import DEFAULT_MAX_SHARD_SIZE, load_tensors, read_headers
from cat_core.io._skeleton import (
    check_tensors,
    expected_from,
    finish_load,
    install_quant_linears,
    install_scaled_activations,
    skeleton,
)
from cat_core.io._state import check_storage_dtype, quantized_modules, unconverted_linears
from cat_core.io._write import structure_record, write_checkpoint
from cat_core.nn import QuantLinear

QUANT_METHOD = "caterpillar"
FORMAT_VERSION = 2  # 2: zero points in cat-kernels format v2 (dense rows)


def _module_settings(m: QuantLinear) -> dict[str, Any]:
    return {"bits": m.bits, "group_size": m.group_size, "sym": m.sym,
            "scale_dtype": str(m.scales.dtype).removeprefix("torch.")}


def save_quantized(
    model: nn.Module,
    out_dir: str | os.PathLike,
    tokenizer: Any = None,
    *,
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    progress: bool = True,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` (with :class:`~cat_core.nn.QuantLinear` layers) to ``out_dir``.

    ``dtype`` (float16, bfloat16 or float32) stores the unquantized floating tensors (embeddings,
    norms, biases, an unquantized lm_head) in that dtype and records it in config.json, so a
    model searched in float32 need not be stored in float32; the quantized layers' scales keep
    their own dtype. Default: as they are in memory. The model itself is not changed.
    The directory appears only once complete (written to a temporary sibling, then renamed).
    Raises ``FileExistsError`` if ``out_dir`` exists and ``overwrite`` is False.
    Returns the directory path.
    """
    check_storage_dtype(dtype)
    mods = quantized_modules(model)
    per = {n: _module_settings(m) for n, m in mods.items()}
    # the most common settings are global; layers that differ (e.g. group_size -1 where K is
    # not a multiple of the group size) are listed in module_overrides
    common = Counter(tuple(v.items()) for v in per.values()).most_common(1)[0][0]
    glob = dict(common)
    overrides = {n: {k: v for k, v in s.items() if glob[k] != v} for n, s in per.items()}
    qcfg = {
        "quant_method": QUANT_METHOD,
        "format_version": FORMAT_VERSION,
        **glob,
        "modules": sorted(mods),
        "module_overrides": {n: o for n, o in sorted(overrides.items()) if o},
        "modules_not_converted": unconverted_linears(model),
        **structure_record(model),
    }
    meta = {"format": "pt", "quant_method": QUANT_METHOD, "format_version": str(FORMAT_VERSION)}
    return write_checkpoint(model, out_dir, tokenizer, qcfg, meta, overwrite=overwrite,
                            max_shard_size=max_shard_size, progress=progress, dtype=dtype)


def _settings(qcfg: Any, path: Path) -> tuple[dict[str, tuple[int, int, bool, torch.dtype]], list[str]]:
    """Per-module (bits, group_size, sym, scale dtype) and the ScaledActivation paths."""
    where = path / "config.json"
    if not isinstance(qcfg, dict):
        raise CheckpointError(f"{where}: no quantization_config: not a quantized checkpoint")
    method = qcfg.get("quant_method")
    if method != QUANT_METHOD:
        hint = {"awq": " (use cat_core.io.import_awq)", "gptq": " (use cat_core.io.import_gptq)"}.get(str(method), "")
        raise CheckpointError(
            f"{where}: quant_method is {method!r}, not {QUANT_METHOD!r}: not a native Caterpillar checkpoint{hint}"
        )
    if qcfg.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format_version {qcfg.get('format_version')!r} is not supported (this version reads "
            f"{FORMAT_VERSION}; version 1 came from cat-core 0.1, whose zero-point layout has since changed: "
            "quantize the model again)"
        )
    try:
        glob = {k: qcfg[k] for k in ("bits", "group_size", "sym", "scale_dtype")}
        modules, acts = list(qcfg["modules"]), list(qcfg.get("activation_scales", []))
        overrides = dict(qcfg.get("module_overrides", {}))
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{where}: incomplete quantization_config (missing {e})") from e
    out = {}
    for name in modules:
        s = {**glob, **overrides.get(name, {})}
        bits, gs, sym = s["bits"], s["group_size"], s["sym"]
        scale_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}.get(s["scale_dtype"])
        if bits not in (2, 3, 4, 8):
            raise CheckpointError(f"{where}: unsupported bits={bits!r} for {name!r} (expected 2, 3, 4 or 8)")
        if not isinstance(gs, int) or isinstance(gs, bool) or not (gs == -1 or (gs > 0 and gs % 32 == 0)):
            raise CheckpointError(f"{where}: invalid group_size={gs!r} for {name!r}")
        if scale_dtype is None:
            raise CheckpointError(f"{where}: invalid scale_dtype={s['scale_dtype']!r} for {name!r}")
        out[name] = (bits, gs, bool(sym), scale_dtype)
    return out, acts


def _hint(q: dict[str, Any]) -> str:
    over = f", {len(q.get('module_overrides', {}))} module override(s)" if q.get("module_overrides") else ""
    return f"quantization_config: bits={q['bits']}, group_size={q['group_size']}, sym={q['sym']}{over}"


def prepare_skeleton(
    model: nn.Module,
    qcfg: Any,
    path: Path,
    headers: dict[str, tuple[str, list[int], torch.dtype]],
    activation_dtype: torch.dtype | None = None,
) -> None:
    """Turn a meta skeleton into the checkpoint's model: unfuse the recorded experts, insert the
    quantized linears and the scaled activations (in ``activation_dtype``, else as stored).
    Shared by :func:`load_quantized` and the transformers quantizer."""
    settings, acts = _settings(qcfg, path)
    unfuse_recorded(model, qcfg, path)
    install_quant_linears(model, settings)
    shapes = {}
    for p in acts:
        if f"{p}.scales" not in headers:
            raise CheckpointError(f"{path}: missing tensor '{p}.scales' (activation_scales in config.json)")
        _, shape, dt = headers[f"{p}.scales"]
        shapes[p] = (shape, activation_dtype or dt)
    install_scaled_activations(model, shapes)


def load_quantized(
    path: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, Any]:
    """Load a checkpoint written by :func:`save_quantized`; returns ``(model, tokenizer or None)``.

    The model is built from config.json on the meta device (nothing is downloaded or
    initialized), fused experts recorded as unfused (``unfused_experts``) are unfused the same
    way, its quantized linears and scaled activations are inserted, and every tensor's
    name, shape and dtype is checked against that skeleton before any data is read.
    ``dtype`` converts the unquantized floating weights (scales keep their storage dtype);
    ``model_kwargs`` go to ``AutoModelForCausalLM.from_config`` (e.g.
    ``{"attn_implementation": "eager"}``).
    Where the model fits (float32 on the CPU, a covered architecture) its decode steps (batches
    and left padding included) take the native step (:mod:`cat_core.native_decode`; ``CAT_NATIVE_DECODE=0`` turns that off).
    Raises :class:`CheckpointError` naming the file and tensor on any mismatch.
    """
    path = Path(path)
    cfg = read_config(path)
    _settings(cfg.get("quantization_config"), path)  # a bad config fails before the model is built
    model, _ = skeleton(cfg, model_kwargs)
    headers = read_headers(path)
    prepare_skeleton(model, cfg["quantization_config"], path, headers)
    check_tensors(path, headers, expected_from(model), hint=_hint(cfg["quantization_config"]))
    state = load_tensors(path, headers, torch.device(device))
    finish_load(model, state, path, dtype, torch.device(device))
    tokenizer = load_generation_and_tokenizer(model, path)
    from cat_core.native_decode import try_enable_native_decode

    try_enable_native_decode(model)
    return model, tokenizer
