"""transformers 5 + GPTQModel 7.6 load every export of the embedded SmolLM2 at 3 and 4 bits
(AWQ-GEMM 4-bit, GPTQ 4-bit symmetric v1, GPTQ 4-bit asymmetric v2, GPTQ 3-bit v2) and
transformers' own from_pretrained loads the native checkpoints (bit for bit).

The engines compute their quantized linears in float16, so their logits are compared with our own
model run the same way (the dequantized weights, linears in float16, the rest in the dtype the
engine loads the model in), within ``REL_TOL``; a corrupted export (one layer's packed codes
permuted) must fail that comparison. Greedy tokens are compared only up to the first generated
position where our top-2 logit margin is below twice the measured logit error: past it, a near
tie may flip whatever the weights. The report names each engine's kernel classes, the dtypes its
linears saw and this machine's ISA (``benchmarks/results/engines_hf_*``).

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
# max |logit difference| of an engine against our model computed as the engine computes (float16
# linears), relative to our largest |logit|. Measured: see benchmarks/results/engines_hf_*; a
# corrupted layer gives an order of magnitude more (checked by the mutation runs below).
REL_TOL = 1e-2
# How each route computes: (dtype the engine holds the model in, dtype of its quantized linears).
# GPTQModel's CPU kernels take float16/bfloat16 only; its AWQ kernel casts an fp32 model's inputs
# to float16 and back.
COMPUTE = {"from_pretrained fp32": (torch.float32, torch.float16), "GPTQModel.load fp16": (torch.float16, torch.float16)}
CORRUPTED = "layers.0.self_attn.o_proj.qweight"


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
    """(packed model, fake-quantized model holding the dequantized weights)."""
    from cat_core import QuantConfig, rtn_quantize
    from cat_core.nn import replace_linears

    fake = copy.deepcopy(base)
    res = rtn_quantize(fake, QuantConfig(bits=bits, group_size=64, sym=sym))
    return replace_linears(copy.deepcopy(fake), res.tensors), fake


def _ours(model, ids):
    """(logits on the prompt followed by our greedy tokens, those tokens)."""
    with torch.no_grad():
        tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)[0]
        logits = model(tokens[None]).logits[0].float()
    return logits, tokens


def _as_engine_computes(fake, ids, model_dtype, linear_dtype):
    """Our dequantized model's logits on ``ids`` with the model in ``model_dtype`` and its block
    linears computing in ``linear_dtype``."""
    m = copy.deepcopy(fake).to(model_dtype)
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in f".{name}":
            def forward(x, _m=mod):
                b = None if _m.bias is None else _m.bias.to(linear_dtype)
                return torch.nn.functional.linear(x.to(linear_dtype), _m.weight.to(linear_dtype), b).to(x.dtype)

            mod.forward = forward
    with torch.no_grad():
        return m(ids).logits[0].float()


def _corrupt(src: Path, dst: Path) -> Path:
    """A copy of the export ``src`` whose ``CORRUPTED`` tensor has the 8 nibbles of every int32
    word in reverse order: one layer unpacked the wrong way round."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        tensors = load_file(str(f))
        hit = [k for k in tensors if k.endswith(CORRUPTED)]
        if hit:
            w = tensors[hit[0]].to(torch.int64) & 0xFFFFFFFF
            out = torch.zeros_like(w)
            for i in range(8):
                out |= ((w >> (4 * i)) & 0xF) << (4 * (7 - i))
            tensors[hit[0]] = torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)
            save_file(tensors, str(f), metadata={"format": "pt"})
            return dst
    raise AssertionError(f"no tensor ending in {CORRUPTED} in {src}")


@pytest.fixture(scope="module")
def checkpoints(smol, tmp_path_factory):
    """{name: (dir, fake-quantized model, our logits on our greedy sequence, that sequence)} for
    every export kind (and two corrupted ones) and the native checkpoints."""
    from cat_core.io import export_awq, export_gptq, save_quantized

    base, tok = smol
    ids = tok(PROMPT, return_tensors="pt").input_ids
    root = tmp_path_factory.mktemp("engines")
    out = {}
    for bits, sym in ((4, False), (4, True), (3, False)):
        model, fake = _quantized(base, bits, sym)
        ref = (fake, *_ours(model, ids))
        tag = f"{bits}bit_{'sym' if sym else 'asym'}"
        if (bits, sym) == (4, False):
            out["awq_4bit"] = (export_awq(model, root / "awq4", tok, progress=False), *ref)
            out["gptq_4bit_asym_v2"] = (export_gptq(model, root / "gptq4v2", tok, checkpoint_format="gptq_v2",
                                                    progress=False), *ref)
            out["corrupt_awq_4bit"] = (_corrupt(out["awq_4bit"][0], root / "awq4bad"), *ref)
        if (bits, sym) == (4, True):
            out["gptq_4bit_sym_v1"] = (export_gptq(model, root / "gptq4v1", tok, progress=False), *ref)
            out["corrupt_gptq_4bit_sym_v1"] = (_corrupt(out["gptq_4bit_sym_v1"][0], root / "gptq4v1bad"), *ref)
        if bits == 3:
            out["gptq_3bit_v2"] = (export_gptq(model, root / "gptq3", tok, checkpoint_format="gptq_v2",
                                               progress=False), *ref)
        if not sym:
            out[f"native_{tag}"] = (save_quantized(model, root / f"native{bits}", tok, progress=False), *ref)
    return ids, out


def _agreement(fake, ref_logits, sequence, n_prompt, got, how):
    """(relative logit error vs our model computed as the engine computes, the same vs our float32
    model, the generated position up to which greedy tokens are compared, whether they agree there)."""
    model_dtype, linear_dtype = COMPUTE[how]
    same_way = _as_engine_computes(fake, sequence[None], model_dtype, linear_dtype)
    scale = float(ref_logits.abs().max())
    err = float((got["logits"] - same_way).abs().max()) / scale
    err32 = float((got["logits"] - ref_logits).abs().max()) / scale
    # each logit is off by at most `bound`: the top-2 order cannot flip where our margin exceeds 2x
    bound = float((got["logits"] - ref_logits).abs().max())
    top2 = ref_logits[n_prompt - 1:-1].topk(2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    upto = next((i for i, m in enumerate(margins) if m < 2 * bound), len(margins))
    gen = got["tokens"][n_prompt:n_prompt + upto].tolist()
    agree = gen == sequence[n_prompt:n_prompt + upto].tolist()
    return err, err32, upto, agree


def test_every_export_through_transformers_and_gptqmodel(checkpoints, hf_engine_python, tmp_path):
    ids, ckpts = checkpoints
    exports = {k: v for k, v in ckpts.items() if not k.startswith("native")}
    n_prompt = ids.shape[1]
    spec = {"new_tokens": NEW_TOKENS, "out": str(tmp_path),
            "runs": {k: {"dir": str(v[0]), "prompt": ids[0].tolist(), "sequence": v[3].tolist()}
                     for k, v in exports.items()}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    runner = Path(__file__).with_name("_run_hf_engine.py")
    t0 = time.perf_counter()
    res = subprocess.run([str(hf_engine_python), str(runner), str(tmp_path / "spec.json")],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-4000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"engine venv run: {time.perf_counter() - t0:.0f} s; cpu {report['cpu']}; versions {report['versions']}")
    from safetensors.torch import load_file

    failures = []
    for name, (_, fake, ref_logits, sequence) in exports.items():
        r = report[name]
        if not r["ok"]:
            failures.append(f"{name}: {r['error']}\n{r['trace']}")
            continue
        got = load_file(str(tmp_path / f"{name}.safetensors"))
        err, err32, upto, agree = _agreement(fake, ref_logits, sequence, n_prompt, got, r["how"])
        print(f"{name:25s} {r['how']:20s} {','.join(r['modules']):24s} linears saw {r['dtypes']} "
              f"kernel {r['kernel']}: max|dlogit|/max|logit| {err:.2e} vs ours as it computes, {err32:.2e} vs "
              f"ours in fp32; greedy tokens {'same' if agree else 'DIFFERENT'} up to position {upto} of "
              f"{NEW_TOKENS} ({r['seconds']} s)")
        if name.startswith("corrupt_"):
            if err <= REL_TOL:
                failures.append(f"{name}: a corrupted layer passed ({err:.2e} <= {REL_TOL}): the tolerance is blind")
        elif err > REL_TOL or not agree:
            failures.append(f"{name}: relative logit error {err:.2e} (tolerance {REL_TOL}), greedy tokens agree up "
                            f"to position {upto}: {agree}")
    assert not failures, "\n".join(failures)

@pytest.mark.parametrize("name", ["native_4bit_asym", "native_3bit_asym"])
def test_native_through_from_pretrained(checkpoints, name):
    import cat_core  # noqa: F401  (registers the "caterpillar" quantization method)
    from cat_core.nn import QuantLinear
    from transformers import AutoModelForCausalLM

    ids, ckpts = checkpoints
    path, _, ref_logits, ref_tokens = ckpts[name]
    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu", dtype=torch.float32)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 30 * 7
    logits, tokens = _ours(model, ids)
    err = float((logits - ref_logits).abs().max())
    same = tokens.tolist() == ref_tokens.tolist()
    print(f"{name:20s} from_pretrained max|dlogit|/max|logit| {err:.2e} greedy tokens {'same' if same else 'DIFFERENT'}")
    assert err == 0.0 and same  # the same modules and kernels: bit for bit
