"""Quantization and calibration settings.

Both configs are frozen and validated on construction, so a bad value fails where it is written,
not twenty minutes into a search.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["QuantConfig", "CalibConfig", "matches_any", "auto_search_dtype"]

_BITS = (2, 3, 4, 8)
_SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_SEARCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_ROUNDINGS = ("nearest", "gptq", "learned")
_LEARNED_INITS = ("gptq", "nearest")
_LEARNED_TARGETS = ("block", "model")
_GRAM_SAMPLES = ("search", "all")


def _dtype_name(value: Any, allowed: dict[str, torch.dtype], field: str) -> str:
    if isinstance(value, torch.dtype):
        for name, dt in allowed.items():
            if dt == value:
                return name
    elif isinstance(value, str):
        name = value.removeprefix("torch.")
        name = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32"}.get(
            name, name
        )
        if name in allowed:
            return name
    raise ValueError(f"{field} must be one of {sorted(allowed)} (a name or torch dtype), got {value!r}")


def _patterns(value: Any, field: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{field} must be a sequence of glob patterns, got {value!r}") from None
    for p in items:
        if not isinstance(p, str) or not p:
            raise ValueError(f"{field} must hold non-empty strings (glob patterns), got {p!r}")
    return items


def auto_search_dtype(device: torch.device | str) -> str:
    """``"bfloat16"`` where ``device`` runs bfloat16 matmuls natively (a CUDA device that supports
    it; a CPU with AVX512-BF16 or AMX), else ``"float32"``.

    The searches only rank candidates, and bf16 ranks them as float32 does on SmolLM2 (identical
    alphas and weights, measured) at about half the time; emulated bf16 would be slower.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "float32"
        return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"
    return "float32"


def matches_any(name: str, patterns: Sequence[str]) -> bool:
    """True when the dotted module ``name`` matches one of the glob ``patterns``.

    A pattern also matches as a suffix on a dot boundary, so ``"lm_head"`` matches
    ``"model.lm_head"`` and ``"mlp.gate"`` matches ``"model.layers.3.mlp.gate"``.
    """
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, "*." + p) for p in patterns)


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how hard to search.

    Weights are stored as ``W ~= (q - z) * s`` per group of ``group_size`` input columns
    (``-1``: one group per row), the convention of ``cat-kernels/docs/format.md``.
    """

    bits: int = 4
    group_size: int = 128
    sym: bool = False
    #: storage dtype of the scales; codes are computed against the scale rounded to it.
    scale_dtype: str = "float16"
    #: divide the activation statistic by a weight statistic when forming scales (AWQ's "duo").
    duo_scaling: bool = True
    #: number of alphas tried in [0, 1) by the scale search (plus the identity).
    n_grid: int = 20
    clip: bool = True
    #: the clip search shrinks each group's range by factors in [max_shrink, 1).
    max_shrink: float = 0.5
    n_clip_grid: int = 20
    #: after the shared shrink, search each end of the range alone (asymmetric only; ~3x the
    #: clip search's arithmetic, which is small next to the scale search).
    clip_refine: bool = True
    #: linears whose range is never clipped: query/key errors are amplified by the softmax.
    skip_clip: tuple[str, ...] = ("*q_proj", "*k_proj", "*query*", "*key*", "*qkv*", "*Wqkv*")
    #: modules never quantized (only linears inside decoder blocks are ever candidates).
    modules_to_not_convert: tuple[str, ...] = ("lm_head", "*embed*", "*wte", "*wpe")
    #: tokens used for the scale-search losses (whole sequences); None: every sample.
    loss_token_subsample: int | None = 4096
    #: the scale search first ranks every grid point on the search batch's first sequences
    #: holding about this many tokens, then reruns only the ``screen_keep`` best of them (and the
    #: identity) on the whole batch and keeps the best of those: the result is the full search's
    #: whenever its winner ranks among them on the subsample. Only when the search batch holds
    #: more than twice as many tokens; None: every grid point on the whole batch.
    screen_tokens: int | None = 1024
    screen_keep: int = 3
    #: tokens used for the clip-search losses; None: every token of the search batch. Tokens cost
    #: little there (a Gram matrix per group), and a subsample that misses the rare tokens with
    #: massive activations (a sequence's first, in late blocks) picks clips that ruin them.
    clip_token_subsample: int | None = None
    #: calibration sequences the clip search's and GPTQ's input Grams are accumulated over:
    #: "search", the scale search's batch only (``loss_token_subsample`` tokens, e.g. 8 of 64
    #: sequences of 512); "all", every calibration sequence (the statistics pass then keeps every
    #: chunk instead of stopping once its means converge). A Gram costs only its accumulation,
    #: but a K x K Gram estimated from few tokens fits them: GPTQ then corrects errors the
    #: calibration text has and other text does not. Measured off-domain (SmolLM2 g64, 64 x 512 Lee
    #: news -> WikiText-2 test; benchmarks/results/awq_quality_2026-12-03 and -04): 4-bit "search"
    #: 23.59, "all" 23.39 (48.7% -> 51.8% of the RTN gap closed, before the scale search's
    #: screening); 3-bit 39.47 -> 37.43 (62.0% -> 66.0%), for +2.3 min of Gram accumulation on
    #: 2 AVX2 cores. Hence "all" by default; when the calibration holds no more than the search
    #: batch (e.g. cat-quantize's 16 x 256 self samples) the two are the same. The Grams are
    #: recorded while the statistics pass runs the block (before the fold, then rescaled by the
    #: scales: exact), so "all" costs their accumulation, not another forward of the block.
    gram_samples: str = "all"
    #: capture each linear's input Gram only after the linears before it in the block are
    #: quantized, stage by stage (q/k/v, then o, then gate/up, then down: GPTQ's sequential
    #: order), so the clip search and GPTQ see the inputs the quantized block will feed them;
    #: costs a partial block run per stage. False: the Grams recorded in the statistics pass serve
    #: every linear.
    #: Measured worse off-domain (same setting as gram_samples', with "all": 23.39 -> 23.71): the
    #: stage Grams fit the calibration text's own upstream errors.
    sequential: bool = False
    #: dtype in which the searches rerun modules; the folded weights keep the model's dtype.
    search_dtype: str = "float32"
    #: where the scale search measures its loss: "module", the smallest module holding the group's
    #: consumers (the reference's choice; cheapest), or "block", the decoder block's output (each
    #: grid point reruns the whole block; sees what follows the module, e.g. the norms Gemma-2/3
    #: apply to the attention and MLP outputs before the residual add).
    loss_scope: str = "module"
    seed: int = 0
    #: replace fused mixture-of-experts tensors by per-expert linears (``cat_core.moe``) so the
    #: experts get quantized; each conversion is verified numerically, one that fails stays fused
    #: (full precision) with a warning.
    unfuse_experts: bool = True
    #: how each linear's integer codes are chosen once the scales and clips are fixed:
    #: "learned" (the default): GPTQ's codes, then learned per block on the block's output (see the
    #: ``learned_round_*`` fields below); the best off-domain quality measured (issue #18's bars,
    #: benchmarks/results/awq_quality_2026-12-04) for ~9-12 s more per SmolLM2 block on 2 cores
    #: (SmolLM2 at 128 x 512 tokens: 691 s in all, AVX-512 machine). "gptq": GPTQ's error
    #: feedback alone (Frantar et al. 2022): columns are rounded in order and each one's error is
    #: pushed onto the columns not yet rounded through the inverse input Gram, so errors cancel
    #: on correlated inputs. "nearest": plain round-to-nearest (what AWQ itself does; cheapest,
    #: and worse on every model measured in benchmarks/results/awq_quality_*). Scales and zeros
    #: are round-to-nearest's on the clipped weight in every case (the clip search chose the
    #: ranges); GPTQ's codes reproduce the unclipped weight, so the clipping error is fed back
    #: too. GPTQ costs a K x K Gram per distinct input and a Cholesky per linear.
    rounding: str = "learned"
    #: GPTQ only: dampening added to the Gram's diagonal, as a fraction of its mean diagonal; keeps
    #: the Cholesky well conditioned when inputs are collinear or few tokens were seen (raised 10x
    #: on a failed factorization). 0.1, not GPTQ's usual 0.01, which overfits the calibration
    #: tokens after AWQ's scaling (WikiText-2 ppl at 0.01 -> 0.1, 128 x 512 calibration: SmolLM2
    #: 3-bit 37.10 -> 33.78, 4-bit 23.00 -> 22.33; Gemma-3-270m 3-bit 54.41 -> 56.83, 4-bit
    #: 29.66 -> 30.25, smaller losses; on 8 x 256 tokens 0.01 was worse than round-to-nearest).
    gptq_damp: float = 0.1
    #: GPTQ only: columns per lazy block: an error moves the rest of its block at once and the
    #: columns after the block once per block (one matmul, not a rank-1 update per column); only
    #: the speed depends on it, the codes agree up to float rounding.
    gptq_block: int = 128
    #: rounding="learned" only (AutoRound's signed-gradient rounding, Cheng et al. 2023, on top
    #: of AWQ's scales and clips): after the linears of a block got their grid (and their starting
    #: codes, see ``learned_round_init``), a per-weight offset ``V`` in [-0.5, 0.5] added before
    #: rounding (``q = round(w / s + V) + z``, straight-through gradient) is learned for every
    #: linear of the block at once, by signed gradient descent with a linearly decaying step, to
    #: minimize the MSE between the quantized block's output and the unquantized (folded) block's
    #: output on calibration sequences. The better of the start and the last iterate, judged on
    #: all of ``learned_round_samples``, is kept, so the block's calibration loss never rises.
    #: The stored format (codes, scales, zeros) is unchanged. Costs one forward and backward of
    #: the block per iteration. Iterations per block (AutoRound: 200, its "light" recipe 50). 20: the only count measured on a real model (SmolLM2 g64 off-domain, target
    #: "model": 3-bit 72.0% of the RTN gap closed, 4-bit 60.9%; ~12 s per block on 2 cores, about
    #: doubling the quantization time).
    learned_round_iters: int = 20
    #: calibration sequences per iteration (AutoRound: 8 of 2048 tokens).
    learned_round_batch: int = 4
    #: tokens of each sequence used (its first ones: the block is causal, so a prefix's outputs
    #: are the whole sequence's first outputs); None: the whole calibration sequence.
    learned_round_seqlen: int | None = None
    #: calibration sequences the iterations draw their batches from and the kept iterate is
    #: judged on (rounded down to a multiple of the batch); None: every calibration sequence.
    learned_round_samples: int | None = 32
    #: step of the sign updates, decaying linearly to 0 over the iterations, so the offsets can
    #: travel 0.1 of a quantization step in all; None: 1 / iters (AutoRound's default for its 200
    #: iterations: half a step). At 20 iterations 1 / iters = 0.05 flips about a tenth of the codes
    #: per step and the block losses jump 5-30x before settling. Measured on SmolLM2 w4g64,
    #: 64 x 512 Lee news -> WikiText-2 test (benchmarks/results/awq_quality_2026-12-04): 0.05 gave
    #: 23.71, 0.005 (AutoRound's "light" recipe) 23.26 (both target "block"); with target "model",
    #: 0.01 closed 63.8 / 61.2 / 60.1% of the RTN gap over three calibration draws against
    #: 59.1 / 61.5 / 58.5% for 0.005, at the same cost.
    learned_round_lr: float | None = 0.01
    #: also learn per-group factors in [0.5, 1] on each end of the group's range (the clip
    #: search's range, factor 1 at the start), which changes the scales and zero points as
    #: AutoRound's min/max tuning does.
    learned_round_minmax: bool = False
    #: the codes the offsets start from (V = 0): "gptq", GPTQ's error-corrected weight (V then
    #: picks the floor or the ceiling of each error-corrected value), or "nearest", the clipped
    #: weight rounded to nearest (AutoRound's start).
    learned_round_init: str = "gptq"
    #: what the quantized block's output is fitted to: "model", the unquantized model's output at
    #: that block (its inputs carried along an unquantized path; AutoRound's default), so each
    #: block also corrects the error of the blocks before it; or "block", the unquantized block's
    #: output on the same inputs (those the quantized blocks before it produce), so each block fits
    #: only its own error. Same cost. "model" measured better where it counts (SmolLM2 g64,
    #: 64 x 512 Lee news -> WikiText-2 test, Grams from every calibration token): 4-bit 60.9% of the
    #: RTN gap closed, 3-bit 72.0%; "block" closed 53.7% at 4 bits (Grams from the search batch).
    learned_round_target: str = "model"

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or self.bits not in _BITS:
            raise ValueError(f"bits must be one of {_BITS}, got {self.bits!r}")
        gs = self.group_size
        if not isinstance(gs, int) or isinstance(gs, bool) or not (gs == -1 or (gs > 0 and gs % 32 == 0)):
            raise ValueError(
                f"group_size must be -1 (one group per row) or a positive multiple of 32 "
                f"(32, 64, 128 are typical), got {gs!r}"
            )
        for flag in ("sym", "duo_scaling", "clip", "clip_refine", "unfuse_experts", "sequential"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be a bool, got {getattr(self, flag)!r}")
        put("scale_dtype", _dtype_name(self.scale_dtype, _SCALE_DTYPES, "scale_dtype"))
        put("search_dtype", _dtype_name(self.search_dtype, _SEARCH_DTYPES, "search_dtype"))
        for name in ("n_grid", "n_clip_grid"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.max_shrink, (int, float)) or not 0.0 < float(self.max_shrink) < 1.0:
            raise ValueError(f"max_shrink must be a float in (0, 1), got {self.max_shrink!r}")
        put("max_shrink", float(self.max_shrink))
        put("skip_clip", _patterns(self.skip_clip, "skip_clip"))
        put("modules_to_not_convert", _patterns(self.modules_to_not_convert, "modules_to_not_convert"))
        if not isinstance(self.screen_keep, int) or isinstance(self.screen_keep, bool) or self.screen_keep < 1:
            raise ValueError(f"screen_keep must be an int >= 1, got {self.screen_keep!r}")
        for name in ("loss_token_subsample", "clip_token_subsample", "screen_tokens"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.loss_scope not in ("module", "block"):
            raise ValueError(f"loss_scope must be 'module' or 'block', got {self.loss_scope!r}")
        if self.gram_samples not in _GRAM_SAMPLES:
            raise ValueError(f"gram_samples must be one of {_GRAM_SAMPLES}, got {self.gram_samples!r}")
        if self.rounding not in _ROUNDINGS:
            raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {self.rounding!r}")
        d = self.gptq_damp
        if not isinstance(d, (int, float)) or isinstance(d, bool) or not 0.0 < float(d) < 1.0:
            raise ValueError(
                f"gptq_damp must be a float in (0, 1) (a fraction of the mean Gram diagonal), got {d!r}"
            )
        put("gptq_damp", float(d))
        b = self.gptq_block
        if not isinstance(b, int) or isinstance(b, bool) or b < 1:
            raise ValueError(f"gptq_block must be an int >= 1, got {b!r}")
        for name in ("learned_round_iters", "learned_round_batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("learned_round_seqlen", "learned_round_samples"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {v!r}")
        lr = self.learned_round_lr
        if lr is not None:
            if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0.0 < float(lr) <= 0.5:
                raise ValueError(f"learned_round_lr must be None (1 / iters) or a float in (0, 0.5], got {lr!r}")
            put("learned_round_lr", float(lr))
        if not isinstance(self.learned_round_minmax, bool):
            raise ValueError(f"learned_round_minmax must be a bool, got {self.learned_round_minmax!r}")
        if self.learned_round_target not in _LEARNED_TARGETS:
            raise ValueError(
                f"learned_round_target must be one of {_LEARNED_TARGETS}, got {self.learned_round_target!r}"
            )
        if self.learned_round_init not in _LEARNED_INITS:
            raise ValueError(f"learned_round_init must be one of {_LEARNED_INITS}, got {self.learned_round_init!r}")

    @property
    def scale_torch_dtype(self) -> torch.dtype:
        return _SCALE_DTYPES[self.scale_dtype]

    @property
    def search_torch_dtype(self) -> torch.dtype:
        return _SEARCH_DTYPES[self.search_dtype]

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1


@dataclasses.dataclass(frozen=True)
class CalibConfig:
    """Where calibration text comes from and how much of it.

    ``source`` is one of: a ``datasets`` hub name (needs the network or a warm cache), a local
    file or folder (.txt, .json, .jsonl, .csv, .parquet), a list of strings, a
    ``datasets.Dataset``, or ``"self"`` (text sampled from the model with ``seed``).
    """

    source: Any = "self"
    n_samples: int = 128
    seqlen: int = 512
    text_column: str = "text"
    #: hub datasets only.
    subset: str | None = None
    split: str = "train"
    seed: int = 0

    def __post_init__(self) -> None:
        src = self.source
        if isinstance(src, Path):
            object.__setattr__(self, "source", str(src))
        elif isinstance(src, str):
            if not src:
                raise ValueError("source must be a dataset name, a path, a list of strings or 'self', got ''")
        elif isinstance(src, (list, tuple)):
            if not src:
                raise ValueError("source is an empty list: give at least one document")
            bad = [type(t).__name__ for t in src if not isinstance(t, str)]
            if bad:
                raise ValueError(f"source as a list must hold strings only, found {sorted(set(bad))}")
            object.__setattr__(self, "source", tuple(src))
        for name in ("n_samples", "seqlen"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.text_column, str) or not self.text_column:
            raise ValueError(f"text_column must be a non-empty column name, got {self.text_column!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
