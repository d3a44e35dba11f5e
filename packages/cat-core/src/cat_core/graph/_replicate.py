"""Groups for consumers no sample token reached: expert slices of stacked parameters, and members
of identical sibling modules (unfused experts). The copies are structural; the groups they copy
were verified numerically."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from ._groups import make_group
from ._types import FoldRule, LinearFold, ScaleGroup, WeightRef, get_param
from ._uses import linear_like


def replicate_experts(block: nn.Module, groups: list[ScaleGroup]) -> list[ScaleGroup]:
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
            out.append(make_group(block, f, rs, gs[0].channels, gs[0].inspect))
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


def replicate_siblings(block: nn.Module, groups: list[ScaleGroup]) -> list[ScaleGroup]:
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
    lin = linear_like(block)
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
                    out.append(make_group(block, _sub_fold(g.fold, sub), refs, g.channels, sub(g.inspect)))
                elif not prod_inside:
                    refs: list[WeightRef] = []
                    for r in g.weights:
                        refs.append(r)
                        if r is inside[-1]:
                            refs.extend(replace(x, path=sub(x.path)) for x in inside)
                    out.append(make_group(block, g.fold, _sibling_order(tuple(refs), pre), g.channels, g.inspect))
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
