"""Applying scales to a block: shared by discovery (verification) and the AWQ search."""

from __future__ import annotations

import torch
from torch import nn

from ._types import GraphError, ScaleGroup, _along


def scale_consumers(block: nn.Module, group: ScaleGroup, scales: torch.Tensor) -> None:
    """Multiply the consumers' input channels by `scales` (fp32 math, stored in the weights' dtype)."""
    s = scales.float()
    for ref in group.weights:
        w = ref.tensor(block)
        d = ref.tensor_in_dim
        if w.shape[d] != s.numel():
            raise GraphError(f"{ref.name}: {w.shape[d]} input channels, got {s.numel()} scales")
        w.data.copy_((w.data.float() * _along(s.to(w.device), w.dim(), d)).to(w.dtype))


@torch.no_grad()
def apply_scales(block: nn.Module, group: ScaleGroup, scales: torch.Tensor) -> None:
    """Fold 1/scales into the producer of `group` and scales into its consumers, in place.

    The block computes the same function afterwards (up to rounding). Scales that the fold
    cannot represent exactly (grouped-query attention ties) are first made admissible with
    `group.tie`, so callers that search scales should evaluate `group.tie(s)`.
    """
    if scales.dim() != 1 or scales.numel() != group.channels:
        raise GraphError(
            f"group {group.producer}: expected {group.channels} scales, got shape {tuple(scales.shape)}"
        )
    s = group.tie(scales.detach().float())
    group.fold.apply(block, s)
    scale_consumers(block, group, s)
