"""Stage 4: the input Grams of the block's linears, and the clip search on the folded weights.

The linears form one part, or with ``grams.sequential`` several (those fed the first input the
not-yet-quantized linears see: q/k/v, then o, then gate/up, then down), each part's Grams captured
after the parts before it were rounded, so that they hold those parts' errors (GPTQ's order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from cat_core.awq._batches import Batches
from cat_core.awq._block import BlockWork, Linear
from cat_core.awq._clip_search import search_clip
from cat_core.awq._grams import capture_full_grams, capture_linear_grams, diagonal_blocks, full_means, group_means
from cat_core.awq._stage_stats import clipped

__all__ = ["Part", "linear_parts", "search_clips"]


@dataclasses.dataclass
class Part:
    """Linears rounded together, with the Grams they get."""

    linears: list[Linear]
    #: per-group Gram blocks of the clipped linears (by path in the block)
    grams: dict[str, torch.Tensor]
    #: GPTQ's full ``K x K`` Grams (empty unless GPTQ rounds); linears that share an input share one
    full_grams: dict[str, torch.Tensor]
    #: ``[K]`` mean square of each input column on the calibration tokens (the Gram's diagonal),
    #: per linear (empty unless importance-weighted rounding wants it)
    column_ms: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def linear_parts(work: BlockWork, batches: Batches, full: bool) -> Iterator[Part]:
    """The block's parts in order; each is produced once the parts before it are rounded.
    ``full``: GPTQ rounds, so its full Grams are wanted (the clip search then reads their
    diagonal blocks: one capture serves both)."""
    config = work.config
    sequential = config.grams.sequential
    runs = batches.runs(work.position, every_chunk=config.grams.samples == "all")
    to_clip = {rel for rel, name, _ in work.linears if clipped(name, config)}
    importance = config.uses_importance
    pending = list(work.linears)
    while pending:
        work.results.status(f"grams: {len(pending)} linears left")
        if full:
            full_grams = _full_grams(work, pending, runs)
            reached = set(full_grams)
            grams = {rel: diagonal_blocks(h, config.group_size) for rel, h in full_grams.items() if rel in to_clip}
        else:
            full_grams = {}
            grams = _group_grams(work, [l for l in pending if sequential or importance or l[0] in to_clip], runs)
            reached = set(grams)
        column_ms = {rel: torch.diagonal(h, dim1=-2, dim2=-1).reshape(-1)
                     for rel, h in (full_grams if full else grams).items()} if importance else {}
        grams = {rel: g for rel, g in grams.items() if rel in to_clip}
        work.recorded = None  # a later part (sequential) captures its own
        linears = [l for l in pending if l[0] in reached] if sequential else pending
        if not linears:  # no token reaches the rest (e.g. unused experts): rounded to nearest
            linears = pending
        work.results.tick("grams")
        yield Part(linears, grams, full_grams, column_ms)
        done = {id(l[2]) for l in linears}
        pending = [l for l in pending if id(l[2]) not in done]


def _full_grams(work: BlockWork, pending: list[Linear], runs: list) -> dict[str, torch.Tensor]:
    config = work.config
    if work.recorded is not None:
        out = full_means(work.recorded)
    else:
        out = capture_full_grams(work.module, pending, runs, work.device, config.grams.token_subsample, work.seed,
                                 first_input_only=config.grams.sequential)
    checked: set[int] = set()
    for rel, h in out.items():
        if id(h) not in checked and not bool(torch.isfinite(h).all()):
            work.nonfinite(f"input Gram of {rel}", [], rel)
        checked.add(id(h))
    return out


def _group_grams(work: BlockWork, want: list[Linear], runs: list) -> dict[str, torch.Tensor]:
    config = work.config
    if work.recorded is not None:
        return group_means(work.recorded, want, config.group_size)
    if not want:
        return {}
    return capture_linear_grams(work.module, want, runs, work.device, config.group_size,
                                config.grams.token_subsample, work.seed, first_input_only=config.grams.sequential)


def search_clips(work: BlockWork, part: Part) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-group clamp bounds ``(lo, hi)`` of every clipped linear of ``part`` that has a Gram;
    the weights are left as they are (the rounding applies them)."""
    clips = {}
    for rel, name, mod in part.linears:
        if rel not in part.grams:
            continue  # not clipped, or never called on the calibration data
        lo, hi, err = search_clip(mod.weight.data, part.grams[rel], work.config, name=name)
        if not bool(torch.isfinite(err).all()):
            work.nonfinite(f"clip-search error of {rel}", [], rel)
        clips[rel] = (lo, hi)
    part.grams.clear()
    work.results.tick("clip_search")
    return clips
