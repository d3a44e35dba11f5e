"""Linears that read the same input (q/k/v, gate/up), multiplied as one packed weight.

A decode step makes one kernel call per linear, and at small model widths each call's fixed cost
(Python, argument checks, the kernel's setup) is comparable to its arithmetic. Members of a group
that read the same input tensor are concatenated row-wise into one packed weight; the first
member to be called computes the whole product, the others return their rows of it. Which
linears share an input is seen, not assumed: one probe forward records the input tensor each
:class:`QuantLinear` receives, so it works for any architecture whose modules are called with the
same tensor object (transformers' attention and gated MLPs are).

Outputs stay bit-identical to the unfused model: the members' buffers become views of the fused
ones (no memory added), and the fused product is used only where the kernel computes every output
row the same way whatever N is, i.e. on the CPU, on the fused-kernel route, for weights whose
split-K plan is a single split (``_one_split``). Everywhere else (GPU, long prompts on the dense
route, ``torch.compile``, buffers replaced by a device move) each member multiplies its own view.
A fused model is for inference: its members' buffers share storage, so save the unfused model.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn

from cat_core.nn import _routing
from cat_core.nn._linear import QuantLinear

_TILE_ROWS = 16  # rows of W per packed tile (docs/format.md)


def _one_split(n: int, k: int) -> bool:
    """Whether the CPU kernel sums each output over K in one split for an ``[n, k]`` weight.

    Mirrors ``make_plan`` in cat-kernels' csrc/cpu/gemm.cpp: K is split only when the weight has
    fewer than 32 row tiles of 16, and into at most ``ceil(k/32) // 4`` splits. With one split an
    output row's sum does not depend on the other rows, so a fused weight computes it exactly as
    its member would (tests/test_fuse.py checks this against the kernel on odd shapes)."""
    tiles, blocks = -(-n // _TILE_ROWS), -(-k // 32)
    return tiles >= 32 or blocks // 4 <= 1


class _Group:
    """One fused weight and the members it serves."""

    def __init__(self, members: list[QuantLinear]) -> None:
        first = members[0]
        self.members = members
        # each member's columns of the fused output, keyed by the member's identity
        self._cols: dict[int, slice] = {}
        off = 0
        for m in members:
            self._cols[id(m)] = slice(off, off + m.out_features)
            off += m.out_features
        self.fused = QuantLinear(first.in_features, off, first.bits, first.group_size, sym=first.sym,
                                 bias=first.bias is not None, scale_dtype=first.scales.dtype,
                                 bias_dtype=first.bias.dtype if first.bias is not None else torch.float32,
                                 device="meta")
        names = ["qweight", "scales"] + (["qzeros"] if first.qzeros is not None else []) + \
                (["bias"] if first.bias is not None else [])
        self._views: list[dict[str, torch.Tensor]] = [{} for _ in members]
        for name in names:
            base = torch.cat([m._buffers[name] for m in members])
            self.fused._buffers[name] = base
            tiled = name in ("qweight", "qzeros")  # packed in tiles of 16 rows
            start = 0
            for views, m in zip(self._views, members):
                rows = m.out_features // _TILE_ROWS if tiled else m.out_features
                views[name] = m._buffers[name] = base[start:start + rows]
                start += rows
        self._x: torch.Tensor | None = None
        self._version = -1
        self._y: torch.Tensor | None = None
        self._left = 0

    def intact(self) -> bool:
        """Whether every member still holds the views of the fused buffers (a device move or a
        reassignment replaces them: then each member computes alone)."""
        return all(m._buffers[k] is v for m, views in zip(self.members, self._views) for k, v in views.items())

    def rows(self, member: QuantLinear, x: torch.Tensor) -> torch.Tensor | None:
        """``member``'s output for ``x`` from the fused product, or None where the member must
        compute alone (not the exact kernel route, or the buffers were replaced)."""
        if x.device.type != "cpu" or not _routing._eager_fast_path(x):
            return None
        m = x.numel() // max(1, x.shape[-1])
        int8_x = member.int8_activations  # the fused layer routes it as the member would
        kernel = (_routing._rounds_x(int8_x, member.bits, m, x.device, x.dtype)
                  or _routing._m_takes_kernel(m, x.device, x.dtype))
        if not kernel or not self.intact():
            return None
        if (x is not self._x or x._version != self._version or self._y is None
                or self.fused.int8_activations != int8_x):
            self.fused.int8_activations = int8_x
            self._y = self.fused(x)
            self._x, self._version, self._left = x, x._version, len(self.members)
        y = self._y[..., self._cols[id(member)]].contiguous()
        self._left -= 1
        if self._left <= 0:  # every member served: drop the references to x and the product
            self._x = self._y = None
        return y


def _compatible(mods: list[QuantLinear]) -> bool:
    first = mods[0]
    same = all(
        m.in_features == first.in_features and m.bits == first.bits and m.group_size == first.group_size
        and m.sym == first.sym and m.scales.dtype == first.scales.dtype
        and (m.bias is None) == (first.bias is None)
        and (m.bias is None or m.bias.dtype == first.bias.dtype)
        and m.qweight.device.type == "cpu"
        for m in mods)
    if not same:
        return False
    k = first.in_features
    total = sum(m.out_features for m in mods)
    return (all(m.out_features % _TILE_ROWS == 0 and _one_split(m.out_features, k) for m in mods)
            and _one_split(total, k))


def fuse_shared_inputs(model: nn.Module, probe_ids: torch.Tensor | None = None) -> list[list[str]]:
    """Fuse the :class:`QuantLinear` s of ``model`` that read the same input into one packed
    weight each (see the module docstring for when the fused product is used; outputs are
    bit-identical either way).

    ``probe_ids``: token ids ``[1, T]`` for the probe forward (default: ``[[0, 1, 2]]``).
    Returns the fused groups as lists of module names, in call order. Calling it again on a fused
    model fuses nothing more.
    """
    quant = {id(m): (name, m) for name, m in model.named_modules()
             if isinstance(m, QuantLinear) and "_fusion" not in m.__dict__}
    if not quant:
        return []
    readers: dict[int, tuple[torch.Tensor, list[int]]] = {}
    inputs_of: dict[int, set[int]] = defaultdict(set)

    def record(mod: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        inputs_of[id(mod)].add(id(x))
        entry = readers.setdefault(id(x), (x, []))  # holding x keeps its id unique meanwhile
        if id(mod) not in entry[1]:
            entry[1].append(id(mod))

    hooks = [m.register_forward_pre_hook(record) for _, m in quant.values()]
    try:
        device = next((b.device for b in model.buffers()), torch.device("cpu"))
        ids = probe_ids if probe_ids is not None else torch.tensor([[0, 1, 2]])
        with torch.no_grad():
            model(input_ids=ids.to(device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    groups: list[list[str]] = []
    for _, mod_ids in readers.values():
        # a module called on several inputs per forward (shared weights) stays alone
        mods = [quant[i][1] for i in mod_ids if len(inputs_of[i]) == 1]
        if len(mods) < 2 or not _compatible(mods):
            continue
        group = _Group(mods)
        for m in mods:
            m.__dict__["_fusion"] = group
            m.__dict__.pop("_pw_cache", None)
        groups.append([quant[id(m)][0] for m in mods])
    return groups
