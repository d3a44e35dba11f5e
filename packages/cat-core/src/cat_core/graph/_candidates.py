"""Producer folds to propose for the consumers of one root tensor.

Candidates, best first: the norm module that returned the root (its weight, bias and
`(offset + weight)` form identified numerically), linear ops upstream (rows mapped by
`channel_map`), the parameter-free activation module that returned it. Every candidate is still
checked by `verify` before it is used.
"""

from __future__ import annotations

from collections import deque

import torch
from torch import nn

from ._channels import channel_map
from ._groups import consumer_name
from ._ops import BINARY
from ._trace import Trace
from ._types import ActivationFold, FoldRule, LinearFold, NormFold, get_submodule
from ._uses import Use


def norm_fold(block: nn.Module, tr: Trace, path: str, channels: int) -> NormFold | str:
    """Identify weight/bias/offset of a norm module numerically, or say why it is not one."""
    mod = get_submodule(block, path)
    params = dict(mod.named_parameters())
    if (
        not params
        or any(p.dim() != 1 or p.numel() != channels for p in params.values())
        or len(params) > 2
    ):
        return f"'{path}' is not a norm with per-channel weight/bias of size {channels}"
    xin = tr.module_in.get(path)
    if xin is None:
        return f"'{path}' did not run"
    x = tr.nodes[xin].tensor
    saved = {n: p.detach().clone() for n, p in params.items()}

    def out_with(vals: dict[str, float]) -> torch.Tensor:
        for n, p in params.items():
            p.data.fill_(vals.get(n, 0.0))
        with torch.no_grad():
            return mod(x.clone()).double()

    try:
        zero = out_with({})
        deltas = {n: out_with({n: 1.0}) - zero for n in params}
    finally:
        for n, p in params.items():
            p.data.copy_(saved[n])
    bias = [n for n, d in deltas.items() if torch.allclose(d, torch.ones_like(d), atol=1e-4)]
    weight = [n for n in params if n not in bias]
    if len(weight) != 1 or len(bias) > 1:
        return f"'{path}': could not tell weight from bias"
    nrm = deltas[weight[0]]
    offset = (zero * nrm).sum() / (nrm * nrm).sum().clamp_min(1e-30)
    offset = float(offset)
    if abs(offset) < 1e-6:
        offset = 0.0
    if (zero - offset * nrm).abs().max() > 1e-3 * nrm.abs().max():
        return f"'{path}': output is not norm(x) * (weight + c) + bias"
    pre = f"{path}." if path else ""
    return NormFold(path, pre + weight[0], pre + bias[0] if bias else None, round(offset, 6))


def _param_free(mod: nn.Module) -> bool:
    return not any(True for _ in mod.parameters())


def candidates(
    block: nn.Module, tr: Trace, root: int, uses_by_op: dict[int, Use], channels: int
) -> tuple[list[FoldRule], list[str]]:
    """Producer folds to try for `root`, best first, and why others were rejected."""
    notes: list[str] = []
    folds: list[FoldRule] = []
    mods = tr.module_out.get(root, [])
    for m in mods:
        if m and tr.module_calls.get(m) == 1 and not _param_free(get_submodule(block, m)):
            f = norm_fold(block, tr, m, channels)
            if isinstance(f, str):
                notes.append(f)
            else:
                folds.append(f)
                break
    # linear ops upstream, nearest first; search stops at each linear op
    seen, found = {root}, []
    q = deque([root])
    while q and len(seen) < 20000:
        n = q.popleft()
        op = tr.nodes[n].op
        if op is None:
            continue
        if op in uses_by_op:
            found.append(uses_by_op[op])
            continue
        for i in tr.ops[op].ins:
            if i not in seen and tr.nodes[i].param is None:
                seen.add(i)
                q.append(i)
    for u in found:
        mapped = channel_map(tr, u, root)
        if mapped is None:
            continue
        rows, via = mapped
        if len(rows) != channels:
            continue
        folds.append(
            LinearFold(
                consumer_name(block, u.ref), u.ref.path, rows, u.out_dim, u.bias, u.ref.select, via
            )
        )
    for m in mods:
        if m and tr.module_calls.get(m) == 1 and _param_free(get_submodule(block, m)):
            folds.append(ActivationFold(m))
    return folds, notes


def why_no_fold(tr: Trace, root: int, notes: list[str]) -> tuple[str, str, str]:
    """Why no producer can absorb 1/s for `root`, what the user can do ("" if nothing) and the
    UnscaledGroup kind; `notes` are the rejected candidates of `candidates`."""
    src = tr.nodes[root]
    tried = f" ({'; '.join(notes)})" if notes else ""
    if src.op is None:
        # post-norm-only blocks: q/k/v read the block input itself
        reason = "its input is the block's input, the residual stream, which no op of the block produces"
        return reason + tried, "", "residual"
    op = tr.ops[src.op]
    where = op.modules[-1] if op.modules else "<block>"
    if BINARY.get(op.name) == "add":
        # h = x + norm(attn(x)) feeding the MLP: a sum, no single producer of its channels
        return (
            f"its input is a sum (op '{op.name}' in '{where}'), the residual stream, which no"
            f" single producer can absorb 1/s for{tried}",
            "",
            "residual",
        )
    reason = f"no norm, linear or activation module produces it (op '{op.name}' in '{where}')"
    hint = "if some module in front of them can absorb 1/s, name it with a GroupSpec"
    return reason + tried, hint, "other"
