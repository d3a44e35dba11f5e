"""Stage 5: integer codes for every linear of a part, by the configured rounding.

One stage, four implementations chosen by the value of ``config.rounding``: :class:`Nearest`,
:class:`GPTQ`, :class:`Importance` and :class:`Learned` (which starts from one of the other three
and then learns the block's rounding on its output, once every part is rounded). Each leaves the model holding exactly
what the kernels reconstruct from the codes.
"""

from __future__ import annotations

import torch

from cat_core.awq._batches import Batches
from cat_core.awq._block import BlockWork
from cat_core.awq._capture import BlockCall, to_device
from cat_core.awq._clip_search import apply_clip
from cat_core.awq._gptq import gptq_quantize
from cat_core.awq._importance import importance_round
from cat_core.awq._learned_round import LinearStart, block_outputs, learn_rounding
from cat_core.awq._stage_clip import Part
from cat_core.config import GPTQ, Importance, Learned, Nearest, QuantConfig
from cat_core.quant import QuantizedTensor, dequantize, quantize_tensor

__all__ = ["rounder"]

Clips = dict[str, tuple[torch.Tensor, torch.Tensor]]


class _Nearest:
    """Round-to-nearest on the clipped weight; also GPTQ's fallback for a linear without a Gram."""

    wants_full_grams = False
    extra_shape: tuple[int, int] | None = None
    keep_sequences = 0
    #: the block's quantized outputs on calibration sequences, when the rounding computed them
    outputs: torch.Tensor | None = None

    def plan(self, n: int, seqlen: int) -> None:
        pass

    def before_clip(self, work: BlockWork, batches: Batches) -> None:
        pass

    def round(self, work: BlockWork, part: Part, clips: Clips) -> None:
        for rel, name, mod in part.linears:
            if rel in clips and not self.wants_full_grams:  # GPTQ clips a copy: the grid only
                apply_clip(mod.weight, *clips.pop(rel))
            w = _finite_weight(work, rel, mod)
            qt = self._codes(work, rel, name, mod, w, part, clips)
            w.copy_(dequantize(qt, w.dtype))
            work.store(name, qt)
        work.results.tick("quantize")

    def _codes(self, work: BlockWork, rel: str, name: str, mod, w: torch.Tensor, part: Part,
               clips: Clips) -> QuantizedTensor:
        qt = quantize_tensor(w, work.config, name=name)
        if _collecting(work):
            work.starts.append(_start(rel, name, mod, w.float().clone(), qt, w, work.config))
        return qt

    def after_parts(self, work: BlockWork, batches: Batches) -> None:
        pass


class _GPTQ(_Nearest):
    """GPTQ's codes: the clipped weight sets the grid (scales, zeros); the codes reproduce the
    unclipped one, so the clipping error is fed back with the rounding error."""

    wants_full_grams = True

    def __init__(self, settings: GPTQ) -> None:
        self.settings = settings

    def _codes(self, work: BlockWork, rel: str, name: str, mod, w: torch.Tensor, part: Part,
               clips: Clips) -> QuantizedTensor:
        gram = part.full_grams.pop(rel, None)  # dropped once used: q, k, v share one
        if gram is None:  # no calibration token reached it: round to nearest
            return super()._codes(work, rel, name, mod, w, part, clips)
        grid = w
        if rel in clips:
            grid = w.clone()
            apply_clip(grid, *clips.pop(rel))
        if not _collecting(work):
            return gptq_quantize(grid, gram, work.config, name=name, target=w, settings=self.settings)
        qt, base = gptq_quantize(grid, gram, work.config, name=name, target=w, return_corrected=True,
                                 settings=self.settings)
        work.starts.append(_start(rel, name, mod, base, qt, grid, work.config))
        return qt


class _Importance(_Nearest):
    """Importance-weighted rounding of the clipped weight
    (:func:`~cat_core.awq._importance.importance_round`); round-to-nearest for a linear that no
    calibration token reached."""

    def _codes(self, work: BlockWork, rel: str, name: str, mod, w: torch.Tensor, part: Part,
               clips: Clips) -> QuantizedTensor:
        ms = part.column_ms.get(rel)
        if ms is None:
            return super()._codes(work, rel, name, mod, w, part, clips)
        c = work.config
        qt = importance_round(w, ms, c.bits, c.group_size, c.sym, c.scale_torch_dtype)
        if _collecting(work):
            work.starts.append(_start(rel, name, mod, w.float().clone(), qt, w, c))
        return qt


class _Learned:
    """Learned rounding: the start's codes part by part, then the whole block's rounding learned on
    its output (:func:`~cat_core.awq._learned_round.learn_rounding`)."""

    def __init__(self, settings: Learned) -> None:
        self.settings = settings
        self.start = _codes_rounder(settings.init)
        self.wants_full_grams = self.start.wants_full_grams
        self._fp_pool: torch.Tensor | None = None  # the pool on the unquantized model's path
        self._pool_in = self._target = self._call = None
        self.outputs: torch.Tensor | None = None  # the quantized block's outputs on the pool

    def plan(self, n: int, seqlen: int) -> None:
        s = self.settings
        pool = n if s.samples is None else min(n, s.samples)
        self.batch = min(s.batch, pool)
        self.keep_sequences = pool - pool % self.batch
        self.length = seqlen if s.seqlen is None else min(seqlen, s.seqlen)
        self.extra_shape = (self.batch, self.length)

    def before_clip(self, work: BlockWork, batches: Batches) -> None:
        """The pool's inputs and its unquantized (folded) block outputs, the weights not yet clipped."""
        call = batches.extra_calls[work.position]
        self._call = BlockCall(to_device(call.args, work.device), to_device(call.kwargs, work.device))
        pool_in = torch.cat([h[:, :self.length] for h in batches.hiddens])[:self.keep_sequences].to(work.device)
        if self.settings.target == "model":
            self._fp_pool = pool_in if self._fp_pool is None else self._fp_pool
            self._target = self._fp_pool = block_outputs(work.module, self._call, self._fp_pool, self.batch)
        else:
            self._target = block_outputs(work.module, self._call, pool_in, self.batch)
        self._pool_in = pool_in
        work.starts = []
        work.results.tick("learned_round")

    def round(self, work: BlockWork, part: Part, clips: Clips) -> None:
        self.start.round(work, part, clips)

    def after_parts(self, work: BlockWork, batches: Batches) -> None:
        self.outputs = None
        if work.starts:
            res = learn_rounding(work.module, work.starts, self._call, self._pool_in, self._target, work.config,
                                 batch=self.batch, seed=work.seed, progress=lambda m: work.results.status(m, True))
            for ls in work.starts:
                w = ls.module.weight.data
                w.copy_(dequantize(res.tensors[ls.name], w.dtype))
                work.store(ls.name, res.tensors[ls.name])
            work.results.add("learned_round_start_loss", res.start_loss)
            work.results.add("learned_round_best_loss", res.best_loss)
            work.results.add("learned_round_blocks_improved", float(res.best_iter > 0))
            self.outputs = res.outputs if self.length == batches.seqlen else None
        self._pool_in = self._target = None
        work.starts = []
        work.results.tick("learned_round")


def rounder(config: QuantConfig) -> _Nearest | _GPTQ | _Importance | _Learned:
    r = config.rounding
    return _Learned(r) if isinstance(r, Learned) else _codes_rounder(r)


def _codes_rounder(r: Nearest | GPTQ | Importance) -> _Nearest | _GPTQ | _Importance:
    """The rounding of one of the kinds that choose codes directly (also learned rounding's start)."""
    if isinstance(r, GPTQ):
        return _GPTQ(r)
    if isinstance(r, Importance):
        return _Importance()
    assert isinstance(r, Nearest)
    return _Nearest()


def _collecting(work: BlockWork) -> bool:
    """Whether learned rounding follows (it needs each linear's start)."""
    return isinstance(work.config.rounding, Learned)


def _finite_weight(work: BlockWork, rel: str, mod) -> torch.Tensor:
    w = mod.weight.data
    if not bool(torch.isfinite(w).all()):
        work.nonfinite(f"weight of {rel}", [], rel)
    return w


def _start(rel: str, full: str, mod, base: torch.Tensor, qt: QuantizedTensor, grid: torch.Tensor,
           config: QuantConfig) -> LinearStart:
    """Learned rounding's start for one linear: ``grid`` is the weight whose per-group range set
    ``qt``'s scales and zeros (the clipped one)."""
    n, k = grid.shape
    g = k if config.group_size == -1 else config.group_size
    wg = grid.float().reshape(n, k // g, g)
    if config.sym:
        hi = wg.abs().amax(dim=-1)
        lo = -hi
    else:
        lo, hi = torch.aminmax(wg, dim=-1)
    return LinearStart(rel, full, mod, base, qt, lo, hi)
