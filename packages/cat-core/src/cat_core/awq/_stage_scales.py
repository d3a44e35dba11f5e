"""Stages 2 and 3: search each scale group's input scales, then fold them into its producer.

Groups go in order and each is searched on inputs captured after the earlier groups' folds.
Only the consumers that get quantized are fake-quantized in the search: the others (a MoE router,
anything in ``modules_to_not_convert``) compute ``W * s / s = W`` exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cat_core.awq._batches import Batches
from cat_core.awq._block import BlockWork, GroupReport
from cat_core.awq._capture import BlockCall, capture_module_call
from cat_core.awq._errors import AWQError
from cat_core.awq._grams import rescale_folded
from cat_core.awq._scale_search import search_scales

__all__ = ["search_and_fold"]

Fold = Callable[[nn.Module, Any, torch.Tensor], None]


def search_and_fold(work: BlockWork, batches: Batches, fold: Fold) -> None:
    block, results = work.module, work.results
    if work.config.scales is None:  # QuantConfig(scales=None): every group keeps identity scales
        return
    search_call = batches.search_call(work.position, work.device)
    screen_call = batches.screen_call(work.position, work.device)
    quantized = work.quantized_ids()
    for group, mean in zip(work.graph.groups, work.means):
        label = group.describe()
        results.status(f"{group.producer} -> {', '.join(group.consumers)}")
        inspect = (block if work.config.scales.loss_scope == "block" or not group.inspect
                   else block.get_submodule(group.inspect))
        views = _quantized_views(block, group, quantized)
        why, icall = _why_skipped(block, inspect, search_call, mean, views)
        if why is not None:
            results.skipped.append(f"{group.producer} -> {', '.join(group.consumers)}: {why}")
            nan = float("nan")
            results.reports.append(GroupReport(work.graph.index, label, None, nan, nan, skipped=why,
                                               fold=_fold_kind(group)))
            continue
        res = search_scales(
            [_WeightsAsModules(v) for _, v in views], inspect, icall, mean.to(work.device), work.config,
            on_nonfinite=lambda what, losses, _l=label: work.nonfinite(what, losses, _l),
            tie=getattr(group, "tie", None), screen=_screen(block, inspect, screen_call),
        )
        results.reports.append(GroupReport(work.graph.index, label, res.alpha, res.rtn_loss, res.best_loss,
                                           fold=_fold_kind(group)))
        if res.alpha is not None:
            fold(block, group, res.scales.to(work.device))
            if work.recorded is not None and not rescale_folded(work.recorded, group.consumers,
                                                                group.tie(res.scales.float())):
                work.recorded = None  # not exactly rescalable: captured after the fold instead
    for u in getattr(work.graph, "unscaled", ()):
        nan = float("nan")
        results.reports.append(GroupReport(work.graph.index, u.describe(), None, nan, nan, unscaled=u.kind))


def _why_skipped(block: nn.Module, inspect: nn.Module, call: BlockCall, mean: torch.Tensor | None,
                 views: list) -> tuple[str | None, BlockCall | None]:
    """Why the group cannot be searched (None: it can), and the inspected module's call."""
    if mean is None:
        return "no calibration token reached its input", None
    if not views:
        return "none of its consumers is quantized", None
    try:
        return None, capture_module_call(block, inspect, call)
    except RuntimeError:
        return "no token of the search batch reached it", None


def _screen(block: nn.Module, inspect: nn.Module, screen_call: BlockCall | None) -> BlockCall | None:
    if screen_call is None:
        return None
    try:
        return capture_module_call(block, inspect, screen_call)
    except RuntimeError:  # e.g. an expert no screening token reaches: no screening
        return None


def _fold_kind(group: Any) -> str | None:
    return getattr(getattr(group, "fold", None), "kind", None)


class _WeightsAsModules:
    """Adapter so the scale search can treat weight views like linears (``.weight.data``)."""

    def __init__(self, view: torch.Tensor) -> None:
        self.weight = self
        self.data = view


def _weight_views(block: nn.Module, group: Any) -> list[tuple[str, torch.Tensor]]:
    """Consumers' weights as 2-D ``[out, in]`` views (writes go to the parameters)."""
    refs = getattr(group, "weights", ()) or ()
    if not refs:
        return [(p, block.get_submodule(p).weight.data) for p in group.consumers]
    views = []
    for ref in refs:
        t = ref.tensor(block).data
        if t.dim() != 2:
            raise AWQError(f"consumer {ref.name} has a {t.dim()}-D weight; only 2-D weights are searched")
        views.append((ref.name, t if ref.tensor_in_dim == 1 else t.t()))
    return views


def _quantized_views(block: nn.Module, group: Any, quantized: set[int]) -> list[tuple[str, torch.Tensor]]:
    """:func:`_weight_views` of the consumers whose weights get quantized (by parameter identity;
    slices of stacked parameters are never quantized)."""
    refs = getattr(group, "weights", ()) or ()
    if not refs:
        return [(p, v) for p, v in _weight_views(block, group) if id(block.get_submodule(p).weight) in quantized]
    from cat_core.graph._types import get_param

    kept = [ref for ref in refs if ref.select is None and id(get_param(block, ref.path)) in quantized]
    return _weight_views(block, dataclasses.replace(group, weights=tuple(kept))) if kept else []
