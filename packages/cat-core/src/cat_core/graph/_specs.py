"""Groups the user gives as GroupSpecs, resolved against the traced block."""

from __future__ import annotations

import fnmatch
from dataclasses import replace

from torch import nn

from ._candidates import norm_fold
from ._channels import channel_map, find_root
from ._groups import make_group
from ._trace import Trace
from ._types import (
    ActivationFold,
    GraphError,
    GroupSpec,
    LinearFold,
    NormFold,
    ScaleGroup,
    WeightRef,
    get_param,
)
from ._uses import Use, linear_like


def spec_group(
    block: nn.Module, tr: Trace, uses: list[Use], spec: GroupSpec, label: str
) -> tuple[int, ScaleGroup]:
    names_lin = {f"{n}": f"{n}.weight" for n in linear_like(block)}
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
        fold = norm_fold(block, tr, spec.producer, channels)
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
    return order, make_group(block, fold, refs_t, channels, spec.inspect)
