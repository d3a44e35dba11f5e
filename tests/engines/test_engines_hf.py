"""transformers 5 + GPTQModel 7.6 load every export of the embedded SmolLM2 at 3 and 4 bits
(AWQ-GEMM 4-bit, GPTQ 4-bit symmetric v1, GPTQ 4-bit asymmetric v2, GPTQ 3-bit v2) and
transformers' own from_pretrained loads the native checkpoints; each gives our model's 20 greedy
tokens exactly and its logits within the stated tolerance (our model in float32; the native
checkpoints bit for bit).

    tools/setup_engines_hf.sh && python -m pytest tests/engines -m engines

RTN quantization (a loader test: the weights only need to be what the files say)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.engines
pytest.importorskip("cat_kernels")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _models as M  # noqa: E402  (the benchmarks' model locator, as tests/test_awq_quality_fast.py uses)

PROMPT = "The capital of France is"
NEW_TOKENS = 20
# max |logit difference| of an engine against our float32 model, relative to our largest
# |logit|. The engines compute in float16 (GPTQModel's CPU kernel takes float16/bfloat16 only;
# its AWQ path casts to float16 inside): measured 1.8e-2 for AWQ in the first run
# (benchmarks/results/engines_hf_*). A wrong unpacking gives about 1.
REL_TOL = 5e-2


@pytest.fixture(scope="module")
def smol():
    try:
        gguf = M.gguf_path("smollm2")
    except FileNotFoundError as e:
        pytest.skip(f"the embedded SmolLM2 is not installed: {e}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _quantized(base, bits: int, sym: bool):
    from cat_core import QuantConfig, rtn_quantize
    from cat_core.nn import replace_linears

    model = copy.deepcopy(base)
    res = rtn_quantize(model, QuantConfig(bits=bits, group_size=64, sym=sym))
    return replace_linears(model, res.tensors)


def _ours(model, ids):
    with torch.no_grad():
        logits = model(ids).logits[0].float()
        tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)[0]
    return logits, tokens


@pytest.fixture(scope="module")
def checkpoints(smol, tmp_path_factory):
    """{name: (dir, our logits, our tokens)} for every export kind and the native checkpoints."""
    from cat_core.io import export_awq, export_gptq, save_quantized

    base, tok = smol
    ids = tok(PROMPT, return_tensors="pt").input_ids
    root = tmp_path_factory.mktemp("engines")
    out = {}
    for bits, sym in ((4, False), (4, True), (3, False)):
        model = _quantized(base, bits, sym)
        ref = _ours(model, ids)
        tag = f"{bits}bit_{'sym' if sym else 'asym'}"
        if (bits, sym) == (4, False):
            out["awq_4bit"] = (export_awq(model, root / "awq4", tok, progress=False), *ref)
            out["gptq_4bit_asym_v2"] = (export_gptq(model, root / "gptq4v2", tok, checkpoint_format="gptq_v2",
                                                    progress=False), *ref)
        if (bits, sym) == (4, True):
            out["gptq_4bit_sym_v1"] = (export_gptq(model, root / "gptq4v1", tok, progress=False), *ref)
        if bits == 3:
            out["gptq_3bit_v2"] = (export_gptq(model, root / "gptq3", tok, checkpoint_format="gptq_v2",
                                               progress=False), *ref)
        if not sym:
            out[f"native_{tag}"] = (save_quantized(model, root / f"native{bits}", tok, progress=False), *ref)
    return ids, out


def _compare(name, ref_logits, ref_tokens, logits, tokens, rows):
    err = float((logits - ref_logits).abs().max() / ref_logits.abs().max())
    same = tokens.tolist() == ref_tokens.tolist()
    rows.append((name, err, same))
    return err, same


def test_every_export_through_transformers_and_gptqmodel(checkpoints, hf_engine_python, tmp_path):
    ids, ckpts = checkpoints
    exports = {k: v for k, v in ckpts.items() if not k.startswith("native")}
    spec = {"ids": ids[0].tolist(), "new_tokens": NEW_TOKENS, "out": str(tmp_path),
            "dirs": {k: str(v[0]) for k, v in exports.items()}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    runner = Path(__file__).with_name("_run_hf_engine.py")
    t0 = time.perf_counter()
    res = subprocess.run([str(hf_engine_python), str(runner), str(tmp_path / "spec.json")],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-4000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"engine venv run: {time.perf_counter() - t0:.0f} s")
    from safetensors.torch import load_file

    rows, failures = [], []
    for name, (_, ref_logits, ref_tokens) in exports.items():
        r = report[name]
        if not r["ok"]:
            failures.append(f"{name}: {r['error']}\n{r['trace']}")
            continue
        got = load_file(str(tmp_path / f"{name}.safetensors"))
        err, same = _compare(name, ref_logits, ref_tokens, got["logits"], got["tokens"], rows)
        print(f"{name:20s} {r['how']:16s} {','.join(r['modules']):28s} max|dlogit|/max|logit| {err:.2e} "
              f"greedy {NEW_TOKENS} tokens {'same' if same else 'DIFFERENT'} ({r['seconds']} s)")
        if err > REL_TOL or not same:
            failures.append(f"{name}: relative logit error {err:.2e} (tolerance {REL_TOL}), tokens same: {same}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", ["native_4bit_asym", "native_3bit_asym"])
def test_native_through_from_pretrained(checkpoints, name):
    import cat_core  # noqa: F401  (registers the "caterpillar" quantization method)
    from cat_core.nn import QuantLinear
    from transformers import AutoModelForCausalLM

    ids, ckpts = checkpoints
    path, ref_logits, ref_tokens = ckpts[name]
    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu", dtype=torch.float32)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 30 * 7
    logits, tokens = _ours(model, ids)
    err, same = _compare(name, ref_logits, ref_tokens, logits, tokens, [])
    print(f"{name:20s} from_pretrained max|dlogit|/max|logit| {err:.2e} greedy tokens {'same' if same else 'DIFFERENT'}")
    assert err == 0.0 and same  # the same modules and kernels: bit for bit
