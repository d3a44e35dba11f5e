"""vLLM plugin: serve native Caterpillar checkpoints (2/3/4/8-bit) with vLLM.

cat-core declares the entry point ``caterpillar = cat_core.vllm:register`` in the group
``vllm.general_plugins``; vLLM calls it in every process it starts, and from then on a directory
written by :func:`cat_core.io.save_quantized` is an ordinary vLLM model:

    vllm serve out/smollm2-awq3 --dtype float32
    python -c "import vllm; print(vllm.LLM('out/smollm2-awq3').generate('Hello'))"

vLLM reads ``quantization_config.quant_method = "caterpillar"`` from config.json and builds each
quantized linear with the packed ``qweight``/``scales``/``qzeros`` of the checkpoint (fused
``qkv_proj``/``gate_up_proj`` and tensor-parallel shards included), computed by the cat-kernels
``cat::gemm`` op. vLLM stays optional: importing this module imports nothing of vLLM; only
:func:`register` does.
"""

from __future__ import annotations

__all__ = ["register"]


def register() -> None:
    """Register the ``caterpillar`` quantization method with vLLM (safe to call more than once)."""
    from cat_core.vllm._method import register_method

    register_method()
