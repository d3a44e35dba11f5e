"""Quantized checkpoints: the native Caterpillar format, exports to AWQ-GEMM and GPTQ, and a
GGUF file for llama.cpp.

    from cat_core.io import save_quantized, load_quantized, export_awq, export_gptq, export_gguf
    save_quantized(model, "out/llama-3bit", tokenizer)
    model, tokenizer = load_quantized("out/llama-3bit")
    export_gguf(model, "out/llama-4bit.gguf", tokenizer)   # llama-cli -m out/llama-4bit.gguf

The directory formats are safetensors + JSON (no pickle). Readers check every tensor's name, shape and
dtype and raise :class:`CheckpointError` naming the file and tensor.
"""

from cat_core.io._errors import CheckpointError
from cat_core.io._export_awq import export_awq, import_awq
from cat_core.io._export_gguf import check_gguf, export_gguf
from cat_core.io._export_gptq import export_gptq, import_gptq
from cat_core.io._native import load_quantized, save_quantized

__all__ = [
    "CheckpointError",
    "save_quantized",
    "load_quantized",
    "export_awq",
    "import_awq",
    "export_gptq",
    "import_gptq",
    "export_gguf",
    "check_gguf",
]
