"""One decoder block while the stages work on it: its linears, its calls, what the stages leave
for the ones after them, and the run-wide results they add to."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from torch import nn

from cat_core.awq._capture import BlockCall
from cat_core.awq._errors import AWQError
from cat_core.awq._grams import Parts
from cat_core.awq._learned_round import LinearStart
from cat_core.config import QuantConfig, matches_any
from cat_core.quant import QuantizedTensor

__all__ = ["GroupReport", "Linear", "Results", "BlockWork", "block_linears"]

#: (path in the block, full name, module) of a linear that gets quantized
Linear = tuple[str, str, nn.Linear]


@dataclasses.dataclass
class GroupReport:
    block: int
    group: str
    alpha: float | None
    rtn_loss: float
    best_loss: float
    #: why the search was skipped (its consumers keep identity scales, i.e. plain round-to-nearest);
    #: the losses are then NaN. E.g. an expert the router sent no calibration token to.
    skipped: str | None = None
    #: kind of the producer the scales fold into ("norm", "linear", "activation"); None for a
    #: group without one (see ``unscaled``)
    fold: str | None = None
    #: why the group has no input scaling at all (``cat_core.graph.UnscaledGroup``: no producer can
    #: absorb 1/s, e.g. q/k/v of a post-norm-only block reading the residual stream); its
    #: consumers are still clipped and rounded like every other linear.
    unscaled: str | None = None


def block_linears(block: nn.Module, prefix: str, config: QuantConfig) -> list[Linear]:
    """(path in block, full name, module) of every linear of ``block`` that gets quantized."""
    out = []
    for rel, mod in block.named_modules():
        if isinstance(mod, nn.Linear) and rel:
            full = f"{prefix}.{rel}" if prefix else rel
            if not matches_any(full, config.modules_to_not_convert):
                out.append((rel, full, mod))
    return out


class Results:
    """What the whole run returns and reports: codes per linear, a report per group, wall time
    per stage (seconds since the previous tick), and the progress bar."""

    def __init__(self, timings: dict[str, float] | None, bar: Any) -> None:
        self.tensors: dict[str, QuantizedTensor] = {}
        self.reports: list[GroupReport] = []
        self.skipped: list[str] = []
        self.timings = {} if timings is None else timings
        self.bar = bar
        self._t = time.perf_counter()

    def tick(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = self.timings.get(phase, 0.0) + now - self._t
        self._t = now

    def add(self, key: str, value: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + value

    def status(self, text: str, refresh: bool = False) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=refresh)


@dataclasses.dataclass
class BlockWork:
    """The block being quantized. Its module is on ``device`` while the stages run."""

    graph: Any  # the graph's block: path, index, module, groups, unscaled
    position: int  # among the blocks being quantized (seeds and captured calls are per position)
    device: torch.device
    config: QuantConfig
    calls: list[BlockCall]  # the block's arguments per calibration chunk
    linears: list[Linear]
    results: Results
    #: activation statistics per scale group (the statistics stage)
    means: list[torch.Tensor | None] = dataclasses.field(default_factory=list)
    #: input Grams recorded by the statistics stage, in the folded space once the scales are folded
    recorded: Parts | None = None
    #: learned rounding's starting point per linear (when rounding is Learned)
    starts: list[LinearStart] = dataclasses.field(default_factory=list)

    @property
    def module(self) -> nn.Module:
        return self.graph.module

    @property
    def seed(self) -> int:
        return self.config.seed + self.position

    def quantized_ids(self) -> set[int]:
        return {id(mod.weight) for _, _, mod in self.linears}

    def nonfinite(self, where: str, losses: list, group: str = "") -> None:
        hist = ", ".join(f"{a if a is not None else 'rtn'}: {l:.4g}" for a, l in losses) or "none"
        raise AWQError(
            f"non-finite {where} in block {self.graph.index} ({self.graph.path}), group {group or '?'}; "
            f"loss history: [{hist}]"
        )

    def store(self, full: str, qt: QuantizedTensor) -> None:
        """The linear ``full`` keeps exactly what the kernels will reconstruct from ``qt``."""
        self.results.tensors[full] = qt.to("cpu")
