"""Input Gram matrices of a block's linears, for the clip search and GPTQ rounding.

A Gram is ``mean_t x x^T`` over the tokens a linear sees, either per input group
(``[n_groups, g, g]``, the clip search's) or full (``[1, K, K]``, GPTQ's). Linears fed one tensor
(q, k, v) share one accumulator.

The Grams can be recorded while the statistics pass runs the block anyway, before the AWQ scales
are folded (:class:`InputGramRecorder`), and carried into the folded space afterwards
(:func:`rescale_folded`): folding divides exactly the group's consumers' input channels by ``s``,
so their Gram becomes ``D H D`` with ``D = diag(1/s)``. That spares a forward of the block over
every calibration token, which is what capturing them after the fold costs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from cat_core.awq._capture import BlockCall, first_output, replace_hidden, to_device
from cat_core.awq._clip_search import GramAccumulator

__all__ = [
    "InputGramRecorder",
    "run_block",
    "input_gram_parts",
    "group_means",
    "capture_linear_grams",
    "capture_full_grams",
    "full_means",
    "diagonal_blocks",
    "rescale_folded",
]

Linears = Sequence[tuple[str, str, nn.Linear]]  # (path in block, full name, module)
Parts = dict[str, list[GramAccumulator]]


def run_block(block: nn.Module, call: BlockCall, hidden: torch.Tensor, device: torch.device) -> torch.Tensor:
    c = replace_hidden(call, hidden)
    return first_output(block(*to_device(c.args, device), **to_device(c.kwargs, device)))


def _sample_rows(x: torch.Tensor, n: int | None, gen: torch.Generator) -> torch.Tensor:
    x = x.reshape(-1, x.shape[-1])
    if n is None or x.shape[0] <= n:
        return x
    idx = torch.randperm(x.shape[0], generator=gen)[:n].sort().values
    return x[idx.to(x.device)]


class _StopBlock(Exception):
    """Raised by a capture hook to end a block run once the rest of the block is not needed."""


class InputGramRecorder:
    """Accumulates, over runs of a block, the Grams of the inputs of ``linears``.

    Each input tensor's rows are sampled (``n_tokens`` per run; None: all) and its Gram formed
    once, however many linears read it. Inputs are told apart by which linears read them and in
    which occurrence, which is stable across runs. ``group_size`` -1 gives full Grams.
    ``first_input_only``: each run stops at the first call of a listed linear on a second distinct
    input, so only the linears fed the first one get Grams (GPTQ's sequential order, where the
    later linears must wait until these are quantized).
    """

    def __init__(self, linears: Linears, group_size: int, n_tokens: int | None, seed: int, *,
                 first_input_only: bool = False) -> None:
        self._linears = list(linears)
        self._group_size = group_size
        self._n_tokens = n_tokens
        self._first_only = first_input_only
        self._gen = torch.Generator().manual_seed(seed)
        self._totals: dict[tuple, GramAccumulator] = {}
        self._order: list[tuple] = []

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Records the inputs of the block run inside it (which may end early, see
        ``first_input_only``)."""
        inputs: list[list[Any]] = []  # [tensor (latest only), accumulator, linears], in call order

        def hook(rel: str, full: str):
            def fn(module: nn.Module, args: tuple) -> None:
                x = args[0]
                if not inputs or inputs[-1][0] is not x:
                    if self._first_only and inputs:
                        raise _StopBlock
                    part = GramAccumulator(x.shape[-1], self._group_size, full)  # the name is for its size check
                    part.add(_sample_rows(x.detach(), self._n_tokens, self._gen))
                    if inputs:
                        inputs[-1][0] = None
                    inputs.append([x, part, []])
                inputs[-1][2].append(rel)
            return fn

        handles = [m.register_forward_pre_hook(hook(rel, full)) for rel, full, m in self._linears]
        try:
            yield
        except _StopBlock:
            pass
        finally:
            for h in handles:
                h.remove()
        seen: dict[tuple[str, ...], int] = {}
        for _, part, rels in inputs:
            fed = tuple(dict.fromkeys(rels))
            key = (fed, seen.get(fed, 0))
            seen[fed] = key[1] + 1
            if key in self._totals:
                self._totals[key].merge(part)
            else:
                self._totals[key] = part
                self._order.append(key)

    def parts(self) -> Parts:
        """For each linear that was called: the accumulators of its inputs, one per distinct input
        (linears fed one tensor hold the same objects)."""
        out: Parts = {rel: [] for rel, _, _ in self._linears}
        for key in self._order:
            for rel in key[0]:
                out[rel].append(self._totals[key])
        return {rel: ps for rel, ps in out.items() if ps}


def input_gram_parts(
    block: nn.Module, linears: Linears, runs: Sequence[tuple[BlockCall, torch.Tensor]], device: torch.device,
    group_size: int, n_tokens: int | None, seed: int, *, first_input_only: bool = False,
) -> Parts:
    """Runs the block on each ``(call, hidden)`` of ``runs``, recording (:class:`InputGramRecorder`)."""
    rec = InputGramRecorder(linears, group_size, n_tokens, seed, first_input_only=first_input_only)
    for call, hidden in runs:
        with rec.recording():
            run_block(block, call, hidden, device)
    return rec.parts()


def group_means(parts: Parts, linears: Linears, group_size: int) -> dict[str, torch.Tensor]:
    """Per-group Gram ``[n_groups, g, g]`` of each linear of ``parts`` over all its inputs."""
    out: dict[str, torch.Tensor] = {}
    for rel, full, mod in linears:
        if rel not in parts:
            continue
        acc = GramAccumulator(mod.in_features, group_size, full)
        for p in parts[rel]:
            acc.merge(p)
        out[rel] = acc.mean()
    return out


def full_means(parts: Parts) -> dict[str, torch.Tensor]:
    """Full ``[K, K]`` Gram of each linear of ``parts`` (full accumulators, ``group_size`` -1).

    Linears fed one tensor get one tensor, not copies (full Grams are large); the accumulators'
    sums are divided in place and must not be used again.
    """
    out: dict[str, torch.Tensor] = {}
    means: dict[tuple[int, ...], torch.Tensor] = {}
    for rel, ps in parts.items():
        key = tuple(id(p) for p in ps)
        if key not in means:
            acc = ps[0]
            if len(ps) > 1:  # called more than once: a Gram of its own over every call
                acc = GramAccumulator(ps[0].sum.shape[-1], -1)
                for p in ps:
                    acc.merge(p)
            means[key] = acc.sum.div_(acc.tokens)[0]
        out[rel] = means[key]
    return out


def capture_linear_grams(
    block: nn.Module, linears: Linears, runs: Sequence[tuple[BlockCall, torch.Tensor]], device: torch.device,
    group_size: int, n_tokens: int | None, seed: int, *, first_input_only: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-group input Grams of ``linears`` over ``runs`` of the block; linears never called are
    absent."""
    parts = input_gram_parts(block, linears, runs, device, group_size, n_tokens, seed,
                             first_input_only=first_input_only)
    return group_means(parts, linears, group_size)


def capture_full_grams(
    block: nn.Module, linears: Linears, runs: Sequence[tuple[BlockCall, torch.Tensor]], device: torch.device,
    n_tokens: int | None, seed: int, *, first_input_only: bool = False,
) -> dict[str, torch.Tensor]:
    """Full ``[K, K]`` input Grams (float32) of ``linears`` over ``runs`` of the block, for GPTQ
    (see :func:`full_means`); tokens are sampled as :func:`capture_linear_grams` samples them."""
    return full_means(input_gram_parts(block, linears, runs, device, -1, n_tokens, seed,
                                       first_input_only=first_input_only))


def diagonal_blocks(gram: torch.Tensor, group_size: int) -> torch.Tensor:
    """The per-group Grams ``[n_groups, g, g]`` of a full ``[K, K]`` Gram: its diagonal blocks."""
    k = gram.shape[0]
    g = k if group_size == -1 else group_size
    ng = k // g
    if ng == 1:
        return gram.unsqueeze(0)
    return gram.reshape(ng, g, ng, g).diagonal(dim1=0, dim2=2).permute(2, 0, 1).contiguous()


def rescale_folded(parts: Parts, consumers: Sequence[str], scales: torch.Tensor) -> bool:
    """Carries the Grams of ``consumers`` (paths in the block) into the space where their input
    was divided by ``scales`` (the group's folded, tied scales): ``H <- H / (s s^T)``.

    Returns False, changing nothing, when that is not exact: a consumer read more than one
    input, or an input it reads is also read by a linear outside ``consumers`` (the fold would
    not have scaled that one). The caller then captures the Grams after the fold instead.
    """
    wanted = {c for c in consumers if c in parts}
    accs: dict[int, GramAccumulator] = {}
    for rel in wanted:
        if len(parts[rel]) != 1:
            return False
        accs[id(parts[rel][0])] = parts[rel][0]
    for rel, ps in parts.items():
        if rel not in wanted and any(id(p) in accs for p in ps):
            return False
    inv = 1.0 / scales.detach().float().reshape(-1)
    if any(a.sum.shape[0] * a.sum.shape[1] != inv.numel() for a in accs.values()):
        return False
    for acc in accs.values():
        ng, g, _ = acc.sum.shape
        d = inv.to(acc.sum.device).reshape(ng, g)
        acc.sum.mul_(d[:, :, None]).mul_(d[:, None, :])
    return True
