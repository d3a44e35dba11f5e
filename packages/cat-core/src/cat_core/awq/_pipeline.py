"""The AWQ driver: one block at a time, the stages in order.

    statistics -> search scales and fold -> clip -> round -> propagate

Each block sees the outputs of the previous block *after* that block was quantized, so later
blocks compensate for the error of earlier ones. Only the block being worked on is moved to the
compute device.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from cat_core._offload import Held, execution_device
from cat_core.awq._batches import Batches, capture_batches
from cat_core.awq._block import BlockWork, GroupReport, Results, block_linears
from cat_core.awq._errors import AWQError
from cat_core.awq._grams import run_block
from cat_core.awq._inputs import check_finite
from cat_core.awq._stage_clip import linear_parts, search_clips
from cat_core.awq._stage_round import rounder
from cat_core.awq._stage_scales import Fold, search_and_fold
from cat_core.awq._stage_stats import collect_statistics
from cat_core.config import QuantConfig
from cat_core.quant import QuantizedTensor

__all__ = ["run_awq", "deterministic"]


@torch.no_grad()
def run_awq(
    model: nn.Module, samples: torch.Tensor, graph: Any, config: QuantConfig, *, device: torch.device | None,
    fold: Fold, progress: bool = True, timings: dict[str, float] | None = None,
) -> tuple[dict[str, QuantizedTensor], list[GroupReport]]:
    blocks = list(graph.blocks)
    if not blocks:
        raise AWQError("the layer graph has no decoder blocks")
    device = torch.device(device) if device is not None else execution_device(blocks[0].module)
    rounding = rounder(config)
    rounding.plan(*samples.shape)
    lazy = getattr(model, "_cat_lazy", None) is not None
    with _progress_bar(len(blocks), progress) as bar:
        results = Results(timings, bar)
        batches = capture_batches(model, [bg.module for bg in blocks], samples, config, device, rounding.extra_shape)
        results.tick("capture")
        for position, bg in enumerate(blocks):
            held = Held(bg.module, device)  # only this block on the compute device
            try:
                if lazy:  # read just now: the check before calibration could not see it
                    check_finite((f"{bg.path}.{n}", p) for n, p in bg.module.named_parameters())
                work = BlockWork(bg, position, device, config, batches.calls[position],
                                 block_linears(bg.module, bg.path, config), results)
                collect_statistics(work, batches, rounding.keep_sequences)
                results.tick("stats")
                search_and_fold(work, batches, fold)
                results.tick("scale_search")
                rounding.before_clip(work, batches)
                for part in linear_parts(work, batches, rounding.wants_full_grams):
                    rounding.round(work, part, search_clips(work, part))
                rounding.after_parts(work, batches)
                _propagate(work, batches, rounding.outputs)
                if lazy:
                    _pack(work)
            finally:
                held.release()
            results.tick("propagate")
            if bar is not None:
                bar.update(1)
    _warn_skipped(results.skipped)
    return results.tensors, results.reports


def _propagate(work: BlockWork, batches: Batches, pool_outputs: torch.Tensor | None) -> None:
    """This block's quantized outputs become the next block's inputs (learned rounding already
    ran the chunks its pool covers, whole sequences only, with the tensors kept)."""
    ready = _pool_chunks(batches.hiddens, pool_outputs)
    for ci, (call, h) in enumerate(zip(work.calls, batches.hiddens)):
        out = ready.pop(ci) if ci in ready else run_block(work.module, call, h, work.device)
        if not bool(torch.isfinite(out).all()):
            work.nonfinite("block output after quantization", [])
        batches.hiddens[ci] = out


def _pack(work: BlockWork) -> None:
    """A lazily loaded model's block becomes its packed layers now, so that neither its float
    weights nor every block's codes stay in memory (the block is spilled when released)."""
    from cat_core.nn import replace_linears

    mine = {rel: work.results.tensors.pop(full) for rel, full, _ in work.linears if full in work.results.tensors}
    replace_linears(work.module, mine)


def _pool_chunks(hiddens: list[torch.Tensor], outputs: torch.Tensor | None) -> dict[int, torch.Tensor]:
    """The chunks (by index) whose every sequence is in learned rounding's pool (the first
    sequences in chunk order, one row of ``outputs`` each), with their rows of ``outputs``."""
    out: dict[int, torch.Tensor] = {}
    if outputs is None:
        return out
    start = 0
    for ci, h in enumerate(hiddens):
        end = start + int(h.shape[0])
        if end > outputs.shape[0]:
            break
        out[ci] = outputs[start:end]
        start = end
    return out


def _warn_skipped(skipped: list[str]) -> None:
    if skipped:
        head = "; ".join(skipped[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        warnings.warn(
            f"AWQ: scale search skipped for {len(skipped)} group(s), which keep identity scales "
            f"(round-to-nearest; see QuantizeResult.report): {head}", stacklevel=4,
        )


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="AWQ", unit="block")
    try:
        yield bar
    finally:
        bar.close()
