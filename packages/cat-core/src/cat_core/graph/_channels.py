"""Where a consumer's input comes from, channel by channel.

`find_root` walks a linear's input back through ops that keep the channel axis to the tensor the
consumers share. `channel_map` finds which output row of an upstream linear feeds each channel of
that tensor by replaying the ops in between on a tensor of row indices (through attention, gates
and activations), tagging what lies between and whether the path is positively homogeneous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_flatten, tree_map

from ._ops import BINARY, CAST, HOMOGENEOUS, PASS_ROWS, SHAPE, UNARY
from ._trace import Trace
from ._uses import Use


def find_root(tr: Trace, n: int) -> int:
    """Walk back through ops that keep the channel (last) axis intact."""
    for _ in range(64):
        node = tr.nodes[n]
        if node.op is None:
            return n
        op = tr.ops[node.op]
        if op.name not in PASS_ROWS or not op.ins or len(op.outs) != 1:
            return n
        src = tr.nodes[op.ins[0]]
        if (
            src.param is not None
            or src.tensor.dim() == 0
            or src.tensor.shape[-1] != node.tensor.shape[-1]
        ):
            return n
        n = op.ins[0]
    return n


@dataclass
class _Idx:
    idx: torch.Tensor  # float64 producer row index per element (NaN: unknown)
    pure: bool  # positively homogeneous in the producer rows so far
    tags: frozenset


def _replay_op(tr: Trace, k: int, info: dict[int, _Idx]) -> list[_Idx] | None:
    op = tr.ops[k]
    alive = [i for i in op.ins if i in info]
    name = op.name
    outs = [tr.nodes[o].tensor for o in op.outs]
    if name in CAST:
        a = info[alive[0]]
        return [a] * len(outs)
    pure = all(info[i].pure for i in alive)
    tags = frozenset().union(*(info[i].tags for i in alive))
    if name in SHAPE:

        def sub(t):
            if not isinstance(t, torch.Tensor):
                return t
            n = tr.node_of(t, create=False)
            if n is not None and n in info:
                return info[n].idx
            if name in ("cat", "concat", "concatenate", "stack"):
                return torch.full(t.shape, math.nan, dtype=torch.float64, device=t.device)
            return t

        if name in ("view", "reshape", "flatten", "unflatten", "view_as", "reshape_as"):
            res = [sub(op.args[0]).reshape(outs[0].shape)]
        else:
            args, kwargs = tree_map(sub, (op.args, op.kwargs))
            res = [
                t for t in tree_flatten(op.func(*args, **kwargs))[0] if isinstance(t, torch.Tensor)
            ]
        if len(res) != len(outs):
            return None
        return [_Idx(r, pure, tags) for r in res]
    if name in ("matmul", "__matmul__", "bmm") and len(op.args) >= 2:
        a, b = (
            tr.node_of(t, create=False) if isinstance(t, torch.Tensor) else None
            for t in op.args[:2]
        )
        if b not in info or a in info:
            return None
        bi = info[b].idx
        if not torch.equal(bi, bi[..., :1, :].expand_as(bi)):
            return None
        return [_Idx(bi[..., :1, :].expand(outs[0].shape).contiguous(), pure, tags | {"attention"})]
    if name == "scaled_dot_product_attention":
        v = op.args[2] if len(op.args) > 2 else op.kwargs.get("value")
        vn = tr.node_of(v, create=False) if isinstance(v, torch.Tensor) else None
        if vn not in info:
            return None
        vi = info[vn].idx
        if vi.dim() >= 3 and outs[0].shape[-3] != vi.shape[-3]:
            vi = vi.repeat_interleave(outs[0].shape[-3] // vi.shape[-3], dim=-3)
        return [
            _Idx(
                vi[..., :1, :].expand(outs[0].shape).contiguous(),
                info[vn].pure,
                info[vn].tags | {"attention"},
            )
        ]
    if name in UNARY and len(alive) == 1:
        a = info[alive[0]]
        if a.idx.shape != outs[0].shape:
            return None
        return [_Idx(a.idx, a.pure and name in HOMOGENEOUS, a.tags | {"activation"})]
    kind = BINARY.get(name)
    if kind is None or len(op.args) < 1:
        return None
    ops_ = list(op.args[:2]) + ([op.kwargs["other"]] if "other" in op.kwargs else [])
    nodes = [tr.node_of(t, create=False) if isinstance(t, torch.Tensor) else None for t in ops_]
    live = [j for j, n in enumerate(nodes) if n is not None and n in info]
    if name in ("__rsub__", "rsub") and 0 in live:
        return [_Idx(info[nodes[0]].idx.broadcast_to(outs[0].shape), False, tags)]
    if len(live) == 1:
        a = info[nodes[live[0]]]
        if kind == "div" and live[0] != 0:
            return None
        p = a.pure and kind in ("mul", "div")
        t = a.tags | (
            {"gate"} if kind == "mul" and isinstance(ops_[1 - live[0]], torch.Tensor) else set()
        )
        return [_Idx(a.idx.broadcast_to(outs[0].shape), p, frozenset(t))]
    if len(live) == 2:
        x, y = info[nodes[live[0]]], info[nodes[live[1]]]
        if kind == "mul":
            pick = y if (y.pure and not x.pure) else x
            if x.pure != y.pure:
                return [_Idx(pick.idx.broadcast_to(outs[0].shape), True, pick.tags | {"gate"})]
            return [_Idx(pick.idx.broadcast_to(outs[0].shape), False, pick.tags | {"gate"})]
        if kind == "add":
            xi, yi = x.idx.broadcast_to(outs[0].shape), y.idx.broadcast_to(outs[0].shape)
            if torch.equal(xi, yi):
                return [_Idx(xi, x.pure and y.pure, x.tags | y.tags)]
    return None


def channel_map(tr: Trace, use: Use, root: int) -> tuple[tuple[int, ...], str] | None:
    """Producer row feeding each channel of `root`, by replaying the ops from `use` on."""
    y = tr.nodes[use.y].tensor
    n_rows = y.shape[-1]
    start = torch.arange(n_rows, dtype=torch.float64, device=y.device).expand(y.shape).contiguous()
    info: dict[int, _Idx] = {use.y: _Idx(start, True, frozenset())}
    root_op = tr.nodes[root].op
    if root_op is None:
        return None
    for k in range(use.op + 1, root_op + 1):
        op = tr.ops[k]
        if not any(i in info for i in op.ins):
            continue
        try:
            res = _replay_op(tr, k, info)
        except Exception:  # an op the replay cannot mimic just ends this path
            res = None
        if res is None:
            continue
        for o, r in zip(op.outs, res, strict=False):
            info[o] = r
    if root not in info:
        return None
    r = info[root].idx
    flat = r.reshape(-1, r.shape[-1])
    m = flat[0]
    if torch.isnan(m).any() or not torch.equal(flat, m.expand_as(flat)):
        return None
    tags = info[root].tags
    via = next((t for t in ("attention", "gate", "activation") if t in tags), "direct")
    return tuple(int(v) for v in m.tolist()), via
