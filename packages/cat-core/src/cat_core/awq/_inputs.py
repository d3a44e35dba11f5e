"""Checks of what quantize / rtn_quantize are given, run before any search: seconds of checking
instead of a NaN found (or an IndexError raised) minutes into the work."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from cat_core.awq._errors import AWQError


_SLICE = 1 << 22


def check_finite(named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Raise :class:`AWQError` naming the first floating-point tensor holding NaN or inf."""
    for name, t in named:
        if t is None or not t.is_floating_point() or t.device.type == "meta" or t.numel() == 0:
            continue
        flat = t.reshape(-1)
        # in slices: isfinite makes full-size temporaries (an 8B model's head is 2 GB in float32)
        bad = sum(int((~torch.isfinite(flat[i:i + _SLICE])).sum()) for i in range(0, flat.numel(), _SLICE))
        if bad:
            raise AWQError(
                f"{name} holds {bad} non-finite value(s) (NaN/inf) out of {t.numel()}: the model's "
                f"weights are broken, quantizing them cannot give a usable model; reload or repair it"
            )


def check_model_finite(model: nn.Module) -> None:
    """Every parameter and buffer of ``model`` is finite (shared tensors checked once)."""
    seen: set[int] = set()

    def unique():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                yield name, t.detach()

    check_finite(unique())


def check_token_ids(ids: torch.Tensor, model: nn.Module, what: str = "calib") -> None:
    """Every id indexes a row of the model's input embedding (ValueError naming ``what``)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(emb, "num_embeddings", None)
    if vocab is None:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab:
        bad = lo if lo < 0 else hi
        where = tuple(int(i) for i in (ids == bad).nonzero()[0])
        raise ValueError(
            f"{what}: token id {bad} at {list(where)} is outside the model's vocabulary of {vocab} "
            f"(ids must be in [0, {vocab - 1}]); were the ids made with another tokenizer?"
        )
