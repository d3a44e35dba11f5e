"""Running a block on copies of its inputs, and checking a fold numerically.

A proposed group is applied with random scales to the block and the output compared with the
unscaled run: only folds that leave the output unchanged are kept. The heuristics propose; this
check decides.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from ._apply import apply_scales
from ._trace import Trace, run_traced
from ._types import (
    ActivationFold,
    FoldRule,
    GraphError,
    LinearFold,
    NormFold,
    ScaleGroup,
    get_param,
    get_submodule,
)

VERIFY_TOL = 1e-3  # true folds give ~1e-6 in fp32; wrong ones O(1)


def _clone_inputs(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    f = lambda t: t.clone() if isinstance(t, torch.Tensor) else t  # noqa: E731
    return tree_map(f, args), tree_map(f, dict(kwargs))


def run_block(block: nn.Module, inputs: tuple[tuple, dict]) -> Any:
    a, k = _clone_inputs(*inputs)
    with torch.no_grad():
        return block(*a, **k)


def trace_block(block: nn.Module, inputs: tuple[tuple, dict]) -> Trace:
    a, k = _clone_inputs(*inputs)
    return run_traced(block, a, k)


def rel_err(a: Any, b: Any) -> float:
    fa = [t for t in tree_flatten(a)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
    fb = [t for t in tree_flatten(b)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if len(fa) != len(fb) or not fa:
        return math.inf
    err = 0.0
    for x, y in zip(fa, fb, strict=False):
        if x.shape != y.shape:
            return math.inf
        den = x.abs().max().item() or 1.0
        err = max(err, (x.float() - y.float()).abs().max().item() / den)
    return err


def _fold_params(fold: FoldRule) -> list[str]:
    if isinstance(fold, NormFold):
        return [fold.weight] + ([fold.bias] if fold.bias else [])
    if isinstance(fold, LinearFold):
        return [fold.weight] + ([fold.bias] if fold.bias else [])
    return []


def verify(
    block: nn.Module, group: ScaleGroup, inputs: tuple[tuple, dict], baseline: Any, seed: int = 0
) -> float:
    """Relative change of the block output after folding random scales with `group`."""
    g = torch.Generator().manual_seed(seed)
    s = torch.exp(0.5 * torch.randn(group.channels, generator=g))
    paths = _fold_params(group.fold) + [r.path for r in group.weights]
    saved = {p: get_param(block, p).detach().clone() for p in dict.fromkeys(paths)}
    act = get_submodule(block, group.fold.path) if isinstance(group.fold, ActivationFold) else None
    try:
        apply_scales(block, group, s.to(next(block.parameters()).device))
        return rel_err(baseline, run_block(block, inputs))
    except GraphError:
        raise
    except Exception:
        return math.inf
    finally:
        for p, t in saved.items():
            get_param(block, p).data.copy_(t)
        if act is not None:
            owner, _, name = group.fold.path.rpartition(".")
            setattr(get_submodule(block, owner), name, act)
