"""Eager dataflow trace of one block run.

A TorchFunctionMode records every torch call made while the block runs (only the
outermost call: the mode is off inside its own handler), with the tensors going in and out.
Module hooks record which module returned which tensor. Running eagerly on real inputs
sidesteps the control flow (MoE routing, caches, masks) that defeats symbolic tracing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten


@dataclass
class Node:
    tensor: torch.Tensor
    op: int | None  # index of the producing op, None for inputs and parameters
    param: tuple[str, int | None, bool] | None = None  # (name, select, transposed)


@dataclass
class Op:
    func: Callable
    name: str
    args: tuple
    kwargs: dict
    ins: list[int]  # node ids of tensor arguments (flattened order)
    outs: list[int]  # node ids of tensor results (flattened order)
    modules: tuple[str, ...]  # module stack at call time


_PARAM_VIEWS = {
    "__getitem__",
    "view",
    "reshape",
    "to",
    "float",
    "half",
    "bfloat16",
    "contiguous",
    "detach",
    "t",
    "T",
    "transpose",
    "type_as",
    "mT",
    "data",
}


def func_name(func: Callable) -> str:
    name = getattr(func, "__name__", None) or str(func)
    if name == "__get__":  # property access, e.g. Tensor.T
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


@dataclass
class Trace:
    nodes: list[Node] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    module_out: dict[int, list[str]] = field(default_factory=dict)  # node -> modules returning it
    module_in: dict[str, int] = field(
        default_factory=dict
    )  # module -> node of first positional input
    module_calls: dict[str, int] = field(default_factory=dict)
    output: Any = None
    _by_id: dict[int, int] = field(default_factory=dict)
    _params: dict[int, str] = field(default_factory=dict)

    def node_of(self, t: torch.Tensor, create: bool = True) -> int | None:
        i = self._by_id.get(id(t))
        if i is not None and self.nodes[i].tensor is t:
            return i
        if not create:
            return None
        pname = self._params.get(id(t))
        self.nodes.append(Node(t, None, (pname, None, False) if pname is not None else None))
        self._by_id[id(t)] = len(self.nodes) - 1
        return len(self.nodes) - 1


class _Mode(TorchFunctionMode):
    def __init__(self, trace: Trace, stack: list[str]) -> None:
        super().__init__()
        self.trace = trace
        self.stack = stack

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tr = self.trace
        flat_in, _ = tree_flatten((args, kwargs))
        ins = [tr.node_of(t) for t in flat_in if isinstance(t, torch.Tensor)]
        flat_out, _ = tree_flatten(out)
        touts = [t for t in flat_out if isinstance(t, torch.Tensor)]
        if not touts:
            return out
        k = len(tr.ops)
        name = func_name(func)
        outs = []
        inplace = name.endswith("_") and not name.endswith("__") or name.startswith("__i")
        in_ids = {
            id(t): i
            for t, i in zip((t for t in flat_in if isinstance(t, torch.Tensor)), ins, strict=False)
        }
        for t in touts:
            if not inplace and id(t) in in_ids:
                # a no-op returning its input (x.to(same dtype), type_as, contiguous): same value
                outs.append(in_ids[id(t)])
                continue
            param = None
            if ins and name in _PARAM_VIEWS:
                src = tr.nodes[ins[0]].param
                if src is not None:
                    pname, sel, tr_ = src
                    if name == "__getitem__":
                        idx = args[1] if len(args) > 1 else None
                        if (
                            sel is None
                            and isinstance(idx, (int, torch.Tensor))
                            and (not isinstance(idx, torch.Tensor) or idx.numel() == 1)
                        ):
                            param = (pname, int(idx), tr_)
                    elif name in ("t", "T", "mT") or (name == "transpose" and t.dim() == 2):
                        param = (pname, sel, not tr_)
                    else:
                        param = src
            tr.nodes.append(Node(t, k, param))
            tr._by_id[id(t)] = len(tr.nodes) - 1
            outs.append(len(tr.nodes) - 1)
        tr.ops.append(Op(func, name, args, kwargs, ins, outs, tuple(self.stack)))
        return out


def run_traced(block: nn.Module, args: tuple, kwargs: dict) -> Trace:
    """Run `block(*args, **kwargs)` once and record its dataflow."""
    tr = Trace()
    tr._params = {id(p): n for n, p in block.named_parameters(remove_duplicate=False)}
    for n, b in block.named_buffers():
        tr._params.setdefault(id(b), n)
    stack: list[str] = []
    names = {id(m): n for n, m in block.named_modules(remove_duplicate=False)}
    handles = []

    def pre(mod, a):
        n = names[id(mod)]
        stack.append(n)
        tr.module_calls[n] = tr.module_calls.get(n, 0) + 1
        if a and isinstance(a[0], torch.Tensor) and n not in tr.module_in:
            tr.module_in[n] = tr.node_of(a[0])

    def post(mod, a, out):
        n = names[id(mod)]
        if stack and stack[-1] == n:
            stack.pop()
        if isinstance(out, torch.Tensor):
            i = tr.node_of(out)
            tr.module_out.setdefault(i, []).append(n)

    for n, m in block.named_modules():
        if n == "":
            continue
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        with torch.no_grad(), _Mode(tr, stack):
            tr.output = block(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return tr
