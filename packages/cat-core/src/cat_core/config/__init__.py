"""Quantization and calibration settings.

Every settings object is frozen and validated on construction, so a bad value fails where it is
written, not twenty minutes into a search. :class:`QuantConfig` holds the stored format at its top
level and each AWQ stage's settings nested: ``scales`` (:class:`ScaleSearch`), ``clip``
(:class:`ClipSearch`, or None), ``grams`` (:class:`Grams`) and ``rounding`` (:class:`Nearest`,
:class:`GPTQ`, :class:`Importance` or :class:`Learned`).
"""

from cat_core.config._calib import CalibConfig
from cat_core.config._checks import auto_search_dtype, matches_any
from cat_core.config._quant import QuantConfig
from cat_core.config._rounding import GPTQ, Importance, Learned, Nearest, Rounding
from cat_core.config._stages import ClipSearch, Grams, ScaleSearch

__all__ = [
    "QuantConfig", "CalibConfig", "ScaleSearch", "ClipSearch", "Grams", "Nearest", "GPTQ", "Importance",
    "Learned", "Rounding", "matches_any", "auto_search_dtype",
]
