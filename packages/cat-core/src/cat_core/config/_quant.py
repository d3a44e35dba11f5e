"""What to quantize and how: the stored format at the top level, each stage's settings nested.

The flat keywords of earlier releases (``n_grid=``, ``gptq_damp=``, ``learned_round_iters=``,
``rounding="gptq"``, ...) are still accepted by the constructor and mapped onto the nested
settings; reading such an attribute raises an error that names its new spelling.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from cat_core.config._checks import SCALE_DTYPES, SEARCH_DTYPES, check_bool, dtype_name, patterns
from cat_core.config._rounding import GPTQ, Importance, Learned, Rounding, rounding_from_name
from cat_core.config._stages import ClipSearch, Grams, ScaleSearch

__all__ = ["QuantConfig"]

_BITS = (2, 3, 4, 8)

# the flat keywords of earlier releases, per nested field: "old" (same name there) or "old:new"
_FLAT = {
    "scales": "duo_scaling n_grid loss_token_subsample:token_subsample screen_tokens screen_keep loss_scope",
    "clip": "max_shrink n_clip_grid:n_grid clip_refine:refine skip_clip:skip clip_gram:gram",
    "grams": "clip_token_subsample:token_subsample gram_samples:samples sequential",
    "rounding": "gptq_damp:damp gptq_block:block " + " ".join(
        f"learned_round_{f}:{f}" for f in ("iters", "batch", "seqlen", "samples", "lr", "minmax", "init", "target")),
}
# flat keyword -> (nested field, its name there)
_MOVED = {old: (field, new or old) for field, words in _FLAT.items()
          for old, _, new in (w.partition(":") for w in words.split())}


def _spelling(old: str) -> str:
    field, name = _MOVED[old]
    if field == "rounding":
        kind = "GPTQ" if old.startswith("gptq_") else "Learned"
        inner = f"GPTQ({name}=...)" if kind == "GPTQ" else f"Learned({name}=...)"
        extra = " (or Learned(init=GPTQ(...)))" if kind == "GPTQ" else ""
        return f"rounding={inner}{extra}"
    cls = {"scales": "ScaleSearch", "clip": "ClipSearch", "grams": "Grams"}[field]
    return f"{field}={cls}({name}=...)"


def _apply_flat(kw: dict[str, Any]) -> dict[str, Any]:
    """The constructor's keywords with the flat ones folded into the nested settings; a bad
    value's error names the keyword as it was typed, and its new spelling."""
    flat = {k: kw.pop(k) for k in list(kw) if k in _MOVED}
    if not flat:
        return kw
    try:
        return _fold_flat(kw, flat)
    except ValueError as e:
        msg = str(e)
        for old in flat:
            field, name = _MOVED[old]
            owner = field if field != "rounding" else ("GPTQ" if old.startswith("gptq_") else "Learned")
            nested = f"{owner}.{name}"
            if msg.startswith(nested + " "):
                raise ValueError(f"{old}{msg[len(nested):]} (now spelled {_spelling(old)})") from None
        raise


def _fold_flat(kw: dict[str, Any], flat: dict[str, Any]) -> dict[str, Any]:
    for field, cls in (("scales", ScaleSearch), ("clip", ClipSearch), ("grams", Grams)):
        moved = {name: flat[k] for k, (f, name) in _MOVED.items() if f == field and k in flat}
        base = kw.get(field)
        if not moved or (cls is not Grams and (base is None or base is False)):  # a search turned off stays off
            continue
        kw[field] = dataclasses.replace(base if isinstance(base, cls) else cls(), **moved)
    kw["rounding"] = _flat_rounding(rounding_from_name(kw.get("rounding", "learned")), flat)
    return kw


def _flat_rounding(rounding: Rounding, flat: dict[str, Any]) -> Rounding:
    """Apply ``gptq_*`` to GPTQ (also as learned rounding's start) and ``learned_round_*`` to
    Learned; like the flat fields before, each is ignored by the roundings it does not concern."""
    gptq = {k.removeprefix("gptq_"): v for k, v in flat.items() if k.startswith("gptq_")}
    learned = {k.removeprefix("learned_round_"): v for k, v in flat.items() if k.startswith("learned_round_")}
    if isinstance(rounding, GPTQ) and gptq:
        return dataclasses.replace(rounding, **gptq)
    if isinstance(rounding, Learned):
        if learned:
            rounding = dataclasses.replace(rounding, **learned)
        if gptq and isinstance(rounding.init, GPTQ):
            rounding = dataclasses.replace(rounding, init=dataclasses.replace(rounding.init, **gptq))
    return rounding


def _default_rounding(bits: Any, group_size: Any, sym: Any, flat: dict[str, Any]) -> Rounding | str:
    """``rounding="auto"``: learned rounding, started from importance-weighted codes (the searches
    then off) for 4-bit symmetric groups of 32, llama.cpp's Q4_0 format, else from GPTQ's codes.
    At Q4_0's format the importance start closed more of the RTN gap on both held-out texts of both
    models measured (news calibration; WikiText-2 / licenses: SmolLM2-135M 70.7 / 74.6% against
    53.8 / 42.1% from GPTQ's in issue #26's table and 61.0 / 66.9% for the best other recipe tried,
    Gemma-3-270m 83.1 / 83.4% against 80.7 / 79.1% from GPTQ's); at other
    formats it lost on Gemma-3 (asymmetric g128: 68.0 / 72.1% against 79.1 / 75.9%; 3-bit far
    behind). benchmarks/results/imatrix_round_2026-12-07. A start or min/max tuning given through
    the flat ``learned_round_*`` keywords keeps GPTQ's default."""
    q4_0 = bits == 4 and sym is True and group_size == 32
    if q4_0 and "learned_round_init" not in flat and not flat.get("learned_round_minmax"):
        return Learned(init=Importance())
    return "learned"


def _stage_value(value: Any, cls: type, auto_on: bool) -> Any:
    """A search stage's setting as stored: an instance of ``cls``, or None (off)."""
    if isinstance(value, str) and value == "auto":
        return cls() if auto_on else None
    if value is True:
        return cls()
    return None if value is False else value


@dataclasses.dataclass(frozen=True, init=False)
class QuantConfig:
    """What to quantize and how hard to search.

    Weights are stored as ``W ~= (q - z) * s`` per group of ``group_size`` input columns (``-1``:
    one group per row), the convention of ``cat-kernels/docs/format.md``. The search stages read
    ``scales`` (None: no input-scale search, every linear keeps its input as it is), ``clip``
    (None: no clip search), ``grams`` and ``rounding``. ``scales`` and ``clip`` default to "auto":
    on, unless importance-weighted rounding chooses the codes (``Importance()``, or learned
    rounding started from it), which closed more of the gap on held-out text without them.
    ``rounding`` defaults to "auto": learned rounding, started from importance-weighted codes for
    4-bit symmetric groups of 32 (llama.cpp's Q4_0 format), else from GPTQ's (see
    ``_default_rounding`` for the measurements).
    """

    bits: int
    group_size: int
    sym: bool
    #: storage dtype of the scales; codes are computed against the scale rounded to it.
    scale_dtype: str
    #: modules never quantized (only linears inside decoder blocks are ever candidates).
    modules_to_not_convert: tuple[str, ...]
    #: replace fused mixture-of-experts tensors by per-expert linears (``cat_core.moe``) so the
    #: experts get quantized; a conversion that fails its numerical check stays fused, with a warning.
    unfuse_experts: bool
    #: dtype in which the searches rerun modules; the folded weights keep the model's dtype.
    search_dtype: str
    seed: int
    scales: ScaleSearch
    clip: ClipSearch | None
    grams: Grams
    rounding: Rounding

    def __init__(
        self,
        bits: int = 4,
        group_size: int = 128,
        sym: bool = False,
        scale_dtype: str | torch.dtype = "float16",
        modules_to_not_convert: tuple[str, ...] = ("lm_head", "*embed*", "*wte", "*wpe"),
        unfuse_experts: bool = True,
        search_dtype: str | torch.dtype = "float32",
        seed: int = 0,
        scales: ScaleSearch | bool | str | None = "auto",
        clip: ClipSearch | bool | str | None = "auto",
        grams: Grams | None = None,
        rounding: Rounding | str = "auto",
        **flat: Any,
    ) -> None:
        unknown = sorted(set(flat) - set(_MOVED))
        if unknown:
            raise TypeError(f"QuantConfig got unexpected keyword argument(s) {unknown}")
        if isinstance(rounding, str) and rounding == "auto":
            rounding = _default_rounding(bits, group_size, sym, flat)
        kw = _apply_flat(dict(scales=scales, clip=clip, grams=grams, rounding=rounding, **flat))
        put = object.__setattr__.__get__(self)  # frozen: fields are set once, here
        put("bits", bits)
        put("group_size", group_size)
        put("sym", sym)
        put("scale_dtype", scale_dtype)
        put("modules_to_not_convert", modules_to_not_convert)
        put("unfuse_experts", unfuse_experts)
        put("search_dtype", search_dtype)
        put("seed", seed)
        put("grams", kw["grams"] or Grams())
        put("rounding", rounding_from_name(kw["rounding"]))
        # "auto": the searches fitted to the calibration text are on, unless importance-weighted
        # rounding chooses the codes, which measured better on held-out text without them
        # (benchmarks/results/imatrix_round_2026-12-07)
        auto_on = not self.uses_importance
        put("scales", _stage_value(kw["scales"], ScaleSearch, auto_on))
        put("clip", _stage_value(kw["clip"], ClipSearch, auto_on))
        self._validate()

    def _validate(self) -> None:
        put = object.__setattr__.__get__(self)
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or self.bits not in _BITS:
            raise ValueError(f"bits must be one of {_BITS}, got {self.bits!r}")
        gs = self.group_size
        if not isinstance(gs, int) or isinstance(gs, bool) or not (gs == -1 or (gs > 0 and gs % 32 == 0)):
            raise ValueError(
                f"group_size must be -1 (one group per row) or a positive multiple of 32 "
                f"(32, 64, 128 are typical), got {gs!r}"
            )
        check_bool(self.sym, "sym")
        check_bool(self.unfuse_experts, "unfuse_experts")
        put("scale_dtype", dtype_name(self.scale_dtype, SCALE_DTYPES, "scale_dtype"))
        put("search_dtype", dtype_name(self.search_dtype, SEARCH_DTYPES, "search_dtype"))
        put("modules_to_not_convert", patterns(self.modules_to_not_convert, "modules_to_not_convert"))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if not isinstance(self.grams, Grams):
            raise ValueError(f"grams must be a Grams(...), got {self.grams!r}")
        if self.scales is not None and not isinstance(self.scales, ScaleSearch):
            raise ValueError(f"scales must be a ScaleSearch(...), True, 'auto' or None/False (no input-scale "
                             f"search), got {self.scales!r}")
        if self.clip is not None and not isinstance(self.clip, ClipSearch):
            raise ValueError(f"clip must be a ClipSearch(...), True, 'auto' or None/False (no clip search), got {self.clip!r}")

    def __getattr__(self, name: str) -> Any:
        if name in _MOVED:
            raise AttributeError(f"QuantConfig.{name} moved: it is now {_spelling(name)}")
        raise AttributeError(f"'QuantConfig' object has no attribute {name!r}")

    @property
    def scale_torch_dtype(self) -> torch.dtype:
        return SCALE_DTYPES[self.scale_dtype]

    @property
    def search_torch_dtype(self) -> torch.dtype:
        return SEARCH_DTYPES[self.search_dtype]

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    @property
    def uses_gptq(self) -> bool:
        """Whether GPTQ computes codes: as the rounding, or as learned rounding's start."""
        return self._codes_from(GPTQ)

    @property
    def uses_importance(self) -> bool:
        """Whether importance-weighted rounding computes codes: as the rounding, or as learned
        rounding's start (every linear's input Gram is then captured, not only the clipped ones')."""
        return self._codes_from(Importance)

    def _codes_from(self, kind: type) -> bool:
        r = self.rounding
        return isinstance(r, kind) or (isinstance(r, Learned) and isinstance(r.init, kind))

