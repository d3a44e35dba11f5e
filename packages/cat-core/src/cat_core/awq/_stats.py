"""Streamed per-input-channel activation statistics (mean |x|), never holding the activations."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AbsMeanRecorder"]


class AbsMeanRecorder:
    """Accumulates ``sum |x|`` over tokens of a module's first input while attached."""

    def __init__(self, module: nn.Module) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        x = x.reshape(-1, x.shape[-1])
        # float32 sums: bf16 accumulation over 65k tokens loses most of the mantissa.
        part = x.abs().sum(dim=0, dtype=torch.float32)
        self.total = part if self.total is None else self.total.add_(part)
        self.count += x.shape[0]

    def mean(self) -> torch.Tensor:
        if self.total is None:
            raise RuntimeError("the module never ran: no statistics")
        return self.total / self.count

    def remove(self) -> None:
        self._handle.remove()
