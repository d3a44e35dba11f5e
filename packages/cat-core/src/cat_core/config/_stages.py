"""Settings of the AWQ stages that run before rounding: the scale search, the clip search and the
input Grams both the clip search and GPTQ read. Each is validated where it is built."""

from __future__ import annotations

import dataclasses

from cat_core.config._checks import check_choice, check_fields, check_float, patterns

__all__ = ["ScaleSearch", "ClipSearch", "Grams"]


@dataclasses.dataclass(frozen=True)
class ScaleSearch:
    """The per-input-channel scale search (AWQ's scale step), one grid search per scale group."""

    #: divide the activation statistic by a weight statistic when forming scales (AWQ's "duo").
    duo_scaling: bool = True
    #: alphas tried in [0, 1) (plus the identity).
    n_grid: int = 20
    #: tokens of the search batch (whole sequences) the losses are measured on; None: every sample.
    token_subsample: int | None = 4096
    #: every grid point is first ranked on the search batch's first sequences holding about this
    #: many tokens, then only the ``screen_keep`` best (and the identity) are rerun on the whole
    #: batch: the result is the full search's whenever its winner ranks among them on the
    #: subsample. Only when the search batch holds more than twice as many tokens; None: no
    #: screening.
    screen_tokens: int | None = 1024
    screen_keep: int = 3
    #: where the loss is measured: "module", the smallest module holding the group's consumers
    #: (the reference's choice; cheapest), or "block", the decoder block's output (sees what
    #: follows the module, e.g. Gemma-2/3's post-attention and post-MLP norms).
    loss_scope: str = "module"

    def __post_init__(self) -> None:
        check_fields(self, "scales", ints=("n_grid", "screen_keep"), optional_ints=("token_subsample", "screen_tokens"),
                     bools=("duo_scaling",))
        check_choice(self.loss_scope, "scales.loss_scope", ("module", "block"))


#: linears whose range is never clipped: query/key errors are amplified by the softmax.
_SKIP_CLIP = ("*q_proj", "*k_proj", "*query*", "*key*", "*qkv*", "*Wqkv*")


@dataclasses.dataclass(frozen=True)
class ClipSearch:
    """Per-group shrinking of the weight range (AWQ's clip step); ``QuantConfig(clip=None)``
    turns it off."""

    #: each group's range is shrunk by factors in [max_shrink, 1).
    max_shrink: float = 0.5
    n_grid: int = 20
    #: after the shared shrink, search each end of the range alone (asymmetric only; ~3x the
    #: clip search's arithmetic).
    refine: bool = True
    #: glob patterns of linears never clipped.
    skip: tuple[str, ...] = _SKIP_CLIP
    #: try every ``stride``-th factor of a sweep first, then per group the factors around its best
    #: (1: every factor; see ``_clip_search._sweep``)
    stride: int = 1
    #: the error a clip is scored by: "full", the group's partial output over the calibration
    #: tokens (``d^T H_g d``), or "diagonal", only ``H_g``'s diagonal (each input channel's mean
    #: square activation weighting its weights' squared errors, as an importance matrix does)
    gram: str = "full"

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_shrink", check_float(self.max_shrink, "clip.max_shrink", 0.0, 1.0))
        check_fields(self, "clip", ints=("n_grid", "stride"), bools=("refine",))
        check_choice(self.gram, "clip.gram", ("full", "diagonal"))
        object.__setattr__(self, "skip", patterns(self.skip, "clip.skip"))


@dataclasses.dataclass(frozen=True)
class Grams:
    """The linears' input Gram matrices, which the clip search (per-group blocks) and GPTQ (full
    ``K x K``) read. They are recorded while the statistics pass runs each block anyway (before
    the fold, then rescaled by the folded scales: exact)."""

    #: calibration sequences accumulated: "all", every one (the statistics pass then keeps every
    #: chunk instead of stopping once its means converge), or "search", the scale search's batch
    #: only. A ``K x K`` Gram estimated from few tokens fits them: GPTQ then corrects errors the
    #: calibration text has and other text does not. Measured off-domain (SmolLM2 g64, 64 x 512
    #: news -> WikiText-2 test; benchmarks/results/awq_quality_2026-12-03 and -04): 3-bit 62.0% ->
    #: 66.0% of the RTN gap closed with "all", 4-bit 48.7% -> 51.8%.
    samples: str = "all"
    #: tokens sampled per accumulation; None: every token. A subsample that misses the rare tokens
    #: with massive activations (a sequence's first, in late blocks) picks clips that ruin them.
    token_subsample: int | None = None
    #: capture each linear's Gram only after the linears before it in the block are quantized,
    #: stage by stage (q/k/v, o, gate/up, down: GPTQ's order), at a partial block run per stage.
    #: Measured worse off-domain (23.39 -> 23.71, same setting as ``samples``): the stage Grams
    #: fit the calibration text's own upstream errors.
    sequential: bool = False

    def __post_init__(self) -> None:
        check_choice(self.samples, "grams.samples", ("search", "all"))
        check_fields(self, "grams", optional_ints=("token_subsample",), bools=("sequential",))
