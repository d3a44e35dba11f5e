"""Finding the scale groups of one block from an eager trace.

1. Linear uses: F.linear / addmm / matmul calls whose weight is (a view of) a parameter.
2. Their inputs are walked back through channel-preserving ops (views, row selection, casts)
   to a root tensor; uses sharing a root form a group.
3. Producer candidates for a root: the norm module that returned it, linear ops upstream
   (channel mapping found by replaying the ops in between on a tensor of row indices), or
   the activation module that returned it.
4. Every candidate is checked by folding random scales and running the block: only folds
   that leave the block output unchanged are kept. The heuristics above propose; this
   check decides.
"""

from __future__ import annotations

import fnmatch
import math
from collections import deque
from dataclasses import dataclass, replace
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
    GroupSpec,
    LinearFold,
    NormFold,
    ScaledActivation,
    ScaleGroup,
    WeightRef,
    get_param,
    get_submodule,
)

VERIFY_TOL = 1e-3  # true folds give ~1e-6 in fp32; wrong ones O(1)


@dataclass
class _Use:
    op: int
    x: int  # node of the input
    y: int  # node of the output
    ref: WeightRef
    out_dim: int  # axis of the full parameter indexing output rows
    bias: str | None


# --------------------------------------------------------------------------- running


def _clone_inputs(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    f = lambda t: t.clone() if isinstance(t, torch.Tensor) else t  # noqa: E731
    return tree_map(f, args), tree_map(f, dict(kwargs))


def _run(block: nn.Module, inputs: tuple[tuple, dict]) -> Any:
    a, k = _clone_inputs(*inputs)
    with torch.no_grad():
        return block(*a, **k)


def _trace(block: nn.Module, inputs: tuple[tuple, dict]) -> Trace:
    a, k = _clone_inputs(*inputs)
    return run_traced(block, a, k)


def _rel_err(a: Any, b: Any) -> float:
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


# --------------------------------------------------------------------------- linear uses


def _is_param_node(tr: Trace, n: int) -> bool:
    return tr.nodes[n].param is not None


def _bias_path(tr: Trace, t: Any) -> str | None:
    if not isinstance(t, torch.Tensor):
        return None
    n = tr.node_of(t, create=False)
    if n is None or tr.nodes[n].param is None:
        return None
    return tr.nodes[n].param[0]


def find_uses(block: nn.Module, tr: Trace) -> list[_Use]:
    uses = []
    for k, op in enumerate(tr.ops):
        if op.name == "linear":
            xi, wi, bias = 0, 1, op.args[2] if len(op.args) > 2 else op.kwargs.get("bias")
            w_in_last = True
        elif op.name == "addmm":
            xi, wi, bias = 1, 2, op.args[0]
            w_in_last = False
        elif op.name in ("matmul", "__matmul__", "mm"):
            xi, wi, bias = 0, 1, None
            w_in_last = False
        else:
            continue
        if len(op.args) <= wi or not isinstance(op.args[wi], torch.Tensor):
            continue
        wn = tr.node_of(op.args[wi], create=False)
        xn = (
            tr.node_of(op.args[xi], create=False) if isinstance(op.args[xi], torch.Tensor) else None
        )
        if wn is None or xn is None or tr.nodes[wn].param is None or tr.nodes[xn].param is not None:
            continue
        pname, sel, transposed = tr.nodes[wn].param
        full = get_param(block, pname)
        if op.args[wi].dim() != 2:
            continue
        nd = full.dim()
        # axes of the 2-D weight as used; map them back to the full parameter
        in_last = w_in_last != transposed
        in_dim, out_dim = (nd - 1, nd - 2) if in_last else (nd - 2, nd - 1)
        use = _Use(k, xn, op.outs[0], WeightRef(pname, in_dim, sel), out_dim, _bias_path(tr, bias))
        if use.bias is None:
            _attach_bias(tr, use)
        uses.append(use)
    return uses


def _attach_bias(tr: Trace, use: _Use) -> None:
    """`x @ W.T + b` written out by hand: the bias is part of the producer rows too."""
    for k in range(use.op + 1, min(use.op + 8, len(tr.ops))):
        op = tr.ops[k]
        if use.y not in op.ins:
            continue
        if _BIN.get(op.name) == "add" and "sub" not in op.name and len(op.ins) == 2:
            other = op.ins[1] if op.ins[0] == use.y else op.ins[0]
            node = tr.nodes[other]
            y = tr.nodes[use.y].tensor
            if (
                node.param is not None
                and node.tensor.dim() == 1
                and node.tensor.shape[0] == y.shape[-1]
            ):
                use.bias = node.param[0]
                use.y = op.outs[0]
        return


_PASS_ROWS = {
    "view",
    "reshape",
    "flatten",
    "contiguous",
    "to",
    "float",
    "half",
    "bfloat16",
    "type",
    "type_as",
    "clone",
    "detach",
    "__getitem__",
    "index_select",
    "dropout",
    "data",
}


def find_root(tr: Trace, n: int) -> int:
    """Walk back through ops that keep the channel (last) axis intact."""
    for _ in range(64):
        node = tr.nodes[n]
        if node.op is None:
            return n
        op = tr.ops[node.op]
        if op.name not in _PASS_ROWS or not op.ins or len(op.outs) != 1:
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


# --------------------------------------------------------------------------- channel replay

_SHAPE = {
    "view",
    "reshape",
    "transpose",
    "permute",
    "__getitem__",
    "chunk",
    "split",
    "unbind",
    "expand",
    "expand_as",
    "contiguous",
    "flatten",
    "unflatten",
    "unsqueeze",
    "squeeze",
    "narrow",
    "select",
    "repeat",
    "repeat_interleave",
    "movedim",
    "t",
    "T",
    "mT",
    "clone",
    "detach",
    "index_select",
    "tensor_split",
    "split_with_sizes",
    "swapaxes",
    "swapdims",
    "view_as",
    "reshape_as",
    "cat",
    "concat",
    "concatenate",
    "stack",
    "broadcast_to",
}
_CAST = {
    "to",
    "float",
    "half",
    "bfloat16",
    "double",
    "type",
    "type_as",
    "dropout",
    "data",
    "cpu",
    "cuda",
    "alias",
}
_HOMOGENEOUS = {"relu", "relu_", "leaky_relu", "leaky_relu_", "prelu"}
_UNARY = _HOMOGENEOUS | {
    "gelu",
    "silu",
    "silu_",
    "tanh",
    "tanh_",
    "sigmoid",
    "sigmoid_",
    "exp",
    "pow",
    "__pow__",
    "sqrt",
    "rsqrt",
    "neg",
    "__neg__",
    "abs",
    "erf",
    "clamp",
    "clip",
    "clamp_",
    "square",
    "softplus",
    "hardtanh",
    "elu",
    "celu",
    "selu",
    "mish",
    "hardswish",
    "hardsigmoid",
    "relu6",
    "logsigmoid",
    "gelu_",
    "glu_act",
}
_BIN = {
    "mul": "mul",
    "__mul__": "mul",
    "__rmul__": "mul",
    "mul_": "mul",
    "__imul__": "mul",
    "multiply": "mul",
    "div": "div",
    "__truediv__": "div",
    "div_": "div",
    "__itruediv__": "div",
    "true_divide": "div",
    "add": "add",
    "__add__": "add",
    "__radd__": "add",
    "add_": "add",
    "__iadd__": "add",
    "sub": "add",
    "__sub__": "add",
    "__rsub__": "add",
    "sub_": "add",
    "__isub__": "add",
    "rsub": "add",
}


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
    if name in _CAST:
        a = info[alive[0]]
        return [a] * len(outs)
    pure = all(info[i].pure for i in alive)
    tags = frozenset().union(*(info[i].tags for i in alive))
    if name in _SHAPE:

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
    if name in _UNARY and len(alive) == 1:
        a = info[alive[0]]
        if a.idx.shape != outs[0].shape:
            return None
        return [_Idx(a.idx, a.pure and name in _HOMOGENEOUS, a.tags | {"activation"})]
    kind = _BIN.get(name)
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


def channel_map(tr: Trace, use: _Use, root: int) -> tuple[tuple[int, ...], str] | None:
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


# --------------------------------------------------------------------------- norms


def _norm_fold(block: nn.Module, tr: Trace, path: str, channels: int) -> NormFold | str:
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


# --------------------------------------------------------------------------- groups


def _owner(path: str) -> str:
    return path.rpartition(".")[0]


def _is_plain_linear(block: nn.Module, ref: WeightRef) -> bool:
    if ref.select is not None or not ref.path.endswith(".weight"):
        return False
    mod = get_submodule(block, _owner(ref.path))
    names = {n for n, _ in mod.named_parameters()}
    return not list(mod.children()) and names <= {"weight", "bias"}


def _consumer_name(block: nn.Module, ref: WeightRef) -> str:
    return _owner(ref.path) if _is_plain_linear(block, ref) else ref.name


def _lca(paths: list[str]) -> str:
    parts = [p.split(".") if p else [] for p in paths]
    common: list[str] = []
    for seg in zip(*parts, strict=False):
        if len(set(seg)) != 1:
            break
        common.append(seg[0])
    return ".".join(common)


def _inspect(block: nn.Module, fold: FoldRule, refs: tuple[WeightRef, ...]) -> str:
    owners = [_owner(r.path) for r in refs]
    insp = _lca(owners)
    # after a norm, the loss should see the nonlinearity that follows the linears
    if (
        isinstance(fold, NormFold)
        and insp in owners
        and any(_is_plain_linear(block, r) for r in refs)
    ):
        insp = _owner(insp) if "." in insp else ""
    return insp


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
        return _rel_err(baseline, _run(block, inputs))
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


def _make_group(
    block: nn.Module,
    fold: FoldRule,
    refs: tuple[WeightRef, ...],
    channels: int,
    inspect: str | None = None,
) -> ScaleGroup:
    return ScaleGroup(
        producer=fold.path,
        fold=fold,
        consumers=tuple(_consumer_name(block, r) for r in refs),
        inspect=_inspect(block, fold, refs) if inspect is None else inspect,
        weights=refs,
        channels=channels,
    )


def _param_free(mod: nn.Module) -> bool:
    return not any(True for _ in mod.parameters())


def _candidates(
    block: nn.Module, tr: Trace, root: int, uses_by_op: dict[int, _Use], channels: int
) -> tuple[list[FoldRule], list[str]]:
    """Producer folds to try for `root`, best first, and why others were rejected."""
    notes: list[str] = []
    folds: list[FoldRule] = []
    mods = tr.module_out.get(root, [])
    for m in mods:
        if m and tr.module_calls.get(m) == 1 and not _param_free(get_submodule(block, m)):
            f = _norm_fold(block, tr, m, channels)
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
                _consumer_name(block, u.ref), u.ref.path, rows, u.out_dim, u.bias, u.ref.select, via
            )
        )
    for m in mods:
        if m and tr.module_calls.get(m) == 1 and _param_free(get_submodule(block, m)):
            folds.append(ActivationFold(m))
    if not folds:
        src = tr.nodes[root]
        if src.op is None:
            notes.append("the input comes from outside the block")
        else:
            where = tr.ops[src.op].modules
            notes.append(
                f"no norm, linear or activation module produces it (op '{tr.ops[src.op].name}'"
                f" in '{where[-1] if where else '<block>'}')"
            )
    return folds, notes


def _replicate_experts(block: nn.Module, groups: list[ScaleGroup]) -> list[ScaleGroup]:
    """Copy per-expert groups of stacked expert parameters to experts no token reached."""
    by_key: dict[tuple, list[ScaleGroup]] = {}
    out = []
    for g in groups:
        f = g.fold
        sels = {r.select for r in g.weights} | ({f.select} if isinstance(f, LinearFold) else set())
        if len(sels) == 1 and None not in sels and isinstance(f, LinearFold):
            key = (
                replace(f, select=None, path=""),
                tuple(replace(r, select=None) for r in g.weights),
            )
            by_key.setdefault(key, []).append(g)
        else:
            out.append(g)
    for (_, refs), gs in by_key.items():
        f0 = gs[0].fold
        n = get_param(block, f0.weight).shape[0]
        if any(get_param(block, r.path).shape[0] != n for r in refs):
            out.extend(gs)
            continue
        for e in range(n):
            f = replace(f0, select=e, path=f"{f0.weight}[{e}]")
            rs = tuple(replace(r, select=e) for r in refs)
            out.append(_make_group(block, f, rs, gs[0].channels, gs[0].inspect))
    return out


def _structure(mod: nn.Module) -> tuple:
    return tuple(
        (n, type(m).__name__, tuple((pn, tuple(p.shape)) for pn, p in m.named_parameters(recurse=False)))
        for n, m in mod.named_modules()
    )


def _sibling_lists(block: nn.Module) -> dict[str, int]:
    """Modules whose children are named 0..n-1 and share one structure (e.g. unfused experts):
    path -> n."""
    out = {}
    for path, mod in block.named_modules():
        kids = list(mod.named_children())
        if len(kids) < 2 or [n for n, _ in kids] != [str(i) for i in range(len(kids))]:
            continue
        if len({_structure(m) for _, m in kids}) == 1:
            out[path] = len(kids)
    return out


def _sub_fold(fold: FoldRule, sub) -> FoldRule:
    changes = {"path": sub(fold.path)}
    for attr in ("weight", "bias"):
        v = getattr(fold, attr, None)
        if v is not None:
            changes[attr] = sub(v)
    return replace(fold, **changes)


def _replicate_siblings(block: nn.Module, groups: list[ScaleGroup]) -> list[ScaleGroup]:
    """Give the members of identical sibling modules no token reached (experts the router did not
    pick for the sample) the groups of a sibling that ran: a group inside the sibling is copied
    with its paths moved over; a group whose producer lies outside (the norm in front of all
    experts) gets the sibling's consumers added, so its scales reach every expert. The copies are
    structural (the siblings have identical parameters and shapes); the groups they copy were
    verified numerically."""
    sets = _sibling_lists(block)
    if not sets:
        return groups
    covered = {r.path for g in groups for r in g.weights}
    lin = _linear_like(block)
    missing = [n for n in lin if f"{n}.weight" not in covered]
    todo: dict[str, set[int]] = {}
    for n in missing:
        for path in sets:
            pre = f"{path}." if path else ""
            head = n[len(pre):].split(".", 1)[0] if n.startswith(pre) else ""
            if head.isdigit():
                todo.setdefault(path, set()).add(int(head))
    for path, idxs in todo.items():
        pre = f"{path}." if path else ""
        ref_e = next(
            (
                e
                for e in range(sets[path])
                if e not in idxs
                and all(f"{n}.weight" in covered for n in lin if n.startswith(f"{pre}{e}."))
            ),
            None,
        )
        if ref_e is None:
            continue
        rp = f"{pre}{ref_e}."
        for e in sorted(idxs, reverse=True):
            ep = f"{pre}{e}."

            def sub(p: str, rp: str = rp, ep: str = ep) -> str:
                return ep + p[len(rp):] if p.startswith(rp) else p

            out: list[ScaleGroup] = []
            for g in groups:
                inside = [r for r in g.weights if r.path.startswith(rp)]
                prod_inside = g.fold.path.startswith(rp)
                if not inside:
                    out.append(g)
                elif prod_inside and len(inside) == len(g.weights):
                    out.append(g)
                    refs = tuple(replace(r, path=sub(r.path)) for r in g.weights)
                    out.append(_make_group(block, _sub_fold(g.fold, sub), refs, g.channels, sub(g.inspect)))
                elif not prod_inside:
                    refs: list[WeightRef] = []
                    for r in g.weights:
                        refs.append(r)
                        if r is inside[-1]:
                            refs.extend(replace(x, path=sub(x.path)) for x in inside)
                    out.append(_make_group(block, g.fold, _sibling_order(tuple(refs), pre), g.channels, g.inspect))
                else:
                    out.append(g)
            groups = out
            covered |= {r.path for g in groups for r in g.weights}
        groups = _sort_sibling_groups(groups, pre)
    return groups


def _sort_sibling_groups(groups: list[ScaleGroup], pre: str) -> list[ScaleGroup]:
    """Groups lying inside one sibling each, in sibling order (at the place of the first)."""

    def idx(g: ScaleGroup) -> int | None:
        paths = [g.fold.path] + [r.path for r in g.weights]
        heads = {p[len(pre):].split(".", 1)[0] if p.startswith(pre) else "" for p in paths}
        if len(heads) != 1:
            return None
        h = heads.pop()
        return int(h) if h.isdigit() else None

    inside = [(idx(g), i, g) for i, g in enumerate(groups) if idx(g) is not None]
    if not inside:
        return groups
    inside.sort(key=lambda t: (t[0], t[1]))
    out, placed = [], False
    for g in groups:
        if idx(g) is None:
            out.append(g)
        elif not placed:
            out.extend(x[2] for x in inside)
            placed = True
    return out


def _sibling_order(refs: tuple[WeightRef, ...], pre: str) -> tuple[WeightRef, ...]:
    """Consumers of one sibling list sorted by sibling index (in place of the first of them)."""

    def idx(r: WeightRef) -> int | None:
        if not r.path.startswith(pre):
            return None
        head = r.path[len(pre):].split(".", 1)[0]
        return int(head) if head.isdigit() else None

    sib = [r for r in refs if idx(r) is not None]
    if not sib:
        return refs
    order = {r.path[len(pre) + len(str(idx(r))):]: i for i, r in reversed(list(enumerate(sib)))}
    sib.sort(key=lambda r: (idx(r), order[r.path[len(pre) + len(str(idx(r))):]]))
    out, placed = [], False
    for r in refs:
        if idx(r) is None:
            out.append(r)
        elif not placed:
            out.extend(sib)
            placed = True
    return tuple(out)


def _linear_like(block: nn.Module) -> list[str]:
    """Leaf modules holding a 2-D weight: the linears that must end up in some group."""
    out = []
    for n, m in block.named_modules():
        w = getattr(m, "weight", None)
        if (
            n
            and not list(m.children())
            and isinstance(w, nn.Parameter)
            and w.dim() == 2
            and not isinstance(m, nn.Embedding)
        ):
            out.append(n)
    return out


def analyze_block(
    block: nn.Module,
    inputs: tuple[tuple, dict],
    block_name: str,
    specs: list[GroupSpec] | None = None,
    strict: bool = True,
) -> tuple[list[ScaleGroup], list[tuple[str, str]]]:
    """Scale groups of `block` (paths relative to it), and consumers skipped with reasons."""
    baseline = _run(block, inputs)
    tr = _trace(block, inputs)
    if _rel_err(baseline, tr.output) > 1e-5:
        raise GraphError(f"block {block_name}: output is not deterministic; cannot analyse it")
    uses = find_uses(block, tr)
    uses_by_op = {u.op: u for u in uses}
    label = f"block '{block_name}' ({type(block).__name__})"
    groups: list[tuple[int, ScaleGroup]] = []
    skipped: list[tuple[str, str]] = []

    def fail(what: str, why: str) -> None:
        if strict:
            raise GraphError(f"{label}: {what}: {why}. Pass its groups explicitly with GroupSpec.")
        skipped.append((what, why))

    # user groups first; their consumers leave automatic discovery
    covered: set[str] = set()
    for spec in specs or []:
        order, g = _spec_group(block, tr, uses, spec, label)
        err = verify(block, g, inputs, baseline)
        if err > VERIFY_TOL:
            raise GraphError(
                f"{label}: group {spec} changes the block output (rel. error {err:.2e})"
            )
        covered.update(r.path for r in g.weights)
        groups.append((order, g))

    # consumers by root; a parameter used from one root with several expert slices is one consumer
    by_param: dict[str, list[_Use]] = {}
    for u in uses:
        if u.ref.path not in covered:
            by_param.setdefault(u.ref.path, []).append(u)
    by_root: dict[int, list[_Use]] = {}
    for _pname, us in by_param.items():
        roots = {find_root(tr, u.x) for u in us}
        if len(roots) == 1 and len({u.ref.select for u in us}) > 1:
            u0 = us[0]
            merged = _Use(u0.op, u0.x, u0.y, replace(u0.ref, select=None), u0.out_dim, u0.bias)
            by_root.setdefault(roots.pop(), []).append(merged)
            continue
        per_sel: dict[int | None, list[_Use]] = {}
        for u in us:
            per_sel.setdefault(u.ref.select, []).append(u)
        for _sel, su in per_sel.items():
            rts = {find_root(tr, u.x) for u in su}
            if len(rts) != 1:
                fail(su[0].ref.name, "it is applied to several different inputs")
                continue
            by_root.setdefault(rts.pop(), []).append(su[0])

    for root, us in sorted(by_root.items(), key=lambda kv: min(u.op for u in kv[1])):
        us.sort(key=lambda u: u.op)
        refs = tuple(u.ref for u in us)
        channels = tr.nodes[root].tensor.shape[-1]
        names = ", ".join(_consumer_name(block, r) for r in refs)
        folds, notes = _candidates(block, tr, root, uses_by_op, channels)
        chosen = None
        for f in folds:
            g = _make_group(block, f, refs, channels)
            err = verify(block, g, inputs, baseline)
            if err <= VERIFY_TOL:
                chosen = g
                break
            notes.append(
                f"folding into '{f.path}' ({f.describe()}) changes the block output"
                f" (rel. error {err:.1e})"
            )
        if chosen is None:
            fail(names, "no producer can absorb 1/s: " + "; ".join(notes or ["no candidate"]))
            continue
        groups.append((us[0].op, chosen))

    result = _replicate_experts(block, [g for _, g in sorted(groups, key=lambda og: og[0])])
    result = _replicate_siblings(block, result)
    done = {r.path for g in result for r in g.weights} | {n for n, _ in skipped}
    for n in _linear_like(block):
        if f"{n}.weight" not in done and n not in done:
            fail(n, "it did not run during discovery (or not as a linear layer)")
    return result, skipped


def _spec_group(
    block: nn.Module, tr: Trace, uses: list[_Use], spec: GroupSpec, label: str
) -> tuple[int, ScaleGroup]:
    names_lin = {f"{n}": f"{n}.weight" for n in _linear_like(block)}
    names_par = {n: n for n, _ in block.named_parameters()}
    refs: list[WeightRef] = []
    for pat in spec.consumers:
        hits = [v for k, v in {**names_par, **names_lin}.items() if fnmatch.fnmatchcase(k, pat)]
        if not hits:
            raise GraphError(
                f"{label}: GroupSpec consumer pattern '{pat}' matches no linear or parameter"
            )
        for h in hits:
            if any(r.path == h for r in refs):
                continue
            u = next((u for u in uses if u.ref.path == h), None)
            if u is not None:
                refs.append(replace(u.ref, select=None))
            else:
                refs.append(WeightRef(h, get_param(block, h).dim() - 1))
    refs_t = tuple(refs)
    w0 = refs_t[0]
    channels = get_param(block, w0.path).shape[w0.in_dim]
    order = min(
        (u.op for u in uses if any(u.ref.path == r.path for r in refs_t)), default=len(tr.ops)
    )
    fold = spec.fold
    if fold == "norm":
        fold = _norm_fold(block, tr, spec.producer, channels)
        if isinstance(fold, str):
            raise GraphError(f"{label}: GroupSpec producer: {fold}")
    elif fold == "activation":
        fold = ActivationFold(spec.producer)
    elif fold == "linear":
        wpath = spec.producer if spec.producer in names_par else f"{spec.producer}.weight"
        pu = next((u for u in uses if u.ref.path == wpath), None)
        cu = next((u for u in uses if u.ref.path == w0.path), None)
        mapped = channel_map(tr, pu, find_root(tr, cu.x)) if pu and cu else None
        if mapped is None:
            p = get_param(block, wpath)
            out_dim = pu.out_dim if pu else 0
            if p.shape[out_dim] != channels:
                raise GraphError(
                    f"{label}: GroupSpec: cannot map the rows of '{spec.producer}' to the"
                    f" {channels} input channels of the consumers"
                )
            mapped = (tuple(range(channels)), "direct")
        bias = (
            pu.bias
            if pu
            else (f"{spec.producer}.bias" if f"{spec.producer}.bias" in names_par else None)
        )
        fold = LinearFold(
            spec.producer, wpath, mapped[0], pu.out_dim if pu else 0, bias, None, mapped[1]
        )
    elif not isinstance(fold, (NormFold, LinearFold, ActivationFold)):
        raise GraphError(
            f"{label}: GroupSpec fold must be 'norm', 'linear', 'activation' or a fold rule"
        )
    return order, _make_group(block, fold, refs_t, channels, spec.inspect)


__all__ = ["analyze_block", "verify", "ScaledActivation"]
