"""The one write path of every layout (native, AWQ GEMM, GPTQ): the model's tensors, each once and
offloaded ones fetched, with the quantized layers' arrays as the layout stores them, plus
config.json and the tokenizer, in a directory that appears only once complete."""

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
from cat_core.io._config import write_config
from cat_core.io._experts import unfused_record
from cat_core.io._state import (
    cast_unquantized,
    check_storage_dtype,
    quantized_modules,
    resolve_offloaded,
    unique_state,
)
from cat_core.nn import QuantLinear

#: The buffers of a QuantLinear a foreign layout replaces by its own arrays (the bias stays).
_NATIVE_ARRAYS = ("qweight", "scales", "qzeros")


def structure_record(model: nn.Module) -> dict[str, Any]:
    """The entries of ``quantization_config`` that let a reader rebuild the module tree before it
    loads a tensor: the scaled activations and the unfused experts. Every layout records them."""
    from cat_core.graph import ScaledActivation

    acts = [n for n, m in model.named_modules() if isinstance(m, ScaledActivation)]
    return {"activation_scales": acts, **unfused_record(model)}


def write_checkpoint(
    model: nn.Module,
    out_dir: str | os.PathLike,
    tokenizer: Any,
    qcfg: dict[str, Any],
    metadata: dict[str, str],
    *,
    overwrite: bool,
    max_shard_size: int | str,
    progress: bool,
    dtype: torch.dtype | None,
    convert: Callable[[str, QuantLinear], dict[str, torch.Tensor]] | None = None,
    extra_json: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write ``model`` to ``out_dir`` with ``qcfg`` as its ``quantization_config``.

    ``convert(name, layer)`` gives the arrays (suffix -> tensor) a foreign layout stores in place
    of a quantized layer's native buffers; None stores the buffers as they are. The other floating
    tensors are stored in ``dtype`` when given. ``extra_json``: more files (name -> content)."""
    from cat_core.stream import lazy_weights

    check_storage_dtype(dtype)
    mods = quantized_modules(model)
    lazy = lazy_weights(model)
    # every layer converted before anything is written: a layer the layout cannot hold fails first
    if convert is None:
        arrays = None
    elif lazy is None:
        arrays = {name: convert(name, mod) for name, mod in mods.items()}
    else:  # converted block by block and spilled: the placeholders only size the shards
        arrays = lazy.convert_layers(mods, convert)
    tensors: dict[str, torch.Tensor] = {}
    keep: set[str] = set()  # the layers' own arrays keep their storage dtype
    state = unique_state(model)
    for key, t in (state if lazy is not None else resolve_offloaded(model, state)).items():
        owner, _, attr = key.rpartition(".")
        if owner in mods and attr in _NATIVE_ARRAYS:
            if arrays is None:
                tensors[key] = t
                keep.add(key)
            elif attr == "qweight":
                parts = {f"{owner}.{s}": v for s, v in arrays[owner].items()}
                tensors.update(parts)
                keep.update(parts)
            continue
        tensors[key] = t
    tensors = cast_unquantized(tensors, dtype, keep=keep)
    with atomic_dir(out_dir, overwrite) as tmp:
        write_config(tmp, model, qcfg, tokenizer, dtype)
        for fname, content in (extra_json or {}).items():
            (tmp / fname).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        # a lazily loaded model's tensors are read shard by shard (placeholders size the shards)
        fetch = None if lazy is None else (lambda key, like: lazy.read(key).to(like.dtype))
        if lazy is not None:  # a shard is in memory while written: keep it within the budget
            max_shard_size = min(_shards.parse_size(max_shard_size), lazy.write_bytes)
        _shards.write_shards(tmp, tensors, max_shard_size, metadata, progress, fetch=fetch)
    return Path(out_dir).absolute()
