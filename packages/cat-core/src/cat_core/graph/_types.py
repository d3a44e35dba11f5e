"""Data types of the layer graph: fold rules, scale groups, block and layer graphs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


class GraphError(ValueError):
    """The structure of a block could not be understood (or a user group is invalid)."""


# --------------------------------------------------------------------------- helpers


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    return root if path == "" else root.get_submodule(path)


def get_param(root: nn.Module, path: str) -> torch.Tensor:
    owner, _, name = path.rpartition(".")
    mod = get_submodule(root, owner)
    t = getattr(mod, name)
    if not isinstance(t, torch.Tensor):
        raise GraphError(f"'{path}' is not a tensor")
    return t


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    owner, _, name = path.rpartition(".")
    setattr(get_submodule(root, owner), name, new)


def _along(s: torch.Tensor, ndim: int, dim: int) -> torch.Tensor:
    """View a 1-D vector so that it broadcasts along axis `dim` of an `ndim`-D tensor."""
    shape = [1] * ndim
    shape[dim] = -1
    return s.reshape(shape)


# --------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class WeightRef:
    """A weight that consumes the group input.

    `path` is the dotted parameter path inside the block; `in_dim` the axis of the (full)
    parameter that indexes input channels (1 for nn.Linear, 0 for GPT-2's Conv1D, 2 for
    fused expert tensors `[experts, out, in]`); `select` an index into axis 0 when only one
    expert slice of a stacked parameter is meant.
    """

    path: str
    in_dim: int
    select: int | None = None

    @property
    def name(self) -> str:
        return self.path if self.select is None else f"{self.path}[{self.select}]"

    def tensor(self, block: nn.Module) -> torch.Tensor:
        """The weight tensor (a view when `select` is set)."""
        p = get_param(block, self.path)
        return p if self.select is None else p[self.select]

    @property
    def tensor_in_dim(self) -> int:
        """`in_dim` relative to `tensor()`."""
        return self.in_dim if self.select is None else self.in_dim - 1


# --------------------------------------------------------------------------- fold rules


class ScaledActivation(nn.Module):
    """`act(x) / scales`: makes a non-homogeneous activation foldable.

    The scales are a buffer, so they are part of the state dict of the quantized model.
    """

    def __init__(self, act: nn.Module, scales: torch.Tensor) -> None:
        super().__init__()
        self.act = act
        self.register_buffer("scales", scales.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(x)
        return y / self.scales.to(y.dtype)


@dataclass(frozen=True)
class NormFold:
    """Producer is a normalization `y = n(x) * (weight + offset) + bias` (LayerNorm/RMSNorm).

    `offset` is 1.0 for norms that scale by `(1 + weight)` (found numerically).
    """

    path: str
    weight: str
    bias: str | None = None
    offset: float = 0.0
    kind: str = "norm"

    def tie(self, scales: torch.Tensor) -> torch.Tensor:
        return scales

    def apply(self, block: nn.Module, scales: torch.Tensor) -> None:
        s = scales.float()
        w = get_param(block, self.weight)
        w.data.copy_(((w.data.float() + self.offset) / s - self.offset).to(w.dtype))
        if self.bias is not None:
            b = get_param(block, self.bias)
            b.data.copy_((b.data.float() / s).to(b.dtype))

    def describe(self) -> str:
        extra = "+bias" if self.bias is not None else ""
        off = f", (offset {self.offset:g} + w)" if self.offset else ""
        return f"norm{extra}{off}"


@dataclass(frozen=True)
class LinearFold:
    """Producer is a linear layer whose output rows reach the consumers channel-wise.

    `rows[c]` is the producer output row (along `out_dim` of the full parameter `weight`,
    after `select`) feeding consumer input channel `c`. Several channels may share a row
    (grouped-query attention: one kv head serves several query heads); their scales are
    then tied (`tie`). `via` says what lies between: "direct", "activation" (a positively
    homogeneous one, e.g. ReLU), "gate" (act(gate) * up) or "attention" (value -> output).
    """

    path: str
    weight: str
    rows: tuple[int, ...]
    out_dim: int
    bias: str | None = None
    select: int | None = None
    via: str = "direct"
    kind: str = "linear"

    def _rows(self, device: torch.device) -> torch.Tensor:
        return torch.tensor(self.rows, dtype=torch.long, device=device)

    @property
    def tied(self) -> bool:
        return len(set(self.rows)) != len(self.rows)

    def tie(self, scales: torch.Tensor) -> torch.Tensor:
        if not self.tied:
            return scales
        rows = self._rows(scales.device)
        _, inv = torch.unique(rows, return_inverse=True)
        n = int(inv.max()) + 1
        logs = scales.float().log()
        acc = torch.zeros(n, device=scales.device).index_add_(0, inv, logs)
        cnt = torch.zeros(n, device=scales.device).index_add_(0, inv, torch.ones_like(logs))
        return (acc / cnt)[inv].exp().to(scales.dtype)

    def apply(self, block: nn.Module, scales: torch.Tensor) -> None:
        s = self.tie(scales.float())
        w = get_param(block, self.weight)
        wt = w.data if self.select is None else w.data[self.select]
        od = self.out_dim if self.select is None else self.out_dim - 1
        div = torch.ones(wt.shape[od], device=w.device, dtype=torch.float32)
        div[self._rows(w.device)] = s.to(w.device)
        wt.copy_((wt.float() / _along(div, wt.dim(), od)).to(w.dtype))
        if self.bias is not None:
            b = get_param(block, self.bias)
            bt = b.data if self.select is None else b.data[self.select]
            bt.copy_((bt.float() / div).to(b.dtype))

    def describe(self) -> str:
        u = sorted(set(self.rows))
        if u == list(range(u[0], u[0] + len(u))):
            rows = f"rows {u[0]}:{u[0] + len(u)}"
        else:
            rows = f"{len(u)} strided rows"
        tie = f", tied x{len(self.rows) // len(u)}" if self.tied else ""
        return f"linear {rows}, via {self.via}{tie}"


@dataclass(frozen=True)
class ActivationFold:
    """Producer is an activation module that is not positively homogeneous (GELU...).

    Folding replaces it by `ScaledActivation(act, scales)` (or updates an existing one).
    """

    path: str
    kind: str = "activation"

    def tie(self, scales: torch.Tensor) -> torch.Tensor:
        return scales

    def apply(self, block: nn.Module, scales: torch.Tensor) -> None:
        mod = get_submodule(block, self.path)
        if isinstance(mod, ScaledActivation):
            mod.scales.copy_(
                (mod.scales.float() * scales.float().to(mod.scales.device)).to(mod.scales.dtype)
            )
            return
        p = next((t for t in block.parameters() if t.is_floating_point()), None)
        dtype = p.dtype if p is not None else torch.float32
        device = p.device if p is not None else scales.device
        _set_submodule(
            block, self.path, ScaledActivation(mod, scales.float().to(device=device, dtype=dtype))
        )

    def describe(self) -> str:
        return "scaled activation"


FoldRule = NormFold | LinearFold | ActivationFold


# --------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class ScaleGroup:
    """Weights sharing one input, the op producing it, and where to measure the loss.

    Paths are dotted and relative to the block. `consumers` names nn.Linear/Conv1D modules,
    or parameters (`path[e]` for one expert of a stacked parameter); `weights` gives the
    same as structured `WeightRef`s. `inspect` is the smallest module whose output
    measures the effect of scaling ("" = the whole block). `channels` is the size of s.
    """

    producer: str
    fold: FoldRule
    consumers: tuple[str, ...]
    inspect: str
    weights: tuple[WeightRef, ...] = ()
    channels: int = 0

    def tie(self, scales: torch.Tensor) -> torch.Tensor:
        """Make `scales` admissible for the fold (grouped-query ties); identity otherwise."""
        return self.fold.tie(scales)

    def describe(self) -> str:
        insp = self.inspect or "<block>"
        return (
            f"{self.producer} [{self.fold.describe()}] -> {', '.join(self.consumers)}"
            f"  (inspect {insp}, {self.channels} ch)"
        )


@dataclass(frozen=True)
class GroupSpec:
    """A user-given group (for blocks discovery cannot handle).

    `consumers` are fnmatch patterns over linear module paths (or parameter paths) of the
    block; `fold` is "norm", "linear" or "activation" (or a ready FoldRule); `inspect`
    defaults to the smallest module holding the consumers.
    """

    producer: str
    consumers: tuple[str, ...]
    fold: str | NormFold | LinearFold | ActivationFold = "norm"
    inspect: str | None = None


@dataclass(frozen=True)
class UnscaledGroup:
    """Weights sharing one input that no producer can absorb 1/s for.

    AWQ leaves their input unscaled; they are still quantized with the clip search and GPTQ
    rounding. The usual case is a post-norm-only block (`h = x + norm(attn(x))`), whose q/k/v
    and gate/up read the residual stream itself. `reason` says why no fold exists, `hint` what the
    user can do about it ("" when nothing needs doing), `kind` the case in one word: "residual"
    (the input is the residual stream), "shared" (one weight applied to several inputs),
    "not-run" (not called as a linear on the discovery sample) or "other".
    """

    consumers: tuple[str, ...]
    reason: str
    hint: str = ""
    kind: str = "other"

    def describe(self) -> str:
        hint = f"; {self.hint}" if self.hint else ""
        return f"{', '.join(self.consumers)}: no input scaling: {self.reason}{hint}"


@dataclass
class BlockGraph:
    index: int
    path: str
    module: nn.Module
    groups: list[ScaleGroup]
    #: consumers quantized without input scaling (see UnscaledGroup), one entry per shared input
    unscaled: list[UnscaledGroup] = field(default_factory=list)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """`(consumers, reason)` of each unscaled group (the consumers comma-joined)."""
        return [(", ".join(u.consumers), u.reason) for u in self.unscaled]

    def describe(self) -> str:
        lines = [f"block {self.index} ({self.path}, {type(self.module).__name__}):"]
        lines += [f"  {g.describe()}" for g in self.groups]
        lines += [f"  {u.describe()}" for u in self.unscaled]
        return "\n".join(lines)


@dataclass
class LayerGraph:
    blocks_path: str
    blocks: list[BlockGraph]

    def describe(self) -> str:
        out = [f"{self.blocks_path}: {len(self.blocks)} blocks"]
        i = 0
        while i < len(self.blocks):
            j = i
            body = self.blocks[i].describe().split("\n", 1)[1:]
            while (
                j + 1 < len(self.blocks)
                and self.blocks[j + 1].describe().split("\n", 1)[1:] == body
            ):
                j += 1
            b = self.blocks[i]
            span = f"block {i}" if i == j else f"blocks {i}-{j}"
            out.append(f"{span} ({type(b.module).__name__}):")
            out.extend(body)
            i = j + 1
        return "\n".join(out)
