"""The shared read path of the foreign layouts (AWQ GEMM, GPTQ): a model whose quantized linears
are stored in another tool's arrays, converted to QuantLinear layers as it loads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cat_core.io import _shards
from cat_core.io._config import load_generation_and_tokenizer, read_config
from cat_core.io._errors import CheckpointError
from cat_core.io._experts import unfuse_for_names, unfuse_recorded
from cat_core.io._skeleton import (
    check_tensors,
    expected_from,
    finish_load,
    install_scaled_activations,
    skeleton,
)
from cat_core.nn import QuantLinear, _linear_at, _set_module


def read_foreign_config(path: Path, method: str, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """config.json of the checkpoint at ``path`` and its ``quantization_config``, which must name
    ``method``; ``what`` ends the error otherwise ("not {what}")."""
    cfg = read_config(path)
    q = cfg.get("quantization_config")
    if not isinstance(q, dict) or str(q.get("quant_method", "")).lower() != method:
        got = q.get("quant_method") if isinstance(q, dict) else None
        raise CheckpointError(
            f"{path / 'config.json'}: quant_method is {got!r}, not {method!r}: not {what}"
        )
    return cfg, q


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
        mod, shape = _linear_at(
            model, name, error=CheckpointError,
            missing=f"{path}: tensor '{name}.qweight' belongs to no module of this model",
            not_linear=f"{path}: '{name}' is a {{kind}}, not a linear layer",
        )
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
