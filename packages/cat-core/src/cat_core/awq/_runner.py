"""Walks the decoder blocks: statistics, scale search and fold, clip search, quantization.

Each block sees the outputs of the previous block *after* that block was quantized, so later
blocks compensate for the error of earlier ones. Only the block being processed is moved to the
compute device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from cat_core._offload import Held, execution_device
from cat_core.awq._capture import (
    BlockCall,
    capture_block_calls,
    capture_module_call,
    hidden_of,
    replace_hidden,
    to_device,
)
from cat_core.awq._clip_search import apply_clip, search_clip
from cat_core.awq._errors import AWQError
from cat_core.awq._gptq import gptq_quantize
from cat_core.awq._grams import (
    InputGramRecorder,
    Parts,
    capture_full_grams,
    capture_linear_grams,
    diagonal_blocks,
    full_means,
    group_means,
    rescale_folded,
    run_block,
)
from cat_core.awq._learned_round import LinearStart, block_outputs, learn_rounding
from cat_core.awq._scale_search import search_scales
from cat_core.awq._stats import AbsMeanRecorder
from cat_core.config import QuantConfig, matches_any
from cat_core.quant import QuantizedTensor, check_group_size, dequantize, quantize_tensor

__all__ = ["GroupReport", "run_awq", "block_linears", "deterministic"]

# Sequences per forward outside the search batch: bounds activation memory, amortizes overhead.
_CHUNK = 16


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
    #: consumers are still clipped and rounded (GPTQ) like every other linear.
    unscaled: str | None = None


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def block_linears(block: nn.Module, prefix: str, config: QuantConfig) -> list[tuple[str, str, nn.Linear]]:
    """(path in block, full name, module) of every linear of ``block`` that gets quantized."""
    out = []
    for rel, mod in block.named_modules():
        if isinstance(mod, nn.Linear) and rel:
            full = f"{prefix}.{rel}" if prefix else rel
            if not matches_any(full, config.modules_to_not_convert):
                out.append((rel, full, mod))
    return out


def _weight_views(block: nn.Module, group: Any) -> list[tuple[str, torch.Tensor]]:
    """Consumers' weights as 2-D ``[out, in]`` views (writes go to the parameters)."""
    refs = getattr(group, "weights", ()) or ()
    if refs:
        views = []
        for ref in refs:
            t = ref.tensor(block).data
            d = ref.tensor_in_dim
            if t.dim() != 2:
                raise AWQError(f"consumer {ref.name} has a {t.dim()}-D weight; only 2-D weights are searched")
            views.append((ref.name, t if d == 1 else t.t()))
        return views
    return [(p, block.get_submodule(p).weight.data) for p in group.consumers]


def _quantized_views(block: nn.Module, group: Any, quantized: set[int]) -> list[tuple[str, torch.Tensor]]:
    """:func:`_weight_views` of the consumers whose weights get quantized (by parameter identity;
    slices of stacked parameters are never quantized)."""
    refs = getattr(group, "weights", ()) or ()
    if not refs:
        return [(p, v) for p, v in _weight_views(block, group)
                if id(block.get_submodule(p).weight) in quantized]
    from cat_core.graph._types import get_param

    kept = [ref for ref in refs if ref.select is None and id(get_param(block, ref.path)) in quantized]
    return _weight_views(block, dataclasses.replace(group, weights=tuple(kept))) if kept else []


def _fold_kind(group: Any) -> str | None:
    return getattr(getattr(group, "fold", None), "kind", None)


class _WeightsAsModules:
    """Adapter so the scale search can treat weight views like linears (``.weight.data``)."""

    def __init__(self, view: torch.Tensor) -> None:
        self.weight = self
        self.data = view


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


# Early stop of the statistics pass: after at least _STATS_MIN_TOKENS tokens, stop when the last
# chunk moved no channel's mean |x| by more than _STATS_RTOL of its value (channels whose mean is
# below _STATS_FLOOR of the average channel are ignored: their scales are clamped anyway).
_STATS_MIN_TOKENS = 16384
_STATS_RTOL = 0.02
_STATS_FLOOR = 1e-3


def _stats_converged(before: list[torch.Tensor | None], recorders: list[AbsMeanRecorder]) -> bool:
    if any(b is None for b in before) or min(r.count for r in recorders) < _STATS_MIN_TOKENS:
        return False
    for b, r in zip(before, recorders):
        now = r.mean()
        keep = now > _STATS_FLOOR * now.mean()
        change = ((now - b).abs() / now.clamp_min(1e-30))[keep]
        if change.numel() and float(change.max()) > _STATS_RTOL:
            return False
    return True


def _screen_sequences(config: QuantConfig, n_search: int, seqlen: int) -> int:
    """Sequences of the scale search's screening subsample (the search batch's first), 0 for none:
    screening pays only when the search batch holds more than twice ``config.screen_tokens``."""
    if config.screen_tokens is None or n_search * seqlen <= 2 * config.screen_tokens:
        return 0
    n_screen = max(1, math.ceil(config.screen_tokens / seqlen))
    return n_screen if n_screen < n_search else 0


def _chunks(n: int, n_search: int) -> list[slice]:
    out = [slice(0, n_search)]
    out += [slice(i, min(i + _CHUNK, n)) for i in range(n_search, n, _CHUNK)]
    return out


@torch.no_grad()
def run_awq(
    model: nn.Module,
    samples: torch.Tensor,
    graph: Any,
    config: QuantConfig,
    *,
    device: torch.device | None,
    fold: Callable[[nn.Module, Any, torch.Tensor], None],
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> tuple[dict[str, QuantizedTensor], list[GroupReport]]:
    blocks = list(graph.blocks)
    if not blocks:
        raise AWQError("the layer graph has no decoder blocks")
    device = torch.device(device) if device is not None else execution_device(blocks[0].module)
    # Validate every layer before spending time on the search.
    for bg in blocks:
        for _, full, mod in block_linears(bg.module, bg.path, config):
            check_group_size(mod.in_features, config.group_size, full)

    n, seqlen = samples.shape
    gen = torch.Generator().manual_seed(config.seed)
    samples = samples[torch.randperm(n, generator=gen)]
    sub = config.loss_token_subsample
    n_search = n if sub is None else max(1, min(n, math.ceil(sub / seqlen)))
    slices = _chunks(n, n_search)
    n_screen = _screen_sequences(config, n_search, seqlen)
    if n_screen:  # the screening batch gets calls of its own: masks and positions sized for it
        slices.append(slice(0, n_screen))
    learned = config.rounding == "learned"
    pool = l_batch = l_len = 0
    if learned:  # the pool of sequences, the batch and the prefix length learned rounding uses
        pool = n if config.learned_round_samples is None else min(n, config.learned_round_samples)
        l_batch = min(config.learned_round_batch, pool)
        pool -= pool % l_batch
        l_len = seqlen if config.learned_round_seqlen is None else min(seqlen, config.learned_round_seqlen)
    timings = {} if timings is None else timings
    clock = _Clock(timings)
    emb_device = execution_device(model.get_input_embeddings())
    clock("setup")
    chunks = [samples[s].to(emb_device) for s in slices]
    if learned:  # calls sized for its batches (no padding: any sequences fit the same masks)
        chunks.append(samples[:l_batch, :l_len].to(emb_device))
    calls = capture_block_calls(model, [bg.module for bg in blocks], chunks, device)
    learn_calls = [c.pop() for c in calls] if learned else None
    screen_calls = [c.pop() for c in calls] if n_screen else None
    hiddens = [hidden_of(c) for c in calls[0]]
    clock("capture")

    tensors: dict[str, QuantizedTensor] = {}
    reports: list[GroupReport] = []
    skipped: list[str] = []
    bar = _progress(len(blocks), progress)
    held: Held | None = None
    fp_pool: torch.Tensor | None = None  # learned rounding's pool on the unquantized model's path
    lr_out: torch.Tensor | None = None  # the quantized block's outputs on that pool
    try:
        for bi, bg in enumerate(blocks):
            block = bg.module
            held = Held(block, device)  # only this block on the compute device
            block_calls = calls[bi]

            def nonfinite(where: str, losses: list, group: str = "") -> None:
                hist = ", ".join(f"{a if a is not None else 'rtn'}: {l:.4g}" for a, l in losses) or "none"
                raise AWQError(
                    f"non-finite {where} in block {bg.index} ({bg.path}), group {group or '?'}; "
                    f"loss history: [{hist}]"
                )

            # 1. activation statistics of every group's input, over all tokens, full precision
            #    The pass stops once every statistic has converged (see _stats_converged); the
            #    chunks it did not need are dropped for this and every later block, so neither the
            #    statistics nor the propagation ever run on them -- unless gram_samples="all" needs
            #    every chunk's inputs for the Grams of steps 3 and 4.
            #    The same pass records those Grams (before the fold; carried into the folded space
            #    after the scale search), unless config.sequential needs them stage by stage.
            recorders = [AbsMeanRecorder(_stats_module(block, g)) for g in bg.groups]
            linears = block_linears(block, bg.path, config)
            quantized = {id(mod.weight) for _, _, mod in linears}
            grams_rec = None if config.sequential else _gram_recorder(linears, config, config.seed + bi)
            try:
                for ci, (call, h) in enumerate(zip(block_calls, hiddens)):
                    before = [None if r.total is None else r.mean() for r in recorders]
                    record = grams_rec is not None and (ci == 0 or config.gram_samples == "all")
                    with grams_rec.recording() if record else contextlib.nullcontext():
                        run_block(block, call, h, device)
                    if (ci + 1 < len(hiddens) and config.gram_samples != "all"
                            and sum(int(x.shape[0]) for x in hiddens[:ci + 1]) >= pool
                            and _stats_converged(before, recorders)):
                        del hiddens[ci + 1:]
                        break
            finally:
                for r in recorders:
                    r.remove()
            timings["stats_samples_used"] = float(sum(int(h.shape[0]) for h in hiddens))
            recorded: Parts | None = None if grams_rec is None else grams_rec.parts()
            clock("stats")

            # 2. scale search and fold, group by group (inputs recaptured after earlier folds)
            search_call = replace_hidden(block_calls[0], hiddens[0])
            search_call = BlockCall(to_device(search_call.args, device), to_device(search_call.kwargs, device))
            screen_call = None
            if screen_calls is not None:  # the search batch's first sequences, as they reach this block
                sc = replace_hidden(screen_calls[bi], hiddens[0][:n_screen])
                screen_call = BlockCall(to_device(sc.args, device), to_device(sc.kwargs, device))
            for g, rec in zip(bg.groups, recorders):
                label = g.describe()
                if bar is not None:
                    bar.set_postfix_str(f"{g.producer} -> {', '.join(g.consumers)}", refresh=False)
                inspect = block if config.loss_scope == "block" or not g.inspect else block.get_submodule(g.inspect)
                # Only the consumers that get quantized are fake-quantized in the search: the others
                # (a MoE router, anything in modules_to_not_convert) compute W*s/s = W exactly.
                views = _quantized_views(block, g, quantized)
                why = None
                if rec.total is None:
                    why = "no calibration token reached its input"
                elif not views:
                    why = "none of its consumers is quantized"
                else:
                    try:
                        icall = capture_module_call(block, inspect, search_call)
                    except RuntimeError:
                        why = "no token of the search batch reached it"
                if why is not None:
                    skipped.append(f"{g.producer} -> {', '.join(g.consumers)}: {why}")
                    nan = float("nan")
                    reports.append(GroupReport(bg.index, label, None, nan, nan, skipped=why, fold=_fold_kind(g)))
                    continue
                tie = getattr(g, "tie", None)
                scall = None
                if screen_call is not None:
                    try:
                        scall = capture_module_call(block, inspect, screen_call)
                    except RuntimeError:  # e.g. an expert no screening token reaches: no screening
                        scall = None
                res = search_scales(
                    [_WeightsAsModules(v) for _, v in views], inspect, icall, rec.mean().to(device), config,
                    on_nonfinite=lambda what, losses, _l=label: nonfinite(what, losses, _l),
                    tie=tie, screen=scall,
                )
                reports.append(GroupReport(bg.index, label, res.alpha, res.rtn_loss, res.best_loss, fold=_fold_kind(g)))
                if res.alpha is not None:
                    fold(block, g, res.scales.to(device))
                    if recorded is not None and not rescale_folded(recorded, g.consumers, g.tie(res.scales.float())):
                        recorded = None  # not exactly rescalable: captured after the fold instead
            for u in getattr(bg, "unscaled", ()):
                nan = float("nan")
                reports.append(GroupReport(bg.index, u.describe(), None, nan, nan, unscaled=u.kind))
            clock("scale_search")

            # learned rounding's pool: this block's inputs and its unquantized (folded) outputs
            if learned:
                l_call = learn_calls[bi]
                l_call = BlockCall(to_device(l_call.args, device), to_device(l_call.kwargs, device))
                l_in = torch.cat([h[:, :l_len] for h in hiddens])[:pool].to(device)
                if config.learned_round_target == "model":  # the unquantized path, carried along
                    fp_pool = l_in if fp_pool is None else fp_pool
                    l_target = fp_pool = block_outputs(block, l_call, fp_pool, l_batch)
                else:
                    l_target = block_outputs(block, l_call, l_in, l_batch)
                clock("learned_round")

            # 3 and 4. clip search on the folded weights, then rounding; the model keeps exactly
            #    what the kernels will reconstruct. With config.sequential, linears go stage by
            #    stage (those fed one input: q/k/v, then o, then gate/up, then down), each stage's
            #    Grams captured after the stages before it were quantized (GPTQ's order).
            runs = list(zip(block_calls, hiddens)) if config.gram_samples == "all" else [(block_calls[0], hiddens[0])]
            starts: list[LinearStart] | None = [] if learned else None
            tensors.update(_clip_and_round(
                block, linears, runs, config, device, config.seed + bi,
                clock, nonfinite, bar, starts=starts, recorded=recorded,
            ))
            del recorded
            # 4b. learned rounding of the whole block on its output, from those codes
            if learned and starts:
                def show(msg: str) -> None:
                    if bar is not None:
                        bar.set_postfix_str(msg)

                lr_res = learn_rounding(block, starts, l_call, l_in, l_target, config, batch=l_batch,
                                        seed=config.seed + bi, progress=show)
                for ls in starts:
                    qt = lr_res.tensors[ls.name]
                    w = ls.module.weight.data
                    w.copy_(dequantize(qt, w.dtype))
                    tensors[ls.name] = qt.to("cpu")
                for key, v in (("learned_round_start_loss", lr_res.start_loss),
                               ("learned_round_best_loss", lr_res.best_loss),
                               ("learned_round_blocks_improved", float(lr_res.best_iter > 0))):
                    timings[key] = timings.get(key, 0.0) + v
                lr_out = lr_res.outputs
                del l_in, l_target, starts, lr_res
                clock("learned_round")
            # 5. this block's quantized outputs feed the next block (learned rounding already ran
            #    the chunks its pool covers, whole sequences only, with the tensors kept)
            ready = _pool_chunks(hiddens, lr_out) if learned and l_len == seqlen else {}
            lr_out = None
            for ci, (call, h) in enumerate(zip(block_calls, hiddens)):
                out = ready.pop(ci) if ci in ready else run_block(block, call, h, device)
                if not bool(torch.isfinite(out).all()):
                    nonfinite("block output after quantization", [])
                hiddens[ci] = out
            held.release()
            clock("propagate")
            if bar is not None:
                bar.update(1)
    finally:
        if held is not None:
            held.release()
        if bar is not None:
            bar.close()
    if skipped:
        head = "; ".join(skipped[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        warnings.warn(
            f"AWQ: scale search skipped for {len(skipped)} group(s), which keep identity scales "
            f"(round-to-nearest; see QuantizeResult.report): {head}", stacklevel=3,
        )
    return tensors, reports


def _clip_and_round(
    block: nn.Module, linears: list[tuple[str, str, nn.Linear]], runs: list[tuple[BlockCall, torch.Tensor]],
    config: QuantConfig, device: torch.device, seed: int, clock: Callable[[str], None],
    nonfinite: Callable[..., None], bar: Any, starts: list[LinearStart] | None = None,
    recorded: Parts | None = None,
) -> dict[str, QuantizedTensor]:
    """Steps 3 and 4 of a block: clip search and rounding of ``linears`` (folded already).

    The Grams come from ``runs`` of the block; with ``config.sequential`` one stage at a time (the
    linears fed the first input the not-yet-quantized linears see), so that each stage's Grams
    hold the errors of the stages quantized before it.

    ``starts``: when given (rounding="learned"), each linear's starting point for learned
    rounding is appended to it (the codes written are that start's). ``recorded``: the Grams
    :func:`_gram_recorder` recorded in the statistics pass, already in the folded space; they
    replace the capture (one stage only: not with ``config.sequential``).
    """
    gptq = _uses_gptq(config)
    to_clip = {rel for rel, full, _ in linears if _clipped(full, config)}
    out: dict[str, QuantizedTensor] = {}
    pending = list(linears)
    while pending:
        # GPTQ: one capture serves both the clip search (the diagonal blocks) and the rounding
        # (the clip changes weights, not the inputs the Grams are made of).
        if bar is not None:
            bar.set_postfix_str(f"grams: {len(pending)} linears left", refresh=False)
        full_grams: dict[str, torch.Tensor] = {}
        grams: dict[str, torch.Tensor] = {}
        if gptq:
            if recorded is not None:
                full_grams = full_means(recorded)
            else:
                full_grams = capture_full_grams(block, pending, runs, device, config.clip_token_subsample, seed,
                                                first_input_only=config.sequential)
            checked: set[int] = set()
            for rel, h in full_grams.items():
                if id(h) not in checked and not bool(torch.isfinite(h).all()):
                    nonfinite(f"input Gram of {rel}", [], rel)
                checked.add(id(h))
            reached = set(full_grams)
            grams = {rel: diagonal_blocks(h, config.group_size) for rel, h in full_grams.items() if rel in to_clip}
        else:
            want = pending if config.sequential else [l for l in pending if l[0] in to_clip]
            if recorded is not None:
                grams = group_means(recorded, want, config.group_size)
            elif want:
                grams = capture_linear_grams(block, want, runs, device, config.group_size,
                                             config.clip_token_subsample, seed,
                                             first_input_only=config.sequential)
            reached = set(grams)
            grams = {rel: g for rel, g in grams.items() if rel in to_clip}
        stage = [l for l in pending if l[0] in reached] if config.sequential else pending
        if not stage:  # no token reaches the rest (e.g. unused experts): round them to nearest
            stage = pending
        recorded = None  # a second stage (sequential) captures its own
        clock("grams")

        clips: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for rel, full, mod in stage:
            if rel not in grams:
                continue  # not clipped, or never called on the calibration data
            lo, hi, err = search_clip(mod.weight.data, grams[rel], config, name=full)
            if not bool(torch.isfinite(err).all()):
                nonfinite(f"clip-search error of {rel}", [], rel)
            if gptq:
                clips[rel] = (lo, hi)  # applied below: GPTQ also needs the unclipped weight
            else:
                apply_clip(mod.weight, lo, hi)
        del grams
        clock("clip_search")

        for rel, full, mod in stage:
            w = mod.weight.data
            if not bool(torch.isfinite(w).all()):
                nonfinite(f"weight of {rel}", [], rel)
            # a linear no calibration token reached has no Gram: round to nearest
            gram = full_grams.pop(rel, None)  # dropped once used: q, k, v share one
            if gram is not None:
                # The clipped weight sets the grid (scales, zeros); the codes reproduce the
                # unclipped one, so GPTQ feeds the clipping error back with the rounding error.
                grid = w
                if rel in clips:
                    grid = w.clone()
                    apply_clip(grid, *clips.pop(rel))
                if starts is None:
                    qt = gptq_quantize(grid, gram, config, name=full, target=w)
                else:
                    qt, base = gptq_quantize(grid, gram, config, name=full, target=w, return_corrected=True)
                    starts.append(_start(rel, full, mod, base, qt, grid, config))
                del gram, grid
            else:
                qt = quantize_tensor(w, config, name=full)
                if starts is not None:
                    starts.append(_start(rel, full, mod, w.float().clone(), qt, w, config))
            w.copy_(dequantize(qt, w.dtype))
            out[full] = qt.to("cpu")
        clock("quantize")
        done = {id(l[2]) for l in stage}
        pending = [l for l in pending if id(l[2]) not in done]
    return out


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


def _clipped(full: str, config: QuantConfig) -> bool:
    """Whether the linear named ``full`` gets the clip search."""
    return config.clip and not matches_any(full, config.skip_clip)


def _uses_gptq(config: QuantConfig) -> bool:
    return config.rounding == "gptq" or (config.rounding == "learned" and config.learned_round_init == "gptq")


def _gram_recorder(linears: list[tuple[str, str, nn.Linear]], config: QuantConfig, seed: int) -> InputGramRecorder | None:
    """What :func:`_clip_and_round` (one stage) would capture, as a recorder for the statistics
    pass: full Grams of every linear for GPTQ, else per-group Grams of the clipped ones (None: no
    Gram needed). Same seed and runs, so the same tokens are sampled."""
    if _uses_gptq(config):
        return InputGramRecorder(linears, -1, config.clip_token_subsample, seed)
    want = [lin for lin in linears if _clipped(lin[1], config)]
    return InputGramRecorder(want, config.group_size, config.clip_token_subsample, seed) if want else None


def _start(rel: str, full: str, mod: nn.Linear, base: torch.Tensor, qt: QuantizedTensor,
           grid: torch.Tensor, config: QuantConfig) -> LinearStart:
    """Learned rounding's start for one linear: ``grid`` is the weight whose per-group range
    set ``qt``'s scales and zeros (the clipped one)."""
    n, k = grid.shape
    g = k if config.group_size == -1 else config.group_size
    wg = grid.float().reshape(n, k // g, g)
    if config.sym:
        hi = wg.abs().amax(dim=-1)
        lo = -hi
    else:
        lo, hi = torch.aminmax(wg, dim=-1)
    return LinearStart(rel, full, mod, base, qt, lo, hi)


class _Clock:
    """Accumulates wall time per phase (seconds since the previous tick) into ``into``."""

    def __init__(self, into: dict[str, float]) -> None:
        self._into = into
        self._t = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self._into[phase] = self._into.get(phase, 0.0) + now - self._t
        self._t = now


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="AWQ", unit="block")
