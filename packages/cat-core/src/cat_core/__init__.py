"""Caterpillar core: AWQ over a discovered layer graph, for the cat-kernels runtime.

The public names are imported lazily so that ``import cat_core`` stays cheap (transformers and
the search machinery load on first use). Importing it also makes transformers'
``AutoModelForCausalLM.from_pretrained`` load native Caterpillar checkpoints.
"""

from __future__ import annotations

import importlib
from typing import Any

from cat_core import _transformers_hook

__version__ = "0.3.0"

_EXPORTS = {
    "QuantConfig": "cat_core.config",
    "CalibConfig": "cat_core.config",
    "ScaleSearch": "cat_core.config",
    "ClipSearch": "cat_core.config",
    "Grams": "cat_core.config",
    "Nearest": "cat_core.config",
    "GPTQ": "cat_core.config",
    "Importance": "cat_core.config",
    "Learned": "cat_core.config",
    "quantize": "cat_core.awq",
    "rtn_quantize": "cat_core.awq",
    "QuantizeResult": "cat_core.awq",
    "AWQError": "cat_core.awq",
    "discover": "cat_core.graph",
    "GroupSpec": "cat_core.graph",
    "GraphError": "cat_core.graph",
    "unfuse_experts": "cat_core.moe",
    "QuantLinear": "cat_core.nn",
    "replace_linears": "cat_core.nn",
    "set_int8_activations": "cat_core.nn",
    "save_quantized": "cat_core.io",
    "load_quantized": "cat_core.io",
    "export_awq": "cat_core.io",
    "export_gptq": "cat_core.io",
    "CheckpointError": "cat_core.io",
    "enable_native_decode": "cat_core.native_decode",
    "disable_native_decode": "cat_core.native_decode",
    "NativeDecodeError": "cat_core.native_decode",
}

__all__ = ["__version__", *_EXPORTS]

# AutoModelForCausalLM.from_pretrained(native_dir) after `import cat_core`: registers the
# "caterpillar" quantization method when transformers loads its quantizer registry
_transformers_hook.install()


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cat_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
