"""Validators shared by the settings classes: each names the field and what was expected."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
SEARCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def check_int(value: Any, field: str, *, minimum: int = 1, optional: bool = False) -> int | None:
    if optional and value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        none = "None or " if optional else ""
        raise ValueError(f"{field} must be {none}an int >= {minimum}, got {value!r}")
    return value


def check_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be a bool, got {value!r}")
    return value


def check_fields(obj: Any, prefix: str, *, ints: Sequence[str] = (), optional_ints: Sequence[str] = (),
                 bools: Sequence[str] = ()) -> None:
    """Check the named fields of a settings object; errors name them as ``prefix.field``."""
    for name in ints:
        check_int(getattr(obj, name), f"{prefix}.{name}")
    for name in optional_ints:
        check_int(getattr(obj, name), f"{prefix}.{name}", optional=True)
    for name in bools:
        check_bool(getattr(obj, name), f"{prefix}.{name}")


def check_float(value: Any, field: str, lo: float, hi: float, *, hi_closed: bool = False, what: str = "") -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = lo < v <= hi if hi_closed else lo < v < hi
    if not ok:
        bracket = "]" if hi_closed else ")"
        raise ValueError(f"{field} must be a float in ({lo:g}, {hi:g}{bracket}{what}, got {value!r}")
    return float(value)


def check_choice(value: Any, field: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{field} must be one of {tuple(choices)}, got {value!r}")
    return value


def dtype_name(value: Any, allowed: dict[str, torch.dtype], field: str) -> str:
    if isinstance(value, torch.dtype):
        for name, dt in allowed.items():
            if dt == value:
                return name
    elif isinstance(value, str):
        name = value.removeprefix("torch.")
        name = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32"}.get(name, name)
        if name in allowed:
            return name
    raise ValueError(f"{field} must be one of {sorted(allowed)} (a name or torch dtype), got {value!r}")


def patterns(value: Any, field: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{field} must be a sequence of glob patterns, got {value!r}") from None
    for p in items:
        if not isinstance(p, str) or not p:
            raise ValueError(f"{field} must hold non-empty strings (glob patterns), got {p!r}")
    return items


def matches_any(name: str, patterns: Sequence[str]) -> bool:
    """True when the dotted module ``name`` matches one of the glob ``patterns``.

    A pattern also matches as a suffix on a dot boundary, so ``"lm_head"`` matches
    ``"model.lm_head"`` and ``"mlp.gate"`` matches ``"model.layers.3.mlp.gate"``.
    """
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, "*." + p) for p in patterns)


def auto_search_dtype(device: torch.device | str) -> str:
    """``"bfloat16"`` where ``device`` runs bfloat16 matmuls natively (a CUDA device that supports
    it; a CPU with AVX512-BF16 or AMX), else ``"float32"``.

    The searches only rank candidates, and bf16 ranks them as float32 does on SmolLM2 (identical
    alphas and weights, measured) at about half the time; emulated bf16 would be slower.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "float32"
        return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"
    return "float32"
