"""Stage 1: the mean |x| of every scale group's input over the calibration tokens, and in the same
pass the input Grams the clip search and GPTQ will read (recorded before the fold; the scale
stage carries them into the folded space).

The pass stops once every statistic has converged, unless the Grams want every chunk; the chunks
it did not need are dropped for this and every later block, so neither the statistics nor the
propagation ever run on them.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from cat_core.awq._batches import Batches
from cat_core.awq._block import BlockWork, Linear
from cat_core.awq._grams import InputGramRecorder, run_block
from cat_core.awq._stats import AbsMeanRecorder
from cat_core.config import QuantConfig, matches_any

__all__ = ["collect_statistics", "clipped"]

# Early stop: after at least _MIN_TOKENS tokens, stop when the last chunk moved no channel's mean
# |x| by more than _RTOL of its value (channels below _FLOOR of the average channel are ignored:
# their scales are clamped anyway).
_MIN_TOKENS = 16384
_RTOL = 0.02
_FLOOR = 1e-3


def clipped(full: str, config: QuantConfig) -> bool:
    """Whether the linear named ``full`` gets the clip search."""
    return config.clip is not None and not matches_any(full, config.clip.skip)


def collect_statistics(work: BlockWork, batches: Batches, keep_sequences: int) -> None:
    """Fill ``work.means`` (per group) and ``work.recorded``; ``keep_sequences``: the pass never
    stops before it has seen this many sequences (learned rounding's pool)."""
    config, block = work.config, work.module
    recorders = [AbsMeanRecorder(_stats_module(block, g)) for g in work.graph.groups]
    grams = None if config.grams.sequential else _gram_recorder(work.linears, config, work.seed)
    every_chunk = config.grams.samples == "all"
    hiddens = batches.hiddens
    try:
        for ci, (call, h) in enumerate(zip(batches.calls[work.position], hiddens)):
            before = [None if r.total is None else r.mean() for r in recorders]
            record = grams is not None and (ci == 0 or every_chunk)
            with grams.recording() if record else contextlib.nullcontext():
                run_block(block, call, h, work.device)
            if (ci + 1 < len(hiddens) and not every_chunk and batches.sequences(ci + 1) >= keep_sequences
                    and _converged(before, recorders)):
                del hiddens[ci + 1:]
                break
    finally:
        for r in recorders:
            r.remove()
    work.results.timings["stats_samples_used"] = float(batches.sequences(len(hiddens)))
    work.means = [None if r.total is None else r.mean() for r in recorders]
    work.recorded = None if grams is None else grams.parts()


def _converged(before: list[torch.Tensor | None], recorders: list[AbsMeanRecorder]) -> bool:
    if any(b is None for b in before) or min(r.count for r in recorders) < _MIN_TOKENS:
        return False
    for b, r in zip(before, recorders):
        now = r.mean()
        keep = now > _FLOOR * now.mean()
        change = ((now - b).abs() / now.clamp_min(1e-30))[keep]
        if change.numel() and float(change.max()) > _RTOL:
            return False
    return True


def _gram_recorder(linears: list[Linear], config: QuantConfig, seed: int) -> InputGramRecorder | None:
    """What the clip stage (one part) would capture, as a recorder for this pass: full Grams of
    every linear for GPTQ, else per-group Grams of the clipped ones, or of every linear for
    importance-weighted rounding (None: no Gram needed). Same
    seed and runs, so the same tokens are sampled."""
    n_tokens = config.grams.token_subsample
    if config.uses_gptq:
        return InputGramRecorder(linears, -1, n_tokens, seed)
    want = [lin for lin in linears if config.uses_importance or clipped(lin[1], config)]
    return InputGramRecorder(want, config.group_size, n_tokens, seed) if want else None


def _in_expert_list(block: nn.Module, path: str) -> bool:
    from cat_core.moe import UnfusedExperts

    parts = path.split(".")
    for i in range(len(parts)):
        owner = ".".join(parts[:i])
        try:
            if isinstance(block.get_submodule(owner) if owner else block, UnfusedExperts):
                return True
        except AttributeError:
            return False
    return False


def _stats_module(block: nn.Module, group: Any) -> nn.Module:
    """A module whose first input is the group's shared input.

    Routed experts see only the tokens sent to them: a consumer outside the unfused experts (the
    router, a shared expert) is preferred, since it sees every token of the shared input.
    """
    names = list(group.consumers)
    path = next((c for c in names if not _in_expert_list(block, c)), names[0]).split("[", 1)[0]
    try:
        return block.get_submodule(path)
    except AttributeError:
        # a parameter path (stacked experts): its owner module receives the input
        owner = path.rpartition(".")[0]
        return block.get_submodule(owner) if owner else block
