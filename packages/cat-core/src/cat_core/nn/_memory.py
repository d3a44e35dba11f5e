"""How many bytes the quantized layers of a model take, against the same weights in float16."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cat_core.nn._linear import QuantLinear


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def memory_report(model: nn.Module) -> dict[str, Any]:
    """Bytes of every :class:`QuantLinear` vs the same weight in float16.

    Returns ``{"layers": {name: {"bytes", "fp16_bytes", "ratio", "bits_per_weight"}},
    "bytes", "fp16_bytes", "ratio", "bits_per_weight"}`` where ``bytes`` counts
    qweight + scales + qzeros (not the bias, which the fp16 layer has too) and ``fp16_bytes`` is
    ``N * K * 2``. Whole-model numbers sum over the quantized linears only.
    """
    layers: dict[str, dict[str, float]] = {}
    tot = tot16 = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, QuantLinear):
            continue
        b = _nbytes(mod.qweight) + _nbytes(mod.scales) + _nbytes(mod.qzeros)
        b16 = mod.out_features * mod.in_features * 2
        w = mod.out_features * mod.in_features
        layers[name] = {"bytes": b, "fp16_bytes": b16, "ratio": b / b16, "bits_per_weight": 8 * b / w}
        tot += b
        tot16 += b16
    return {
        "layers": layers,
        "bytes": tot,
        "fp16_bytes": tot16,
        "ratio": tot / tot16 if tot16 else float("nan"),
        "bits_per_weight": 16 * tot / tot16 if tot16 else float("nan"),
    }
