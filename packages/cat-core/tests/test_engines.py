"""cat_core.engines: which engine serves which checkpoint, and the refusals (no torch needed)."""

from __future__ import annotations

import pytest
from cat_core.engines import engines, export_problem


@pytest.mark.parametrize("fmt,bits,gs,sym", [
    ("native", 3, 128, False), ("native", 4, -1, True), ("gptq", 3, 128, False), ("gptq", 4, 128, True),
    ("gptq_v2", 4, 64, False), ("awq", 4, 128, False), ("awq", 4, "auto", True),
    ("gguf", 4, 32, True), ("gguf", 4, 128, False), ("gguf", 8, -1, True), ("gguf", 4, "auto", False),
])
def test_served_combinations_pass(fmt, bits, gs, sym):
    assert export_problem(fmt, bits, gs, sym) is None


@pytest.mark.parametrize("fmt,bits,gs,needle", [
    ("awq", 3, 128, "4-bit weights only"), ("awq", 8, 128, "4-bit weights only"), ("awq", 4, -1, "needs groups"),
    ("exl2", 4, 128, "must be one of"),
    ("gguf", 3, 128, "not 3-bit"), ("gguf", 2, 32, "not 2-bit"), ("gguf", 4, 48, "multiple of 32 or -1"),
])
def test_unserved_combinations_name_the_reason(fmt, bits, gs, needle):
    why = export_problem(fmt, bits, gs, False)
    assert why is not None and needle in why and "\n" not in why


def test_engine_lines_follow_the_measurements():
    # vLLM's gptq method takes symmetric 4/8-bit v1 only; asymmetric and 3-bit GPTQ are GPTQModel's
    assert "vLLM 'gptq'" in engines("gptq", 4, True)
    for fmt, bits, sym in (("gptq", 4, False), ("gptq_v2", 4, False), ("gptq", 3, True), ("gptq_v2", 3, False)):
        line = engines(fmt, bits, sym)
        assert "GPTQModel only" in line and "vLLM has no" in line
    assert "--export awq" in engines("gptq_v2", 4, False)
    assert "--quantization caterpillar" in engines("awq", 4, False)
    assert "from_pretrained" in engines("native", 3, False)


def test_gguf_block_types_and_engine_line():
    from cat_core.engines import gguf_type

    assert (gguf_type(4, True), gguf_type(4, False), gguf_type(8, True)) == ("Q4_0", "Q4_1", "Q8_0")
    assert gguf_type(8, False) is None and gguf_type(3, True) is None
    assert "Q8_0 has no zero point" in export_problem("gguf", 8, 32, False)
    assert "this model is 'falcon'" in export_problem("gguf", 4, 32, True, "falcon")
    assert export_problem("gguf", 4, 32, True, "gemma3_text") is None
    assert engines("gguf", 4, False) == "llama.cpp / Ollama / LM Studio (GGUF Q4_1)"
