"""What a native checkpoint's ``quantization_config`` says about each linear, for the vLLM plugin.

Pure Python (no vLLM): vLLM hands the plugin the ``quantization_config`` dict of config.json and
then asks, layer by layer and under vLLM's own layer names, how each layer is quantized. vLLM
fuses some linears (``qkv_proj`` = q, k, v; ``gate_up_proj`` = gate, up) that the checkpoint
stores separately: a fused layer is quantized only if all its parts are, with one setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# The native format's identity (cat_core.io._native writes these; a test checks they agree).
QUANT_METHOD = "caterpillar"
FORMAT_VERSION = 2

_SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class LinearSettings:
    """How one linear (or a fused group of them) is stored."""

    bits: int
    group_size: int  # -1: one group per row
    sym: bool
    scale_dtype: torch.dtype


@dataclass(frozen=True)
class CheckpointSettings:
    """The quantized linears of a checkpoint, by module name."""

    modules: dict[str, LinearSettings]


def _error(msg: str) -> ValueError:
    return ValueError(f"caterpillar: {msg}")


def _linear_settings(name: str, s: Mapping[str, Any]) -> LinearSettings:
    bits, gs, sym, sd = s.get("bits"), s.get("group_size"), s.get("sym"), s.get("scale_dtype")
    if bits not in (2, 3, 4, 8) or isinstance(bits, bool):
        raise _error(f"quantization_config: bits={bits!r} for {name!r} (expected 2, 3, 4 or 8)")
    if not isinstance(gs, int) or isinstance(gs, bool) or not (gs == -1 or (gs > 0 and gs % 32 == 0)):
        raise _error(f"quantization_config: group_size={gs!r} for {name!r} (expected -1 or a positive multiple of 32)")
    if not isinstance(sym, bool):
        raise _error(f"quantization_config: sym={sym!r} for {name!r} (expected true or false)")
    if sd not in _SCALE_DTYPES:
        raise _error(f"quantization_config: scale_dtype={sd!r} for {name!r} (expected one of {sorted(_SCALE_DTYPES)})")
    return LinearSettings(bits, gs, sym, _SCALE_DTYPES[sd])


def parse(qcfg: Any) -> CheckpointSettings:
    """The settings of every quantized linear; a ValueError naming the field for anything this
    plugin cannot serve (another format version, activation scales, unfused MoE experts)."""
    if not isinstance(qcfg, Mapping):
        raise _error(f"quantization_config must be a JSON object, got {type(qcfg).__name__}")
    method = qcfg.get("quant_method")
    if method != QUANT_METHOD:
        raise _error(f"quantization_config.quant_method is {method!r}, not {QUANT_METHOD!r}")
    if qcfg.get("format_version") != FORMAT_VERSION:
        raise _error(
            f"quantization_config.format_version {qcfg.get('format_version')!r} is not supported "
            f"(this plugin reads version {FORMAT_VERSION}: quantize the model again with this cat-core)"
        )
    acts = qcfg.get("activation_scales") or []
    if acts:
        # AWQ could not fold these scales into a preceding layer (e.g. across GELU in GPT-2
        # style MLPs); vLLM's model code has no module in that place to carry them.
        raise _error(
            f"this checkpoint scales activations inside {len(acts)} module(s) (activation_scales, e.g. "
            f"{acts[0]!r}), which vLLM's model code cannot carry; serve it with cat-generate or transformers"
        )
    if qcfg.get("unfused_experts"):
        raise _error(
            "this checkpoint holds mixture-of-experts layers quantized expert by expert (unfused_experts); "
            "the vLLM plugin serves dense linears only"
        )
    modules = qcfg.get("modules")
    overrides = qcfg.get("module_overrides") or {}
    if not isinstance(modules, Sequence) or isinstance(modules, str) or not modules:
        raise _error("quantization_config.modules must be a non-empty list of module names")
    if not isinstance(overrides, Mapping):
        raise _error("quantization_config.module_overrides must be a JSON object")
    glob = {k: qcfg.get(k) for k in ("bits", "group_size", "sym", "scale_dtype")}
    out = {}
    for name in modules:
        if not isinstance(name, str):
            raise _error(f"quantization_config.modules holds {name!r}, not a module name")
        over = overrides.get(name, {})
        if not isinstance(over, Mapping):
            raise _error(f"quantization_config.module_overrides[{name!r}] must be a JSON object")
        out[name] = _linear_settings(name, {**glob, **over})
    return CheckpointSettings(out)


@dataclass(frozen=True)
class AwqSettings:
    """An AWQ-GEMM checkpoint (AutoAWQ's layout, also ``cat-quantize --export awq``) that the plugin
    serves with cat-kernels: 4-bit codes with zero points, fp16 scales."""

    group_size: int
    modules_to_not_convert: tuple[str, ...]


def awq_problem(qcfg: Mapping[str, Any]) -> str | None:
    """Why the plugin cannot serve this ``quant_method: awq`` config (None: it can)."""
    version = str(qcfg.get("version", "gemm")).lower()
    bits = qcfg.get("bits", qcfg.get("w_bit"))
    gs = qcfg.get("group_size", qcfg.get("q_group_size"))
    if version != "gemm":
        return f"AWQ version {version!r} (only 'gemm')"
    if bits != 4 or isinstance(bits, bool):
        return f"AWQ bits={bits!r} (only 4)"
    if qcfg.get("zero_point", True) is not True:
        return "AWQ without zero points"
    if not isinstance(gs, int) or isinstance(gs, bool) or not (gs == -1 or (gs > 0 and gs % 32 == 0)):
        return f"AWQ group_size={gs!r} (expected -1 or a positive multiple of 32)"
    return None


def parse_awq(qcfg: Any) -> AwqSettings:
    """The settings of an AWQ-GEMM ``quantization_config``; a ValueError for one it cannot serve."""
    if not isinstance(qcfg, Mapping) or str(qcfg.get("quant_method", "")).lower() != "awq":
        raise _error("not an AWQ quantization_config (quant_method must be 'awq')")
    problem = awq_problem(qcfg)
    if problem:
        raise _error(f"quantization_config: {problem} cannot be served by the caterpillar method")
    skip = qcfg.get("modules_to_not_convert") or ()
    if isinstance(skip, str) or not all(isinstance(m, str) for m in skip):
        raise _error("quantization_config.modules_to_not_convert must be a list of module names")
    return AwqSettings(int(qcfg.get("group_size", qcfg.get("q_group_size"))), tuple(skip))


def for_layer(
    settings: CheckpointSettings, prefix: str, packed_modules_mapping: Mapping[str, Sequence[str]]
) -> LinearSettings | None:
    """The settings of vLLM's layer ``prefix`` (None: not quantized). A fused layer (its last name
    a key of ``packed_modules_mapping``) takes its parts' common settings."""
    parent, _, leaf = prefix.rpartition(".")
    parts = list(packed_modules_mapping.get(leaf, [leaf]))
    names = [f"{parent}.{p}" if parent else p for p in parts]
    found = {n: settings.modules.get(n) for n in names}
    quantized = [n for n, s in found.items() if s is not None]
    if not quantized:
        return None
    if len(quantized) != len(names):
        missing = [n for n in names if found[n] is None]
        raise _error(
            f"vLLM runs {names} as one fused layer {prefix!r}, but {missing} are not quantized in this "
            "checkpoint: a fused layer cannot be half quantized"
        )
    distinct = set(found.values())
    if len(distinct) != 1:
        raise _error(
            f"vLLM runs {names} as one fused layer {prefix!r}, but they are quantized differently "
            f"({', '.join(f'{n}: {found[n]}' for n in names)})"
        )
    return distinct.pop()
