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

from dataclasses import replace

from torch import nn

from ._candidates import candidates, why_no_fold
from ._channels import find_root
from ._groups import consumer_name, make_group
from ._replicate import replicate_experts, replicate_siblings
from ._specs import spec_group
from ._types import GraphError, GroupSpec, ScaleGroup, UnscaledGroup
from ._uses import Use, find_uses, linear_like
from ._verify import VERIFY_TOL, rel_err, run_block, trace_block, verify


def analyze_block(
    block: nn.Module,
    inputs: tuple[tuple, dict],
    block_name: str,
    specs: list[GroupSpec] | None = None,
    strict: bool | None = None,
) -> tuple[list[ScaleGroup], list[UnscaledGroup]]:
    """Scale groups of `block` (paths relative to it), and the consumers left without input
    scaling, with reasons. Which of those raise GraphError instead: with `strict=None` those
    not reading the residual stream, with `True` all, with `False` none (see `discover`)."""
    baseline = run_block(block, inputs)
    tr = trace_block(block, inputs)
    if rel_err(baseline, tr.output) > 1e-5:
        raise GraphError(
            f"block {block_name}: two runs on the same input give different outputs, so no fold"
            " can be checked; make the block deterministic in eval mode (no dropout or router"
            " noise left on) to quantize it"
        )
    uses = find_uses(block, tr)
    uses_by_op = {u.op: u for u in uses}
    label = f"block '{block_name}' ({type(block).__name__})"
    groups: list[tuple[int, ScaleGroup]] = []
    unscaled: list[UnscaledGroup] = []

    def leave_unscaled(consumers: tuple[str, ...], reason: str, hint: str, kind: str) -> None:
        u = UnscaledGroup(consumers, reason, hint, kind)
        if strict:
            raise GraphError(f"{label}: {u.describe()} (strict: every consumer needs input scales)")
        if strict is None and kind != "residual":
            # not the well-understood post-norm case: the analysis may have missed a producer
            raise GraphError(f"{label}: {u.describe()}; or strict=False quantizes them without input scaling")
        unscaled.append(u)

    # user groups first; their consumers leave automatic discovery
    covered: set[str] = set()
    for spec in specs or []:
        order, g = spec_group(block, tr, uses, spec, label)
        err = verify(block, g, inputs, baseline)
        if err > VERIFY_TOL:
            raise GraphError(
                f"{label}: group {spec} changes the block output (rel. error {err:.2e})"
            )
        covered.update(r.path for r in g.weights)
        groups.append((order, g))

    # consumers by root; a parameter used from one root with several expert slices is one consumer
    by_param: dict[str, list[Use]] = {}
    for u in uses:
        if u.ref.path not in covered:
            by_param.setdefault(u.ref.path, []).append(u)
    by_root: dict[int, list[Use]] = {}
    for _pname, us in by_param.items():
        roots = {find_root(tr, u.x) for u in us}
        if len(roots) == 1 and len({u.ref.select for u in us}) > 1:
            u0 = us[0]
            merged = Use(u0.op, u0.x, u0.y, replace(u0.ref, select=None), u0.out_dim, u0.bias)
            by_root.setdefault(roots.pop(), []).append(merged)
            continue
        per_sel: dict[int | None, list[Use]] = {}
        for u in us:
            per_sel.setdefault(u.ref.select, []).append(u)
        for _sel, su in per_sel.items():
            rts = {find_root(tr, u.x) for u in su}
            if len(rts) != 1:
                leave_unscaled(
                    (consumer_name(block, su[0].ref),),
                    "it is applied to several different inputs, which one scale cannot serve",
                    "",
                    "shared",
                )
                continue
            by_root.setdefault(rts.pop(), []).append(su[0])

    for root, us in sorted(by_root.items(), key=lambda kv: min(u.op for u in kv[1])):
        us.sort(key=lambda u: u.op)
        refs = tuple(u.ref for u in us)
        channels = tr.nodes[root].tensor.shape[-1]
        folds, notes = candidates(block, tr, root, uses_by_op, channels)
        chosen = None
        for f in folds:
            g = make_group(block, f, refs, channels)
            err = verify(block, g, inputs, baseline)
            if err <= VERIFY_TOL:
                chosen = g
                break
            notes.append(
                f"folding into '{f.path}' ({f.describe()}) changes the block output"
                f" (rel. error {err:.1e})"
            )
        if chosen is None:
            names = tuple(consumer_name(block, r) for r in refs)
            leave_unscaled(names, *why_no_fold(tr, root, notes))
            continue
        groups.append((us[0].op, chosen))

    result = replicate_experts(block, [g for _, g in sorted(groups, key=lambda og: og[0])])
    result = replicate_siblings(block, result)
    done = {r.path for g in result for r in g.weights} | {c for u in unscaled for c in u.consumers}
    for n in linear_like(block):
        if f"{n}.weight" not in done and n not in done:
            leave_unscaled(
                (n,),
                "it did not run as a linear layer on the discovery sample",
                "if a sample that reaches it exists, pass it as sample_input_ids",
                "not-run",
            )
    return result, unscaled


__all__ = ["analyze_block", "verify"]
