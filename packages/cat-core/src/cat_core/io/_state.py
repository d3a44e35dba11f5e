"""What a writer takes from a quantized model: its tensors (each once, offloaded ones fetched),
their storage dtype, and its quantized and unquantized linears."""

from __future__ import annotations

import torch
from torch import nn

from cat_core.nn import QuantLinear, linear_shape


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Persistent params/buffers, each tensor once (a tied lm_head is kept under the first name
    only; ``tie_weights`` restores it on load). Works on meta models too (identity, not storage)."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        out[name] = t
    return out


def resolve_offloaded(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with every ``meta`` entry replaced by its value from accelerate's offload store
    (a model dispatched with cpu/disk offloading keeps those weights there). Raises ValueError
    for a meta tensor that is not offloaded (the model has no values to save)."""
    from cat_core._offload import offload_index, offloaded_tensor

    index = offload_index(model) if any(t.device.type == "meta" for t in tensors.values()) else {}
    out = {}
    for name, t in tensors.items():
        if t.device.type == "meta":
            real = offloaded_tensor(model, name, index)
            if real is None:
                raise ValueError(f"{name}: on the meta device and not offloaded by accelerate; "
                                 "the model has no values to save")
            t = real
        out[name] = t
    return out

_STORAGE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_storage_dtype(dtype: torch.dtype | None) -> None:
    if dtype is not None and dtype not in _STORAGE_DTYPES:
        raise ValueError(f"dtype must be torch.float16, torch.bfloat16, torch.float32 or None, got {dtype!r}")


def cast_unquantized(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None,
                     keep: set[str]) -> dict[str, torch.Tensor]:
    """``tensors`` with every floating tensor not named in ``keep`` converted to ``dtype``.

    The skeleton a reader builds from config.json has one dtype for all its floating tensors, so
    the writer stores them in one dtype and records it; the quantized layers' own arrays (codes,
    scales in their storage dtype, foreign layouts) are listed in ``keep``."""
    if dtype is None:
        return tensors
    return {k: (t.to(dtype) if t.is_floating_point() and k not in keep and t.dtype != dtype else t)
            for k, t in tensors.items()}


def quantized_modules(model: nn.Module) -> dict[str, QuantLinear]:
    mods = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not mods:
        raise ValueError("the model has no QuantLinear modules: call cat_core.nn.replace_linears first")
    return mods


def uniform_settings(mods: dict[str, QuantLinear]) -> tuple[int, int, bool, torch.dtype]:
    """(bits, group_size, sym, scale dtype) shared by every QuantLinear, else a clear error."""
    seen = {(m.bits, m.group_size, m.sym, m.scales.dtype) for m in mods.values()}
    if len(seen) != 1:
        raise ValueError(f"all quantized linears must share bits/group_size/sym/scale dtype, found {sorted(map(str, seen))}")
    return next(iter(seen))


def unconverted_linears(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if not isinstance(m, QuantLinear) and linear_shape(m) is not None]
