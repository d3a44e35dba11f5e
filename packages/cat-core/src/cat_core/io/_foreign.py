"""The shared write and read paths of the foreign layouts (AWQ GEMM, GPTQ): a model whose
quantized linears are stored in another tool's arrays."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cat_core.io import _shards
from cat_core.io._atomic import atomic_dir
from cat_core.io._config import load_generation_and_tokenizer, write_config
from cat_core.io._errors import CheckpointError
from cat_core.io._experts import unfuse_for_names, unfuse_recorded
from cat_core.io._skeleton import (
    check_tensors,
    expected_from,
    finish_load,
    install_scaled_activations,
    skeleton,
)
from cat_core.io._state import (
    cast_unquantized,
    check_storage_dtype,
    quantized_modules,
    resolve_offloaded,
    unique_state,
)
from cat_core.nn import QuantLinear, _module_at, _set_module, linear_shape


def export_dir(
    model: nn.Module,
    out_dir: str | os.PathLike,
    tokenizer: Any,
    overwrite: bool,
    max_shard_size: int | str,
    qcfg: dict[str, Any],
    convert: Callable[[str, QuantLinear], dict[str, torch.Tensor]],
    progress: bool,
    extra_json: dict[str, dict[str, Any]] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` with each QuantLinear's native buffers replaced by ``convert(name, mod)``
    (suffix -> tensor; the bias stays under its own name); the other floating tensors in
    ``dtype`` when given."""
    check_storage_dtype(dtype)
    mods = quantized_modules(model)
    converted = {name: convert(name, mod) for name, mod in mods.items()}  # errors before any IO
    tensors: dict[str, torch.Tensor] = {}
    for key, t in resolve_offloaded(model, unique_state(model)).items():
        owner, _, attr = key.rpartition(".")
        if owner in mods and attr in ("qweight", "scales", "qzeros"):
            if attr == "qweight":
                tensors.update({f"{owner}.{s}": v for s, v in converted[owner].items()})
            continue
        tensors[key] = t
    foreign = {f"{owner}.{s}" for owner, parts in converted.items() for s in parts}
    tensors = cast_unquantized(tensors, dtype, keep=foreign)
    meta = {"format": "pt", "quant_method": str(qcfg["quant_method"])}
    with atomic_dir(out_dir, overwrite) as tmp:
        write_config(tmp, model, qcfg, tokenizer, dtype)
        for fname, content in (extra_json or {}).items():
            (tmp / fname).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        _shards.write_shards(tmp, tensors, max_shard_size, meta, progress)
    return Path(out_dir).absolute()


def import_dir(
    path: Path,
    cfg: dict[str, Any],
    foreign_shapes: Callable[[int, int], dict[str, tuple[list[int], torch.dtype]]],
    to_native: Callable[[str, dict[str, torch.Tensor], int, int], Any],
    device: torch.device | str,
    dtype: torch.dtype | None,
    hint: str,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, Any]:
    """Build the skeleton, insert a QuantLinear for every ``<name>.qweight`` in the files, check
    all tensors (``foreign_shapes(n, k)``: suffix -> expected shape/dtype), convert each layer with
    ``to_native(name, {suffix: tensor}, n, k) -> QuantizedTensor`` and load the rest."""
    model, _ = skeleton(cfg, model_kwargs)
    unfuse_recorded(model, cfg.get("quantization_config"), path)
    headers = _shards.read_headers(path)
    names = sorted(k[: -len(".qweight")] for k in headers if k.endswith(".qweight"))
    if not names:
        raise CheckpointError(f"{path}: no '*.qweight' tensors: not a quantized checkpoint")
    unfuse_for_names(model, names, path)
    # placeholders give the linear shapes and the expected unquantized tensors
    shapes = {}
    for name in names:
        mod = _module_at(model, name)
        if mod is None:
            raise CheckpointError(f"{path}: tensor '{name}.qweight' belongs to no module of this model")
        shape = linear_shape(mod)
        if shape is None:
            raise CheckpointError(f"{path}: '{name}' is a {type(mod).__name__}, not a linear layer")
        shapes[name] = (shape, getattr(mod, "bias", None))
    qcfg = cfg.get("quantization_config") or {}
    acts = qcfg.get("activation_scales")
    if acts is None:  # checkpoints from other tools: any 1-D '.scales' outside a quantized layer
        acts = [k[: -len(".scales")] for k, (_, shp, _) in headers.items()
                if k.endswith(".scales") and k[: -len(".scales")] not in shapes and len(shp) == 1]
    install_scaled_activations(model, {p: tuple(headers[f"{p}.scales"][1:]) for p in acts if f"{p}.scales" in headers})
    expected = expected_from(model)
    for name, ((n, k), _) in shapes.items():
        expected.pop(f"{name}.weight", None)
        for suffix, spec in foreign_shapes(n, k).items():
            expected[f"{name}.{suffix}"] = spec
    check_tensors(path, headers, expected, hint)
    raw = _shards.load_tensors(path, headers, torch.device("cpu"))
    state: dict[str, torch.Tensor] = {}
    for name, ((n, k), _) in shapes.items():
        parts = {s: raw.pop(f"{name}.{s}") for s in foreign_shapes(n, k)}
        qt = to_native(name, parts, n, k)
        bias = raw.pop(f"{name}.bias", None)
        _set_module(model, name, QuantLinear.from_quantized_tensor(qt, bias))
    state.update(raw)
    finish_load(model, state, path, dtype, torch.device(device))
    tokenizer = load_generation_and_tokenizer(model, path)
    return model, tokenizer
