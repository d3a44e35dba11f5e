"""Finding the block stack of a causal LM and discovering the groups of every block."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from cat_core._offload import Held, execution_device

from ._analyze import analyze_block
from ._types import BlockGraph, GraphError, GroupSpec, LayerGraph


def find_blocks(model: nn.Module) -> tuple[str, nn.Module, nn.ModuleList]:
    """The stack of repeated decoder blocks.

    Returns `(path, parent, blocks)`: the dotted path of the nn.ModuleList, the module holding
    it and the list. Rule: among ModuleLists whose entries all share one class, the one
    holding the most parameters (this skips expert lists, which live inside blocks, and
    small lists of norms or heads); ties go to the shallower path.
    """
    best: tuple[int, int, str] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if len({type(m) for m in mod}) != 1:
            continue
        n = sum(p.numel() for p in mod.parameters())
        key = (n, -name.count("."), name)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        raise GraphError(f"{type(model).__name__}: no nn.ModuleList of repeated blocks found")
    path = best[2]
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    return path, parent, getattr(parent, attr)


def _signature(block: nn.Module) -> tuple:
    return tuple(
        (n, type(m), tuple((pn, tuple(p.shape)) for pn, p in m.named_parameters(recurse=False)))
        for n, m in block.named_modules()
    )


class _Stop(Exception):
    pass


@contextlib.contextmanager
def _analysis_mode(model: nn.Module) -> Iterator[None]:
    """Eager attention and eager experts (loops of F.linear) while discovering; eval mode.

    Fused kernels hide the dataflow from the trace; the eager paths compute the same function.
    """
    cfg = getattr(model, "config", None)
    saved: dict[str, Any] = {}
    for attr in ("_attn_implementation", "_experts_implementation"):
        if cfg is not None and getattr(cfg, attr, None) not in (None, "eager"):
            try:
                saved[attr] = getattr(cfg, attr)
                setattr(cfg, attr, "eager")
            except Exception:
                saved.pop(attr, None)
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, t in training.items():
            m.training = t
        for attr, v in saved.items():
            setattr(cfg, attr, v)


def _capture(
    model: nn.Module, blocks: nn.ModuleList, wanted: list[int], ids: torch.Tensor
) -> dict[int, tuple[tuple, dict]]:
    got: dict[int, tuple[tuple, dict]] = {}
    f = lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t  # noqa: E731

    def hook_for(i: int):
        def hook(mod, args, kwargs):
            got[i] = (tree_map(f, args), tree_map(f, dict(kwargs)))
            if len(got) == len(wanted):
                raise _Stop

        return hook

    handles = [blocks[i].register_forward_pre_hook(hook_for(i), with_kwargs=True) for i in wanted]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [i for i in wanted if i not in got]
    if missing:
        raise GraphError(f"blocks {missing} did not run during the sample forward pass")
    return got


def _default_ids(model: nn.Module, seed: int) -> torch.Tensor:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(emb, "num_embeddings", None) or getattr(
        getattr(model, "config", None), "vocab_size", 1000
    )
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (2, 24), generator=g)


def _fp32_copy(
    block: nn.Module, inputs: tuple[tuple, dict]
) -> tuple[nn.Module, tuple[tuple, dict]]:
    """Analyse low-precision blocks on an fp32 copy, so that rounding does not blur the checks."""
    dtypes = {p.dtype for p in block.parameters() if p.is_floating_point()}
    if dtypes <= {torch.float32, torch.float64}:
        return block, inputs
    f = lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    return copy.deepcopy(block).float(), tree_map(f, inputs)


def discover(
    model: nn.Module,
    sample_input_ids: torch.Tensor | None = None,
    groups: Sequence[GroupSpec] | None = None,
    *,
    strict: bool | None = None,
    seed: int = 0,
) -> LayerGraph:
    """Discover the scale groups of every decoder block of a causal LM.

    Runs the model once on `sample_input_ids` (default: random token ids) to capture the
    inputs of the first block of each distinct block structure, then runs those blocks
    under a trace and checks every proposed fold numerically. Blocks of identical structure
    share the groups found for the first. `groups` are user GroupSpecs applied to every
    block (they take over the consumers they name).

    Consumers whose input no producer can absorb 1/s for are listed in `BlockGraph.unscaled`, with
    the reason; AWQ quantizes them without input scaling (clip search and GPTQ rounding still
    apply). By default (`strict=None`) only consumers reading the residual stream (q/k/v and
    gate/up of post-norm-only blocks, where nothing can absorb it) are left so; any other raises
    GraphError, naming the consumers, the reason and what to do. `strict=False` leaves every such
    consumer unscaled; `strict=True` raises for all of them.
    """
    path, _, blocks = find_blocks(model)
    sigs = [_signature(b) for b in blocks]
    first: dict[tuple, int] = {}
    for i, s in enumerate(sigs):
        first.setdefault(s, i)
    device = execution_device(model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model)
    ids = _default_ids(model, seed) if sample_input_ids is None else sample_input_ids
    ids = ids.to(device)
    if ids.dim() == 1:
        ids = ids[None]
    specs = list(groups or [])
    with _analysis_mode(model):
        inputs = _capture(model, blocks, sorted(first.values()), ids)
        found: dict[tuple, tuple[list, list]] = {}
        for sig, i in first.items():
            held = Held(blocks[i], execution_device(blocks[i]))  # offloaded weights made real
            try:
                blk, inp = _fp32_copy(blocks[i], inputs[i])
                found[sig] = analyze_block(blk, inp, f"{path}.{i}", specs, strict)
            finally:
                held.release(write_back=False)  # the analysis works on a copy
    out = []
    for i, (b, s) in enumerate(zip(blocks, sigs, strict=False)):
        gs, sk = found[s]
        out.append(BlockGraph(i, f"{path}.{i}", b, list(gs), list(sk)))
    return LayerGraph(path, out)
