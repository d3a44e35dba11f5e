"""Learned rounding of one decoder block (AutoRound's signed-gradient rounding, Cheng et al. 2023).

Every quantized linear of the block keeps the grid AWQ gave it (scales, zeros from the clip
search's range) and starts from codes chosen by nearest or GPTQ rounding. A per-weight offset
``V`` in [-0.5, 0.5] is added before rounding, ``q = clamp(round(w / s + V) + z, 0, qmax)``, and
all offsets of the block are trained together to make the quantized block reproduce the
unquantized block's output on calibration sequences: mean squared error, straight-through
gradient through ``round``, and signed gradient descent (each step moves every offset by the same
amount, the sign of its gradient) with a step decaying linearly to 0. Optionally two factors per
group scale the ends of its range (AutoRound's min/max tuning), which moves scales and zeros.

The iterate kept is the better of the start and the last iterate on all the sequences of the
pool, so the block's calibration loss never rises; the pool outputs of the kept one are returned
too, so the caller need not run those sequences through the block again. The forward applies the
same operations as ``cat_core.quant`` (scale rounded to its storage dtype first), so the loss is
that of the tensors that get stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from cat_core.awq._capture import BlockCall, first_output, replace_hidden
from cat_core.config import Learned, QuantConfig
from cat_core.quant import _MIN_SCALE, QuantizedTensor

__all__ = ["LinearStart", "block_outputs", "learn_rounding", "LearnedResult"]

# Factor range of the optional min/max tuning (AutoRound's).
_MINMAX_LO = 0.5
# Pool-loss checks after the start: at these fractions of the iterations (the last one at the end).
# A check costs a forward over the pool (about a seventh of the iterations' cost at 32 x 512). The
# mid-run check (0.5) was dropped: SmolLM2 at 128 x 512 kept the same block losses and perplexity
# without it, and the step decays linearly to 0, so the last iterate is the refined one.
_CHECKS = (1.0,)


@dataclasses.dataclass
class LinearStart:
    """Where one linear's learned rounding starts.

    ``base``: ``[N, K]`` float32, the values rounded (the clipped weight, or GPTQ's
    error-corrected one); ``start``: its codes at ``V = 0`` on the grid, whose scales and zeros are
    kept (unless min/max tuning); ``lo``/``hi``: ``[N, n_groups]`` the grid's range (the clipped
    weight's per-group min and max; for symmetric groups ``hi`` is the absolute max).
    """

    rel: str
    name: str
    module: nn.Linear
    base: torch.Tensor
    start: QuantizedTensor
    lo: torch.Tensor
    hi: torch.Tensor


@dataclasses.dataclass
class LearnedResult:
    tensors: dict[str, QuantizedTensor]
    start_loss: float
    best_loss: float
    #: iteration of the kept iterate (0: the start)
    best_iter: int
    #: the quantized block's outputs on the pool ``[P, T, H]`` with the kept tensors (the
    #: block's dtype)
    outputs: torch.Tensor | None = None


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class _Learned:
    """The trainable state of one linear and its fake quantization."""

    def __init__(self, ls: LinearStart, config: QuantConfig, device: torch.device) -> None:
        n, k = ls.base.shape
        self.ls = ls
        self.g = k if config.group_size == -1 else config.group_size
        self.shape = (n, k // self.g, self.g)
        self.base = ls.base.to(device=device, dtype=torch.float32).reshape(self.shape)
        self.v = torch.zeros(self.shape, device=device, requires_grad=True)
        self.config = config
        self.qmax = float(config.qmax)
        self.s0 = ls.start.scales.to(device).float().unsqueeze(-1)
        if ls.start.zeros is None:
            self.z0 = torch.full_like(self.s0, float(2 ** (config.bits - 1)))
        else:
            self.z0 = ls.start.zeros.to(device).float().unsqueeze(-1)
        self.lo = ls.lo.to(device).float().unsqueeze(-1)
        self.hi = ls.hi.to(device).float().unsqueeze(-1)
        self.a: torch.Tensor | None = None  # factor on hi
        self.b: torch.Tensor | None = None  # factor on lo
        if config.rounding.minmax:
            self.a = torch.ones_like(self.s0, requires_grad=True)
            if not config.sym:
                self.b = torch.ones_like(self.s0, requires_grad=True)

    def params(self) -> list[torch.Tensor]:
        return [p for p in (self.v, self.a, self.b) if p is not None]

    def grid(self, ste: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales and zeros ``[N, n_groups, 1]`` float32, as ``cat_core.quant._params`` forms them."""
        if self.a is None:
            return self.s0, self.z0
        cfg = self.config
        if cfg.sym:
            half = 2 ** (cfg.bits - 1)
            s = (self.hi * self.a / (half - 1)).clamp_min(_MIN_SCALE)
        else:
            s = ((self.hi * self.a - self.lo * self.b) / self.qmax).clamp_min(_MIN_SCALE)
        stored = s.to(cfg.scale_torch_dtype).float()
        s = s + (stored - s).detach() if ste else stored
        if cfg.sym:
            return s, self.z0
        zr = -self.lo * self.b / s
        z = (_ste_round(zr) if ste else torch.round(zr)).clamp(0.0, self.qmax)
        return s, z

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        s, z = self.grid(ste=True)
        q = (_ste_round(self.base / s + self.v) + z).clamp(0.0, self.qmax)
        return ((q - z) * s).reshape(self.shape[0], -1).to(dtype)

    @torch.no_grad()
    def step(self, lr: float) -> None:
        for p in self.params():
            if p.grad is not None:
                p.sub_(p.grad.sign(), alpha=lr)
                p.grad = None
        self.v.clamp_(-0.5, 0.5)
        for p in (self.a, self.b):
            if p is not None:
                p.clamp_(_MINMAX_LO, 1.0)

    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params()]

    @torch.no_grad()
    def restore(self, snap: list[torch.Tensor]) -> None:
        for p, v in zip(self.params(), snap):
            p.copy_(v)

    @torch.no_grad()
    def export(self) -> QuantizedTensor:
        s, z = self.grid(ste=False)
        q = (torch.round(self.base / s + self.v) + z).clamp_(0.0, self.qmax)
        n = self.shape[0]
        st = self.ls.start
        return QuantizedTensor(
            codes=q.reshape(n, -1).to(torch.uint8),
            scales=s.squeeze(-1).to(self.config.scale_torch_dtype),
            zeros=None if st.zeros is None else z.squeeze(-1).to(torch.uint8),
            bits=st.bits,
            group_size=st.group_size,
        )


def _forward(block: nn.Module, call: BlockCall, hidden: torch.Tensor,
             weights: dict[str, torch.Tensor] | None) -> torch.Tensor:
    c = replace_hidden(call, hidden)
    if weights is None:
        return first_output(block(*c.args, **c.kwargs))
    return first_output(functional_call(block, weights, c.args, c.kwargs))


@torch.no_grad()
def block_outputs(block: nn.Module, call: BlockCall, inputs: torch.Tensor, batch: int) -> torch.Tensor:
    """The block's outputs on ``inputs`` ``[P, T, H]``, run in batches of ``batch`` sequences
    (``call``'s batch size)."""
    return torch.cat([_forward(block, call, inputs[i:i + batch], None) for i in range(0, inputs.shape[0], batch)])


def learn_rounding(
    block: nn.Module, linears: list[LinearStart], call: BlockCall, inputs: torch.Tensor,
    targets: torch.Tensor, config: QuantConfig, *, batch: int, seed: int,
    progress: Callable[[str], None] | None = None,
) -> LearnedResult:
    """Learn the rounding of ``linears`` (all in ``block``) on the pool ``inputs`` ``[P, T, H]``
    whose unquantized block outputs are ``targets``; ``call``: a block call for ``batch``
    sequences of ``T`` tokens (its hidden state is replaced).

    Leaves the block's parameters as they were (the caller writes the returned tensors).
    """
    device = inputs.device
    pool = inputs.shape[0]
    if pool < batch or pool % batch:
        raise ValueError(f"the learned-rounding pool ({pool} sequences) must be a multiple of the batch ({batch})")
    dtype = linears[0].module.weight.dtype if linears else torch.float32
    settings = config.rounding
    if not isinstance(settings, Learned):
        raise ValueError(f"learn_rounding: config.rounding must be Learned(...), got {settings!r}")
    states = [_Learned(ls, config, device) for ls in linears]
    iters = settings.iters
    lr0 = settings.lr if settings.lr is not None else 1.0 / iters
    gen = torch.Generator().manual_seed(seed)

    def weights() -> dict[str, torch.Tensor]:
        return {f"{st.ls.rel}.weight": st.weight(dtype) for st in states}

    @torch.no_grad()
    def pool_loss() -> tuple[float, torch.Tensor]:
        w = weights()
        total = 0.0
        outs = []
        for i in range(0, pool, batch):
            out = _forward(block, call, inputs[i:i + batch], w)
            total += float(torch.nn.functional.mse_loss(out.float(), targets[i:i + batch].float(), reduction="sum"))
            outs.append(out)
        return total / targets.numel(), torch.cat(outs)

    frozen = [p for p in block.parameters() if p.requires_grad]
    for p in frozen:  # only the offsets (and factors) get gradients
        p.requires_grad_(False)
    try:
        start, best_out = pool_loss()
        best = start
        best_iter, best_snap = 0, None
        checks = sorted({max(1, round(f * iters)) for f in _CHECKS})
        with torch.enable_grad():
            for it in range(1, iters + 1):
                idx = torch.randperm(pool, generator=gen)[:batch].sort().values.to(device)
                out = _forward(block, call, inputs[idx], weights())
                loss = torch.nn.functional.mse_loss(out.float(), targets[idx].float())
                if not bool(torch.isfinite(loss)):
                    break  # keep the best so far; the runner checks the block's outputs
                loss.backward()
                lr = lr0 * (1.0 - (it - 1) / iters)
                for st in states:
                    st.step(lr)
                if it in checks:
                    now, out_now = pool_loss()
                    if now < best:
                        best, best_iter, best_out = now, it, out_now
                        best_snap = [st.snapshot() for st in states]
                    del out_now
                if progress is not None:
                    progress(f"learned rounding {it}/{iters}, loss {float(loss.detach()):.3g} (start {start:.3g}, best {best:.3g})")
        if best_snap is None:  # the start was best: V = 0 (and factors 1)
            for st in states:
                with torch.no_grad():
                    for p in st.params():
                        p.fill_(0.0 if p is st.v else 1.0)
        else:
            for st, snap in zip(states, best_snap):
                st.restore(snap)
        tensors = {st.ls.name: st.export() for st in states}
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return LearnedResult(tensors, start, best, best_iter, best_out)
