"""Native checkpoints through ``transformers.AutoModelForCausalLM.from_pretrained``.

transformers dispatches a pre-quantized checkpoint on ``quantization_config.quant_method``; its
extension points ``register_quantization_config`` and ``register_quantizer`` let another package
claim a method. We claim ``"caterpillar"``: the quantizer turns transformers' meta skeleton into
the checkpoint's model (the same :func:`~cat_core.io._native.prepare_skeleton` that
``load_quantized`` uses) and checks every tensor's name and shape against the files before
transformers reads any data, so nothing is left randomly initialised. transformers then loads
the packed buffers as they are and casts only the unquantized floating tensors to ``dtype``.

Import this module only once ``transformers.quantizers.auto`` is importable without a cycle
(the hook in :mod:`cat_core._transformers_hook` sees to that): the cat-core modules that build
the model are imported inside the methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

QUANT_METHOD = "caterpillar"  # the same string as cat_core.io._native.QUANT_METHOD


class CaterpillarConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a native Caterpillar checkpoint, kept as written (every
    field is an attribute; ``to_dict`` gives the same dict back)."""

    def __init__(self, quant_method: str = QUANT_METHOD, **fields: Any) -> None:
        self.quant_method = quant_method
        for key, value in fields.items():
            setattr(self, key, value)


class CaterpillarQuantizer(HfQuantizer):
    """Loads native Caterpillar checkpoints onto :class:`~cat_core.nn.QuantLinear` layers."""

    requires_calibration = True  # pre-quantized checkpoints only: quantize with cat_core.quantize

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        try:
            import cat_kernels  # noqa: F401
        except ImportError as e:
            raise ImportError("a Caterpillar checkpoint runs on cat-kernels: pip install cat-kernels") from e

    def _process_model_before_weight_loading(self, model: Any, checkpoint_files: list[str] | None = None,
                                             **kwargs: Any) -> None:
        from cat_core.io._errors import CheckpointError
        from cat_core.io._native import prepare_skeleton
        from cat_core.io._shards import read_headers

        if not checkpoint_files:
            raise CheckpointError("a Caterpillar checkpoint loads from its safetensors files; none were found")
        path = Path(checkpoint_files[0]).parent
        headers = read_headers(path)
        prepare_skeleton(model, self.quantization_config.to_dict(), path, headers, activation_dtype=model.dtype)
        _check_names_and_shapes(model, path, headers)

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        # generate() then decodes one native call per token where the model fits (float32 on the
        # CPU; cat_core.native_decode), the plain path elsewhere; CAT_NATIVE_DECODE=0 turns it off
        from cat_core.native_decode import try_enable_native_decode

        try_enable_native_decode(model)
        return model

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return False  # save with cat_core.io.save_quantized, which records what this reads

    @property
    def is_trainable(self) -> bool:
        return False


def _check_names_and_shapes(model: Any, path: Path, headers: dict[str, tuple[str, list[int], Any]]) -> None:
    """Every tensor the model needs is in the files with its shape, nothing else; the quantized
    layers' integer arrays and scales with their exact dtype too. Other floating tensors may differ
    in dtype: transformers casts them to the ``dtype`` asked for."""
    from cat_core.io._skeleton import check_tensors, expected_from
    from cat_core.nn import QuantLinear

    expected = expected_from(model)
    # transformers ties these after loading; the writer stored each tied tensor once
    for target in getattr(model, "all_tied_weights_keys", None) or {}:
        if target not in headers:
            expected.pop(target, None)
    exact = {f"{n}.{b}" for n, m in model.named_modules() if isinstance(m, QuantLinear) for b in ("scales",)}
    for key, (shape, dtype) in expected.items():
        stored = headers.get(key)
        if stored is not None and key not in exact and dtype.is_floating_point and stored[2].is_floating_point:
            expected[key] = (shape, stored[2])
    check_tensors(path, headers, expected, hint="loading through transformers")


def register() -> None:
    """Claim ``quant_method: "caterpillar"`` in transformers (once; later calls do nothing)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(CaterpillarConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(CaterpillarQuantizer)
