"""How each linear's integer codes are chosen once its input scaling and clip range are fixed: one
value of four kinds, ``Nearest()``, ``GPTQ(...)``, ``Importance()`` or ``Learned(...)``.

Scales and zeros are round-to-nearest's on the clipped weight for ``Nearest`` and ``GPTQ`` (the
clip search chose the ranges); ``Importance`` searches each group's own; ``Learned`` keeps its
start's. Measured quality of each: benchmarks/results/awq_quality_* and imatrix_round_*.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Union

from cat_core.config._checks import check_choice, check_fields, check_float

__all__ = ["Nearest", "GPTQ", "Importance", "Learned", "Rounding", "rounding_from_name"]


@dataclasses.dataclass(frozen=True)
class Nearest:
    """Plain round-to-nearest (what AWQ itself does; cheapest, and worse on every model measured)."""

    name: ClassVar[str] = "nearest"
    label: ClassVar[str] = "round-to-nearest"


@dataclasses.dataclass(frozen=True)
class GPTQ:
    """GPTQ's error feedback (Frantar et al. 2022): columns are rounded in order and each one's
    error is pushed onto the columns not yet rounded through the inverse input Gram, so errors
    cancel on correlated inputs. Its codes reproduce the unclipped weight, so the clipping error
    is fed back too. Costs a ``K x K`` Gram per distinct input and a Cholesky per linear."""

    name: ClassVar[str] = "gptq"
    label: ClassVar[str] = "GPTQ rounding"
    #: added to the Gram's diagonal, as a fraction of its mean diagonal (raised 10x on a failed
    #: factorization). 0.1, not GPTQ's usual 0.01, which overfits the calibration tokens after
    #: AWQ's scaling (WikiText-2 ppl, 128 x 512 calibration, 0.01 -> 0.1: SmolLM2 3-bit 37.10 ->
    #: 33.78, 4-bit 23.00 -> 22.33; Gemma-3-270m 3-bit 54.41 -> 56.83, 4-bit 29.66 -> 30.25).
    damp: float = 0.1
    #: columns per lazy block; only the speed depends on it (codes agree up to float rounding).
    block: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "damp", check_float(self.damp, "GPTQ.damp", 0.0, 1.0,
                                                     what=" (a fraction of the mean Gram diagonal)"))
        check_fields(self, "GPTQ", ints=("block",))


@dataclasses.dataclass(frozen=True)
class Importance:
    """Importance-weighted rounding, llama.cpp's quantizer with an importance matrix re-derived for
    this format (``cat_core.awq._importance``): each group tries a range of grids around its own
    range, rounds, refits the scale by least squares weighted by each weight's importance (its
    input column's mean square on the calibration tokens, times ``sqrt(row mean square + w^2)``),
    and keeps the trial with the smallest weighted error. Symmetric groups use all ``2**bits``
    levels (a negative scale where the largest-magnitude weight is positive). Costs about 20
    roundings of each weight; needs only the diagonal of each linear's input Gram."""

    name: ClassVar[str] = "importance"
    label: ClassVar[str] = "importance-weighted rounding"


@dataclasses.dataclass(frozen=True)
class Learned:
    """AutoRound's signed-gradient rounding (Cheng et al. 2023) on top of AWQ's scales and clips:
    a per-weight offset ``V`` in [-0.5, 0.5] added before rounding (``q = round(w / s + V) + z``,
    straight-through gradient) is learned for every linear of a block at once, by signed gradient
    descent with a linearly decaying step, to minimize the MSE between the quantized block's output
    and ``target``. The better of the start and the last iterate, judged on all ``samples``, is
    kept, so the block's calibration loss never rises. One forward and backward of the block per
    iteration. The default rounding: best off-domain quality measured
    (benchmarks/results/awq_quality_2026-12-04)."""

    name: ClassVar[str] = "learned"
    label: ClassVar[str] = "learned rounding"
    #: iterations per block (AutoRound: 200, its "light" recipe 50). 20 measured on SmolLM2 g64
    #: off-domain: 3-bit 72.0% of the RTN gap closed, 4-bit 60.9%, about doubling the time.
    iters: int = 20
    #: calibration sequences per iteration (AutoRound: 8 of 2048 tokens).
    batch: int = 4
    #: tokens of each sequence used (its first: the block is causal); None: whole sequences.
    seqlen: int | None = None
    #: calibration sequences the batches are drawn from and the kept iterate is judged on
    #: (rounded down to a multiple of ``batch``); None: every calibration sequence.
    samples: int | None = 32
    #: step of the sign updates, decaying linearly to 0, so offsets travel ``lr * iters / 2`` of a
    #: quantization step in all; None: 1 / iters (AutoRound's default for 200 iterations). SmolLM2
    #: w4g64, news -> WikiText-2: 0.01 closed 63.8 / 61.2 / 60.1% of the RTN gap over three draws,
    #: 0.005 59.1 / 61.5 / 58.5%; 0.05 made the block losses jump 5-30x before settling.
    lr: float | None = 0.01
    #: also learn per-group factors in [0.5, 1] on each end of the range (AutoRound's min/max
    #: tuning), which changes the scales and zero points.
    minmax: bool = False
    #: the codes the offsets start from: GPTQ's error-corrected weight, the clipped weight rounded
    #: to nearest (AutoRound's start), or importance-weighted rounding's codes and scales (with
    #: which QuantConfig's "auto" searches are off: SmolLM2 4-bit g64 news -> WikiText-2 / licenses
    #: closed 66.7 / 63.2% of the RTN gap against 56.4 / 52.0% from GPTQ's codes, but Gemma-3-270m
    #: 3-bit g128 lost: ppl 59.7 / 53.5 against 48.0 / 41.3; benchmarks/results/imatrix_round_2026-12-07).
    init: Union[GPTQ, Nearest, Importance] = GPTQ()
    #: what the block's output is fitted to: "model", the unquantized model's output at that block
    #: (inputs carried along an unquantized path; AutoRound's default), so each block also corrects
    #: the blocks before it; or "block", the unquantized block on the quantized path's inputs.
    #: Same cost; "model" measured better (SmolLM2 4-bit off-domain 60.9% vs 53.7%).
    target: str = "model"

    def __post_init__(self) -> None:
        check_fields(self, "Learned", ints=("iters", "batch"), optional_ints=("seqlen", "samples"), bools=("minmax",))
        if self.lr is not None:
            object.__setattr__(self, "lr", check_float(self.lr, "Learned.lr", 0.0, 0.5, hi_closed=True,
                                                       what=" or None (1 / iters)"))
        starts = {"gptq": GPTQ(), "nearest": Nearest(), "importance": Importance()}
        init = starts.get(self.init, self.init) if isinstance(self.init, str) else self.init
        if not isinstance(init, (GPTQ, Nearest, Importance)):
            raise ValueError(f"Learned.init must be GPTQ(...), Nearest() or Importance() (or one of "
                             f"{tuple(starts)}), got {self.init!r}")
        object.__setattr__(self, "init", init)
        if self.minmax and isinstance(init, Importance):
            raise ValueError("Learned.minmax=True recomputes every scale from the group's range, which would "
                             "discard init=Importance()'s scales: give init=GPTQ() or init=Nearest() with it")
        check_choice(self.target, "Learned.target", ("block", "model"))


Rounding = Union[Nearest, GPTQ, Importance, Learned]


def rounding_from_name(value: object) -> Rounding:
    """A rounding value from one of the names "nearest", "gptq", "importance", "learned" (their
    defaults), or the value itself; anything else raises naming what was expected."""
    if isinstance(value, (Nearest, GPTQ, Importance, Learned)):
        return value
    table = {"nearest": Nearest, "gptq": GPTQ, "importance": Importance, "learned": Learned}
    if isinstance(value, str) and value in table:
        return table[value]()
    raise ValueError(f"rounding must be Nearest(), GPTQ(...), Importance(), Learned(...) or one of {tuple(table)}, "
                     f"got {value!r}")
