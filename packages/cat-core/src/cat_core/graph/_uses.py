"""Linear uses in a traced block: F.linear / addmm / matmul calls whose weight is (a view of) a
parameter, with the parameter axis that indexes output rows and the bias that goes with them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._ops import BINARY
from ._trace import Trace
from ._types import WeightRef, get_param


@dataclass
class Use:
    op: int
    x: int  # node of the input
    y: int  # node of the output
    ref: WeightRef
    out_dim: int  # axis of the full parameter indexing output rows
    bias: str | None


def _bias_path(tr: Trace, t: Any) -> str | None:
    if not isinstance(t, torch.Tensor):
        return None
    n = tr.node_of(t, create=False)
    if n is None or tr.nodes[n].param is None:
        return None
    return tr.nodes[n].param[0]


def find_uses(block: nn.Module, tr: Trace) -> list[Use]:
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
        use = Use(k, xn, op.outs[0], WeightRef(pname, in_dim, sel), out_dim, _bias_path(tr, bias))
        if use.bias is None:
            _attach_bias(tr, use)
        uses.append(use)
    return uses


def _attach_bias(tr: Trace, use: Use) -> None:
    """`x @ W.T + b` written out by hand: the bias is part of the producer rows too."""
    for k in range(use.op + 1, min(use.op + 8, len(tr.ops))):
        op = tr.ops[k]
        if use.y not in op.ins:
            continue
        if BINARY.get(op.name) == "add" and "sub" not in op.name and len(op.ins) == 2:
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


def linear_like(block: nn.Module) -> list[str]:
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
