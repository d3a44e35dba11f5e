"""AWQ (Lin et al., MLSys 2024) over the layer graph, and a round-to-nearest baseline.

``quantize`` leaves the model fake-quantized in place (its weights are exactly what the kernels
reconstruct from the returned codes) and returns the codes, scales and zeros per linear.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
from torch import nn

from cat_core.awq._conv1d import conv1d_as_linear
from cat_core.awq._errors import AWQError
from cat_core.awq._inputs import check_finite, check_model_finite, check_token_ids
from cat_core.awq._block import GroupReport
from cat_core.awq._pipeline import deterministic, run_awq
from cat_core.awq._prepare import Prepared, check_layers, prepare, quantized_layers
from cat_core.config import CalibConfig, QuantConfig, matches_any
from cat_core.quant import QuantizedTensor, check_group_size, dequantize, quantize_tensor

__all__ = ["AWQError", "QuantizeResult", "GroupReport", "Prepared", "prepare", "quantize", "quantized_layers", "rtn_quantize"]


@dataclasses.dataclass
class QuantizeResult:
    """The fake-quantized model plus what the runtime packs: ``tensors[name]`` per linear."""

    model: nn.Module
    tensors: dict[str, QuantizedTensor]
    config: QuantConfig
    #: one entry per scale group (empty for RTN): searched ones (``fold`` says into what) and
    #: those without input scaling (``unscaled`` says why).
    report: list[GroupReport] = dataclasses.field(default_factory=list)
    #: wall seconds per phase of the search (capture, stats, scale_search, clip_search, ...), plus
    #: ``stats_samples_used``: calibration samples the statistics pass of the last block needed
    #: (it stops early once the statistics converge; not a duration). With rounding="learned":
    #: ``learned_round`` (seconds) and, summed over the blocks, ``learned_round_start_loss`` and
    #: ``learned_round_best_loss`` (block-output MSE on the pool before and after) and
    #: ``learned_round_blocks_improved`` (blocks whose kept iterate is not the start). The
    #: statistics pass also records the clip search's and GPTQ's Grams, so ``grams`` is only
    #: the time of taking their means (and of ``sequential``'s per-stage captures).
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def scaling_summary(self) -> str:
        """One line: how many groups got searched input scales, by the kind of producer they fold
        into, and how many have none (no producer can absorb them), by reason."""
        searched: dict[str, int] = {}
        unscaled: dict[str, int] = {}
        if self.config.scales is None:
            return "off (QuantConfig(scales=None)): no input scaling, weights rounded as they are"
        for r in self.report:
            if r.unscaled is not None:
                unscaled[r.unscaled] = unscaled.get(r.unscaled, 0) + 1
            else:
                key = r.fold or "other"
                searched[key] = searched.get(key, 0) + 1
        if not searched and not unscaled:
            return "none searched (round-to-nearest)"

        def counts(d: dict[str, int], names: dict[str, str]) -> str:
            return ", ".join(f"{n} {names.get(k, k)}" for k, n in sorted(d.items(), key=lambda kv: -kv[1]))

        out = f"{sum(searched.values())} groups searched"
        if searched:
            out += f" (folded into: {counts(searched, {})})"
        if unscaled:
            why = {"residual": "read the residual stream", "shared": "weight shared by several inputs",
                   "not-run": "not run on the discovery sample", "other": "no foldable producer"}
            out += (f", {sum(unscaled.values())} without input scaling, clip search and {self.config.rounding.label} only "
                    f"({counts(unscaled, why)}; see QuantizeResult.report)")
        return out


def quantize(
    model: nn.Module,
    tokenizer: Any = None,
    config: QuantConfig | None = None,
    calib: Any = "self",
    *,
    device: torch.device | str | None = None,
    graph: Any = None,
    progress: bool = True,
    strict: bool | None = None,
) -> QuantizeResult:
    """AWQ-quantize the decoder blocks of ``model`` in place.

    ``calib``: a :class:`~cat_core.config.CalibConfig`, anything it takes as ``source`` (dataset
    name, file or folder, list of strings, ``"self"``), or token ids ``[n, seqlen]``.
    ``device``: where each block is searched (default: where the first block lives); the other
    blocks stay where they are. ``graph``: a ready layer graph (default: discovered by running the
    model on one calibration sample). Consumers whose input no producer can absorb scales for (q/k/v
    and gate/up of post-norm-only blocks, which read the residual stream) are quantized without
    input scaling, with the clip search and GPTQ rounding; ``report`` lists them and
    :meth:`QuantizeResult.scaling_summary` counts them. ``strict`` is passed to
    :func:`~cat_core.graph.discover`: ``True`` raises :class:`~cat_core.graph.GraphError` for such
    groups too (and for a given ``graph`` that has some), ``False`` also leaves unscaled the groups
    whose producer the analysis does not recognize (by default those raise). Raises
    :class:`AWQError` on non-finite values, naming the block and group, and before any work when a
    weight already holds NaN/inf, naming the tensor; ``ValueError`` when a token id of ``calib`` is
    outside the vocabulary. With
    ``config.unfuse_experts`` (default) fused mixture-of-experts tensors are first replaced by
    per-expert linears (:func:`cat_core.moe.unfuse_experts`, in place), so the experts are searched
    and quantized like any linear; a given ``graph`` of the fused model is then rediscovered.
    GPT-2's ``Conv1D`` layers (weights stored ``[in, out]``) are quantized as the linears they
    are: the work sees them as ``nn.Linear`` and they are put back afterwards, holding the folded
    and quantized weights (a given ``graph`` of such a model is discovered again); their
    ``tensors`` are ``[out, in]`` like every other, as :func:`~cat_core.nn.replace_linears` takes.
    """
    config = config or QuantConfig()
    if config.unfuse_experts:
        from cat_core.moe import unfuse_experts

        if unfuse_experts(model) and graph is not None and not _graph_fits(graph):
            warnings.warn(
                "quantize: the given layer graph describes the fused experts, which were just "
                "unfused; discovering it again (call cat_core.moe.unfuse_experts before discover "
                "to avoid this)", stacklevel=2,
            )
            graph = None
    with conv1d_as_linear(model) as convs:
        if convs:
            graph = None  # a graph of the Conv1D layers names [in, out] weights: discovered again
        tensors, report, timings = _quantize_linears(model, tokenizer, config, calib, device, graph, progress,
                                                     strict)
    return QuantizeResult(model=model, tensors=tensors, config=config, report=report, timings=timings)


def _quantize_linears(
    model: nn.Module, tokenizer: Any, config: QuantConfig, calib: Any, device: torch.device | str | None,
    graph: Any, progress: bool, strict: bool | None,
) -> tuple[dict[str, QuantizedTensor], list[GroupReport], dict[str, float]]:
    """:func:`quantize` once every quantizable layer is an ``nn.Linear``."""
    from cat_core.calib import calibration_samples

    check_layers(model, config, graph)  # seconds, before calibration takes minutes
    if strict and graph is not None:
        _check_strict(graph)
    check_model_finite(model)
    if isinstance(calib, torch.Tensor):
        check_token_ids(calibration_samples(calib), model)
    samples = calibration_samples(calib, tokenizer, model, progress=progress)
    check_token_ids(samples, model)
    if graph is None:
        from cat_core.graph import discover

        graph = discover(model, sample_input_ids=samples[:1, :64], strict=strict)
    from cat_core.graph import apply_scales

    was_training = model.training
    model.eval()
    timings: dict[str, float] = {}
    try:
        with deterministic():
            tensors, report = run_awq(
                model, samples, graph, config, device=None if device is None else torch.device(device),
                fold=apply_scales, progress=progress, timings=timings,
            )
    finally:
        model.train(was_training)
    return tensors, report, timings


def _check_strict(graph: Any) -> None:
    """``strict``: a given graph must scale every consumer (as ``discover(strict=True)`` checks)."""
    from cat_core.graph import GraphError

    for bg in graph.blocks:
        for u in getattr(bg, "unscaled", ()):
            raise GraphError(f"block '{bg.path}': {u.describe()} (strict: every consumer must get input scales)")


def _graph_fits(graph: Any) -> bool:
    """Every weight the graph names still exists in its block."""
    from cat_core.graph._types import get_param

    try:
        for bg in graph.blocks:
            for g in bg.groups:
                for r in getattr(g, "weights", ()) or ():
                    get_param(bg.module, r.path)
                for c in g.consumers:
                    if not getattr(g, "weights", ()):
                        bg.module.get_submodule(c)
    except (AttributeError, ValueError):
        return False
    return True


@torch.no_grad()
def rtn_quantize(model: nn.Module, config: QuantConfig | None = None) -> QuantizeResult:
    """Round-to-nearest baseline: every ``nn.Linear`` (and GPT-2 ``Conv1D``, seen as one as
    :func:`quantize` sees it) not excluded by ``modules_to_not_convert`` (``lm_head`` and
    embeddings by default), no search, no clipping. In place. Fused experts are unfused first
    (``config.unfuse_experts``), as :func:`quantize` does. Raises :class:`AWQError` naming the
    first such weight that holds NaN/inf, before anything is changed."""
    config = config or QuantConfig()
    if config.unfuse_experts:
        from cat_core.moe import unfuse_experts

        unfuse_experts(model)
    with conv1d_as_linear(model):
        linears = [(name, m) for name, m in model.named_modules()
                   if isinstance(m, nn.Linear) and not matches_any(name, config.modules_to_not_convert)]
        for name, m in linears:
            check_group_size(m.in_features, config.group_size, name)
        check_finite((f"{name}.weight", m.weight.detach()) for name, m in linears)
        tensors = {}
        for name, m in linears:
            qt = quantize_tensor(m.weight.data, config, name=name)
            m.weight.data.copy_(dequantize(qt, m.weight.dtype))
            tensors[name] = qt.to("cpu")
    return QuantizeResult(model=model, tensors=tensors, config=config)
