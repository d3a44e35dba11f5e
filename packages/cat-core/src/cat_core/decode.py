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

_ARG: dict[type, tuple[str, str | None]] = {}


def _args(model: nn.Module) -> tuple[str, str | None]:
    """The model's names for the cache argument and for "logits of the last positions only"
    (``logits_to_keep``; ``num_logits_to_keep`` in transformers 4.45-4.49; None: not supported)."""
    cls = type(model)
    if cls not in _ARG:
        params = inspect.signature(model.forward).parameters
        keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        _ARG[cls] = ("cache" if "cache" in params else "past_key_values", keep)
    return _ARG[cls]


def cached_forward(model: nn.Module, input_ids: torch.Tensor, cache: Any = None, *,
                   last_only: bool = False) -> tuple[torch.Tensor, Any]:
    """Run ``model`` on ``input_ids`` ``[batch, new tokens]`` after the tokens held in ``cache``
    (None: the first call). Returns ``(logits [batch, new tokens, vocab], cache)``; pass the
    cache back in with the next tokens. ``last_only``: compute the logits of the last position
    only (``[batch, 1, vocab]``), as ``generate()`` does, where the model supports it."""
    cache_arg, keep_arg = _args(model)
    kw = {cache_arg: cache}
    if last_only and keep_arg is not None:
        kw[keep_arg] = 1
    out = model(input_ids=input_ids, use_cache=True, **kw)
    new = out["cache"] if "cache" in out else out["past_key_values"]
    return out.logits, new
