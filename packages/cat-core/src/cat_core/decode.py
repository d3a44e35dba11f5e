"""A forward pass that keeps the KV cache, whichever transformers is installed.

transformers 5 renamed the cache argument and output from ``past_key_values`` to ``cache`` and
warns on the old name, which a later release removes; 4.x knows only the old one. The sampling
loops (self-calibration, cat-bench, the decode regression check) step through this function so
that none of them breaks, or floods the log, on either side of the rename.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

_ARG: dict[type, str] = {}


def _cache_arg(model: nn.Module) -> str:
    cls = type(model)
    if cls not in _ARG:
        params = inspect.signature(model.forward).parameters
        _ARG[cls] = "cache" if "cache" in params else "past_key_values"
    return _ARG[cls]


def cached_forward(model: nn.Module, input_ids: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
    """Run ``model`` on ``input_ids`` ``[batch, new tokens]`` after the tokens held in ``cache``
    (None: the first call). Returns ``(logits [batch, new tokens, vocab], cache)``; pass the
    cache back in with the next tokens."""
    out = model(input_ids=input_ids, use_cache=True, **{_cache_arg(model): cache})
    new = out["cache"] if "cache" in out else out["past_key_values"]
    return out.logits, new
