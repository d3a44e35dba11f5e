"""Models bigger than memory.

:func:`load_lazy` builds a model from a safetensors checkpoint without reading its weights: each
unit (a decoder block, the embedding, the head) is read and converted to the compute dtype only
while it runs or while AWQ works on it, then goes back to its file. ``cat_core.awq.quantize`` on
such a model packs each block as soon as it is quantized and spills it to disk, so neither the
float model nor the quantized one is ever whole in memory; ``cat_core.io.save_quantized`` then
writes it shard by shard.

    from cat_core.stream import load_lazy
    model = load_lazy("path/to/llama-8b", keep_bytes=0)
    result = quantize(model, tokenizer, QuantConfig(bits=4), calib="notes.txt")
    save_quantized(model, "llama-8b-awq4", tokenizer)
"""

from cat_core.stream._budget import MemoryBudget, MemoryPlan, model_bytes, parse_bytes, plan_memory, plan_model
from cat_core.stream._lazy import LazyWeights, lazy_weights
from cat_core.stream._load import checkpoint_bytes, load_lazy

__all__ = ["LazyWeights", "MemoryBudget", "MemoryPlan", "checkpoint_bytes", "lazy_weights", "load_lazy",
           "model_bytes", "parse_bytes", "plan_memory", "plan_model"]
