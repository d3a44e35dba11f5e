"""Mixture-of-experts: turning fused expert tensors into per-expert linears.

Transformers 5 stores the routed experts of a MoE block fused, as 3-D parameters
(``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``, an ``act_fn``, a forward
``(hidden_states, top_k_index, top_k_weights)`` looping over the experts that were hit). Caterpillar
quantizes linear layers, so :func:`unfuse_experts` replaces each such module by an
:class:`UnfusedExperts`: one :class:`ExpertMLP` per expert with ``gate_proj`` / ``up_proj`` /
``down_proj`` ``nn.Linear``s (paths ``...experts.{e}.gate_proj``), whose forward reproduces the fused
eager loop with the same routing arguments.

Recognition is structural, never by class or architecture name: a module whose only parameters are
a 3-D ``gate_up_proj`` and ``down_proj`` (plus optional ``gate_up_proj_bias`` ``[E, 2I]`` and
``down_proj_bias`` ``[E, H]``) and which has an ``act_fn``. The layouts tried are ``[gate; up]``
concatenated or ``gate0, up0, gate1, ...`` interleaved, stored ``[out, in]`` or transposed
``[in, out]``, in the order the module's own ``is_concatenated`` / ``is_transposed`` hints suggest;
shapes rule out most of them. A layout is accepted only if the unfused module reproduces the fused
module's eager forward on random input that routes tokens to every expert (relative error below
1e-4 in float32, 2e-2 in 16-bit dtypes). A module no layout reproduces (a custom activation with
clamping, a different routing convention...) is left fused and reported: with ``strict=False`` (the
default) as a warning, with ``strict=True`` as an :class:`ExpertsError`. Fused experts are still
handled by the layer graph (scales fold into the 3-D tensors) but are not quantized.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ExpertMLP",
    "ExpertsError",
    "UnfusedExperts",
    "find_fused_experts",
    "unfuse_experts",
    "unfused_experts_layouts",
    "unfuse_skeleton",
    "LAYOUTS",
]

#: layout name -> (concatenated, transposed)
LAYOUTS = {
    "gate_up": (True, False),
    "gate_up_t": (True, True),
    "interleaved": (False, False),
    "interleaved_t": (False, True),
}


class ExpertsError(ValueError):
    """A fused experts module could not be unfused (or a checkpoint's record does not fit)."""


# --------------------------------------------------------------------------- modules


class ExpertMLP(nn.Module):
    """One expert: ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, hidden: int, inter: int, act_fn: nn.Module, *, bias: bool = False,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.gate_proj = nn.Linear(hidden, inter, bias=bias, **kw)
        self.up_proj = nn.Linear(hidden, inter, bias=bias, **kw)
        self.down_proj = nn.Linear(inter, hidden, bias=bias, **kw)
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class UnfusedExperts(nn.Module):
    """Per-expert linears with the call convention of transformers' fused experts.

    ``forward(hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k])``: every token goes
    through the experts it was routed to, weighted, summed (``index_add_``) in the order of the
    fused eager loop; an index equal to ``num_experts`` (expert-parallel padding) is ignored.
    Children are named ``"0" .. "E-1"``.
    """

    def __init__(self, experts: list[ExpertMLP], *, layout: str, source: str = "") -> None:
        super().__init__()
        for e, m in enumerate(experts):
            self.add_module(str(e), m)
        self.num_experts = len(experts)
        self.hidden_dim = experts[0].gate_proj.in_features
        self.intermediate_dim = experts[0].gate_proj.out_features
        #: how the fused tensors were laid out (see LAYOUTS); recorded in checkpoints
        self.layout = layout
        #: class name of the fused module it replaced (messages only)
        self.source = source

    def __getitem__(self, e: int) -> ExpertMLP:
        return self._modules[str(e)]  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.num_experts

    def __iter__(self) -> Iterator[ExpertMLP]:
        return (self[e] for e in range(self.num_experts))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = F.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for idx in hit:
            e = int(idx[0])
            if e == self.num_experts:
                continue
            top_k_pos, token_idx = torch.where(mask[e])
            out = self[e](hidden_states[token_idx])
            out = out * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        return final

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, hidden={self.hidden_dim}, "
                f"intermediate={self.intermediate_dim}, layout={self.layout!r}")


# --------------------------------------------------------------------------- recognition


@dataclass(frozen=True)
class _Fused:
    experts: int
    hidden: int
    inter: int
    bias: bool
    layouts: tuple[str, ...]  # candidate layouts whose shapes fit, best guess first


_PARAMS = {"gate_up_proj", "down_proj"}
_BIASES = {"gate_up_proj_bias", "down_proj_bias"}


def _recognise(mod: nn.Module) -> _Fused | str | None:
    """None: not a fused experts module at all; str: looks like one but does not fit (why)."""
    params = dict(mod.named_parameters(recurse=False))
    if not _PARAMS <= set(params):
        return None
    gu, dn = params["gate_up_proj"], params["down_proj"]
    if gu.dim() != 3 or dn.dim() != 3:
        return None
    name = type(mod).__name__
    extra = set(params) - _PARAMS - _BIASES
    if extra:
        return f"{name}: unexpected parameters {sorted(extra)}"
    act = getattr(mod, "act_fn", None)
    if not callable(act):
        return f"{name}: no act_fn"
    children = {n for n, _ in mod.named_children()} - {"act_fn"}
    if children:
        return f"{name}: unexpected submodules {sorted(children)}"
    e, a, b = gu.shape
    e2, c, d = dn.shape
    if e != e2 or e < 1:
        return f"{name}: gate_up_proj has {e} experts, down_proj {e2}"
    fits = []
    if a == 2 * d and b == c:  # [E, 2I, H], [E, H, I]
        fits.append(("gate_up", "interleaved"))
        hidden, inter = b, d
    if b == 2 * c and a == d:  # [E, H, 2I], [E, I, H]
        fits.append(("gate_up_t", "interleaved_t"))
        hidden, inter = a, c
    if not fits:
        return f"{name}: shapes gate_up_proj {list(gu.shape)} / down_proj {list(dn.shape)} fit no known layout"
    has_b = {n for n in _BIASES if n in params}
    if has_b and has_b != _BIASES:
        return f"{name}: only {sorted(has_b)} of the expert biases present"
    if has_b:
        if tuple(params["gate_up_proj_bias"].shape) != (e, 2 * inter) or tuple(params["down_proj_bias"].shape) != (e, hidden):
            return f"{name}: expert bias shapes do not fit"
    # the module's own hints first (transformers' use_experts_implementation sets them)
    cands = [x for pair in fits for x in pair]
    concat_hint = getattr(mod, "is_concatenated", None)
    trans_hint = getattr(mod, "is_transposed", None)

    def rank(lay: str) -> tuple[int, int]:
        c_, t_ = LAYOUTS[lay]
        return (0 if concat_hint is None or c_ == concat_hint else 1,
                0 if trans_hint is None or t_ == trans_hint else 1)

    cands.sort(key=rank)
    return _Fused(e, hidden, inter, bool(has_b), tuple(cands))


def find_fused_experts(model: nn.Module) -> dict[str, _Fused | str]:
    """Every module that holds fused experts: path -> recognised shape, or why it does not fit."""
    out: dict[str, _Fused | str] = {}
    for path, mod in model.named_modules():
        r = _recognise(mod)
        if r is not None:
            out[path] = r
    return out


# --------------------------------------------------------------------------- conversion


def _split(mod: nn.Module, layout: str, e: int, inter: int) -> tuple[torch.Tensor, ...]:
    """gate [I, H], up [I, H], down [H, I] (and biases or None) of expert e, as [out, in]."""
    concat, trans = LAYOUTS[layout]
    gu = mod.gate_up_proj[e]
    dn = mod.down_proj[e]
    if trans:
        gu, dn = gu.t(), dn.t()
    if concat:
        gate, up = gu[:inter], gu[inter:]
    else:
        gate, up = gu[0::2], gu[1::2]
    gb = ub = db = None
    if getattr(mod, "gate_up_proj_bias", None) is not None:
        b = mod.gate_up_proj_bias[e]
        gb, ub = (b[:inter], b[inter:]) if concat else (b[0::2], b[1::2])
        db = mod.down_proj_bias[e]
    return gate, up, dn, gb, ub, db


def _build(mod: nn.Module, info: _Fused, layout: str, *, copy_data: bool) -> UnfusedExperts:
    ref = mod.gate_up_proj
    experts = []
    for e in range(info.experts):
        m = ExpertMLP(info.hidden, info.inter, copy.deepcopy(mod.act_fn), bias=info.bias,
                      dtype=ref.dtype, device="meta" if not copy_data else ref.device)
        if copy_data:
            parts = _split(mod, layout, e, info.inter)
            with torch.no_grad():
                for lin, w, b in ((m.gate_proj, parts[0], parts[3]), (m.up_proj, parts[1], parts[4]),
                                  (m.down_proj, parts[2], parts[5])):
                    lin.weight.copy_(w)
                    if b is not None:
                        lin.bias.copy_(b)
        m.train(mod.training)
        experts.append(m)
    out = UnfusedExperts(experts, layout=layout, source=type(mod).__name__)
    out.train(mod.training)
    return out


@contextlib.contextmanager
def _eager(mod: nn.Module) -> Iterator[None]:
    """transformers dispatches fused experts on ``config._experts_implementation``: force eager."""
    cfg = getattr(mod, "config", None)
    old = getattr(cfg, "_experts_implementation", None) if cfg is not None else None
    changed = False
    if cfg is not None and old not in (None, "eager"):
        try:
            cfg._experts_implementation = "eager"
            changed = True
        except Exception:
            pass
    try:
        yield
    finally:
        if changed:
            cfg._experts_implementation = old


def _verify(fused: nn.Module, unfused: UnfusedExperts, info: _Fused, seed: int = 0) -> float:
    """Relative max error between the two forwards on random input hitting every expert."""
    p = fused.gate_up_proj
    n_exp = info.experts
    k = min(2, n_exp)
    t = max(2 * n_exp, 8)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, info.hidden, generator=g).to(device=p.device, dtype=p.dtype)
    perm = torch.randperm(t, generator=g)
    first = perm % n_exp  # every expert appears
    idx = torch.stack([(first + j) % n_exp for j in range(k)], dim=1).to(p.device)
    w = (torch.rand(t, k, generator=g) + 0.5).to(device=p.device, dtype=p.dtype)
    try:
        with torch.no_grad(), _eager(fused):
            ref = fused(x.clone(), idx, w)
            got = unfused(x.clone(), idx, w)
    except Exception:
        return math.inf
    if not isinstance(ref, torch.Tensor) or ref.shape != got.shape:
        return math.inf
    den = ref.abs().max().item()
    if not math.isfinite(den) or den == 0.0:
        return math.inf
    return (ref.float() - got.float()).abs().max().item() / den


def _tol(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    owner, _, attr = path.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attr, new)


def unfuse_experts(model: nn.Module, *, strict: bool = False, verify: bool = True) -> dict[str, str]:
    """Replace every fused experts module of ``model`` by an equivalent :class:`UnfusedExperts`.

    In place; returns ``{path: layout}`` of the modules converted (``{}`` for dense models). Each
    conversion is checked numerically against the fused module (see the module docstring); one
    that no layout reproduces stays fused, with a warning (``strict=False``) or
    :class:`ExpertsError` (``strict=True``). ``verify=False`` skips the check and takes the first
    layout the shapes allow (meant for skeletons, whose weights are not there yet).
    The fused tensors are copied expert by expert, then dropped.
    """
    done: dict[str, str] = {}
    problems: list[str] = []
    for path, info in find_fused_experts(model).items():
        mod = model.get_submodule(path)
        if isinstance(info, str):
            problems.append(f"{path}: {info}")
            continue
        if any(t.is_meta for t in mod.parameters()):
            if verify:
                problems.append(f"{path}: weights on the meta device, cannot verify")
                continue
        chosen = None
        errs = []
        for layout in info.layouts:
            new = _build(mod, info, layout, copy_data=not mod.gate_up_proj.is_meta)
            if not verify:
                chosen = (layout, new)
                break
            err = _verify(mod, new, info)
            if err <= _tol(mod.gate_up_proj.dtype):
                chosen = (layout, new)
                break
            errs.append(f"{layout}: rel. error {err:.1e}")
            del new
        if chosen is None:
            problems.append(f"{path} ({type(mod).__name__}): no layout reproduces its forward ({'; '.join(errs)})")
            continue
        _set(model, path, chosen[1])
        done[path] = chosen[0]
    if problems:
        msg = ("fused experts left unconverted (they keep full precision): " + " | ".join(problems[:4])
               + (f" | and {len(problems) - 4} more" if len(problems) > 4 else ""))
        if strict:
            raise ExpertsError(msg)
        warnings.warn(msg, stacklevel=2)
    return done


def unfused_experts_layouts(model: nn.Module) -> dict[str, str]:
    """``{path: layout}`` of the :class:`UnfusedExperts` modules of ``model``."""
    return {n: m.layout for n, m in model.named_modules() if isinstance(m, UnfusedExperts)}


def unfuse_skeleton(model: nn.Module, layouts: dict[str, str]) -> None:
    """Rebuild the unfused structure a checkpoint records (``{path: layout}``), without data:
    the per-expert linears are created on the meta device. Raises :class:`ExpertsError` when the
    model does not have fused experts of that layout at a path."""
    if not isinstance(layouts, dict):
        raise ExpertsError(f"unfused_experts must map module paths to layouts, got {type(layouts).__name__}")
    for path, layout in layouts.items():
        if layout not in LAYOUTS:
            raise ExpertsError(f"unfused_experts: unknown layout {layout!r} for {path!r} (known: {sorted(LAYOUTS)})")
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            raise ExpertsError(f"unfused_experts names {path!r}, which this model does not have") from None
        info = _recognise(mod)
        if not isinstance(info, _Fused) or layout not in info.layouts:
            why = info if isinstance(info, str) else f"a {type(mod).__name__}, not fused experts of layout {layout!r}"
            raise ExpertsError(f"unfused_experts names {path!r}: {why}")
        _set(model, path, _build(mod, info, layout, copy_data=False))
