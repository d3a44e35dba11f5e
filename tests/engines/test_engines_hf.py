"""transformers 5 + GPTQModel 7.6 load every export of the embedded SmolLM2 at 3 and 4 bits
(AWQ-GEMM 4-bit, GPTQ 4-bit symmetric v1, GPTQ 4-bit asymmetric v2, GPTQ 3-bit v2) and
transformers' own from_pretrained loads the native checkpoints (bit for bit).

The engines compute their quantized linears in float16, so their logits are compared with our own
model run the same way (the dequantized weights, linears in float16, the rest in the dtype the
engine loads the model in), within ``REL_TOL``; a corrupted export (one layer's packed codes
permuted, or every zero point off by one) must fail that comparison. Greedy tokens are compared only up to the first generated
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
# max |logit difference| of an engine against our model computed as the engine computes,
# relative to our largest |logit|. bfloat16 rounds to 8 significant bits, and the kernel's
# rounding points are not ours, so its noise is not reproduced, only bounded: measured 1.3-1.8e-2
# (benchmarks/results/engines_hf_*); a corrupted export gives ~1 (the mutation runs below).
REL_TOL = 4e-2
# How GPTQModel 7.6's CPU kernels compute a quantized linear (read from its source, by class):
# the int4pack kernels (4-bit) round the scales to bfloat16, fold the zero point into a bfloat16
# offset ((2^(b-1) - z) * s), cast the activations to bfloat16 and run
# aten::_weight_int4pack_mm_for_cpu, whose bfloat16 output is cast back; TorchLinear (3-bit)
# dequantizes to float16 and multiplies in float16.
KERNELS = {"TorchAtenAwqLinear": "int4pack-bf16", "TorchAtenLinear": "int4pack-bf16", "TorchLinear": "dequant-fp16"}
# the dtype each route holds the rest of the model in
MODEL_DTYPE = {"from_pretrained fp32": torch.float32, "GPTQModel.load fp16": torch.float16}
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
    """(packed model, fake-quantized model holding the dequantized weights, the codes)."""
    from cat_core import QuantConfig, rtn_quantize
    from cat_core.nn import replace_linears

    fake = copy.deepcopy(base)
    res = rtn_quantize(fake, QuantConfig(bits=bits, group_size=64, sym=sym))
    return replace_linears(copy.deepcopy(fake), res.tensors), fake, res.tensors


def _ours(model, ids):
    """(logits on the prompt followed by our greedy tokens, those tokens)."""
    with torch.no_grad():
        tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)[0]
        logits = model(tokens[None]).logits[0].float()
    return logits, tokens


def _engine_weight(qt, kernel: str) -> torch.Tensor:
    """The weight ``[N, K]`` (float32) the engine's kernel multiplies by, from our codes."""
    n, k = qt.codes.shape
    q = qt.codes.float()
    z = torch.full_like(qt.scales, 2 ** (qt.bits - 1), dtype=torch.float32) if qt.zeros is None else qt.zeros.float()

    def per_column(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(k // t.shape[1], dim=1)

    if kernel == "int4pack-bf16":
        center = 2 ** (qt.bits - 1)
        s = qt.scales.to(torch.bfloat16)
        offset = (center - z.to(torch.bfloat16)) * s  # bfloat16 arithmetic, as the engine folds it
        return (q - center) * per_column(s.float()) + per_column(offset.float())
    return ((q - per_column(z)) * per_column(qt.scales.float())).half().float()


def _as_engine_computes(fake, tensors, ids, how: str, kernel: str) -> torch.Tensor:
    """Our dequantized model's logits on ``ids`` computed as the engine computes: the model in the
    route's dtype, each quantized linear as the engine's kernel computes it."""
    m = copy.deepcopy(fake).to(MODEL_DTYPE[how])
    low = torch.bfloat16 if kernel == "int4pack-bf16" else torch.float16
    for name, qt in tensors.items():
        mod = m.get_submodule(name)
        w = _engine_weight(qt, kernel).to(low) if low is torch.float16 else _engine_weight(qt, kernel)

        def forward(x, _w=w, _b=mod.bias):
            if low is torch.float16:
                out = torch.nn.functional.linear(x.half(), _w).to(x.dtype)
            else:  # bf16 activations, float32 accumulation, bf16 result
                out = (x.to(torch.bfloat16).float() @ _w.T).to(torch.bfloat16).to(x.dtype)
            return out if _b is None else out + _b

        mod.forward = forward
    with torch.no_grad():
        return m(ids).logits[0].float()


def _reverse_nibbles(w: torch.Tensor) -> torch.Tensor:
    """The 8 nibbles of every int32 word in reverse order: a layer unpacked the wrong way round."""
    w = w.to(torch.int64) & 0xFFFFFFFF
    out = torch.zeros_like(w)
    for i in range(8):
        out |= ((w >> (4 * i)) & 0xF) << (4 * (7 - i))
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)


def _zeros_off_by_one(w: torch.Tensor) -> torch.Tensor:
    """Every 4-bit zero point with its lowest bit flipped (off by one): the GPTQ v1/v2 mix-up."""
    return w ^ 0x11111111


def _corrupt(src: Path, dst: Path, suffix: str, change) -> Path:
    """A copy of the export ``src`` with ``change`` applied to every tensor whose name ends in
    ``suffix``."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    hits = 0
    for f in dst.glob("*.safetensors"):
        tensors = load_file(str(f))
        names = [k for k in tensors if k.endswith(suffix)]
        for k in names:
            tensors[k] = change(tensors[k])
        if names:
            save_file(tensors, str(f), metadata={"format": "pt"})
            hits += len(names)
    assert hits, f"no tensor ending in {suffix} in {src}"
    return dst


@pytest.fixture(scope="module")
def checkpoints(smol, tmp_path_factory):
    """{name: (dir, (fake-quantized model, codes), our logits on our greedy sequence, that
    sequence)} for every export kind (and two corrupted ones) and the native checkpoints."""
    from cat_core.io import export_awq, export_gptq, save_quantized

    base, tok = smol
    ids = tok(PROMPT, return_tensors="pt").input_ids
    root = tmp_path_factory.mktemp("engines")
    out = {}
    for bits, sym in ((4, False), (4, True), (3, False)):
        model, fake, tensors = _quantized(base, bits, sym)
        ref = ((fake, tensors), *_ours(model, ids))
        tag = f"{bits}bit_{'sym' if sym else 'asym'}"
        if (bits, sym) == (4, False):
            out["awq_4bit"] = (export_awq(model, root / "awq4", tok, progress=False), *ref)
            out["gptq_4bit_asym_v2"] = (export_gptq(model, root / "gptq4v2", tok, checkpoint_format="gptq_v2",
                                                    progress=False), *ref)
            out["corrupt_awq_4bit"] = (_corrupt(out["awq_4bit"][0], root / "awq4bad", CORRUPTED, _reverse_nibbles),
                                       *ref)
            out["corrupt_gptq_4bit_asym_v2_zeros"] = (_corrupt(out["gptq_4bit_asym_v2"][0], root / "gptq4v2bad",
                                                               "qzeros", _zeros_off_by_one), *ref)
        if (bits, sym) == (4, True):
            out["gptq_4bit_sym_v1"] = (export_gptq(model, root / "gptq4v1", tok, progress=False), *ref)
            out["corrupt_gptq_4bit_sym_v1"] = (_corrupt(out["gptq_4bit_sym_v1"][0], root / "gptq4v1bad", CORRUPTED,
                                                        _reverse_nibbles), *ref)
        if bits == 3:
            out["gptq_3bit_v2"] = (export_gptq(model, root / "gptq3", tok, checkpoint_format="gptq_v2",
                                               progress=False), *ref)
        if not sym:
            out[f"native_{tag}"] = (save_quantized(model, root / f"native{bits}", tok, progress=False), *ref)
    return ids, out


def _agreement(ours, ours_fp32, got, n_prompt: int, how: str, kernel: str) -> dict:
    """The engine's run against our model computed as the engine computes, on the engine's own
    greedy sequence: ``err``, the largest logit difference over every position relative to our
    largest logit (``err_fp32``: the same against our float32 model); and the greedy decisions:
    at each generated step, the engine's logits are compared with ours on the same prefix, and
    where our top-2 margin exceeds twice their largest difference the token is determined by the
    weights, so our argmax must be the engine's token. ``upto``: the first step where it is not
    (a near tie, which rounding may break either way); ``checked``: the steps so determined."""
    fake, tensors = ours
    seq = got["tokens"]
    same_way = _as_engine_computes(fake, tensors, seq[None], how, kernel)
    with torch.no_grad():
        fp32 = ours_fp32(seq[None]).logits[0].float()
    scale = float(fp32.abs().max())
    steps = got["step_logits"]
    mine = same_way[n_prompt - 1:n_prompt - 1 + steps.shape[0]]
    err = (steps - mine).abs().amax(dim=-1)
    top2 = mine.topk(2, dim=-1)
    determined = (top2.values[:, 0] - top2.values[:, 1]) > 2 * err
    tokens = seq[n_prompt:n_prompt + steps.shape[0]]
    wrong = [i for i in range(len(tokens)) if determined[i] and int(top2.indices[i, 0]) != int(tokens[i])]
    upto = next((i for i in range(len(tokens)) if not determined[i]), len(tokens))
    return {"err": float((got["logits"] - same_way).abs().max()) / scale,
            "err_fp32": float((got["logits"] - fp32).abs().max()) / scale,
            "upto": upto, "checked": int(determined.sum()), "steps": len(tokens), "wrong": wrong}


def test_every_export_through_transformers_and_gptqmodel(checkpoints, hf_engine_python, tmp_path):
    ids, ckpts = checkpoints
    exports = {k: v for k, v in ckpts.items() if not k.startswith("native")}
    n_prompt = ids.shape[1]
    spec = {"new_tokens": NEW_TOKENS, "out": str(tmp_path),
            "runs": {k: {"dir": str(v[0]), "prompt": ids[0].tolist()} for k, v in exports.items()}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    runner = Path(__file__).with_name("_run_hf_engine.py")
    t0 = time.perf_counter()
    res = subprocess.run([str(hf_engine_python), str(runner), str(tmp_path / "spec.json")],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-4000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"engine venv run: {time.perf_counter() - t0:.0f} s; cpu {report['cpu']}; versions {report['versions']}")
    from cat_core.nn import replace_linears
    from safetensors.torch import load_file

    failures = []
    for name, (_, (fake, tensors), _, _) in exports.items():
        r = report[name]
        if not r["ok"]:
            failures.append(f"{name}: {r['error']}\n{r['trace']}")
            continue
        kinds = [KERNELS.get(m) for m in r["modules"]]
        if len(set(kinds)) != 1 or kinds[0] is None:
            failures.append(f"{name}: the engine picked {r['modules']}, whose arithmetic this test does not model "
                            f"(known: {sorted(KERNELS)})")
            continue
        got = load_file(str(tmp_path / f"{name}.safetensors"))
        a = _agreement((fake, tensors), replace_linears(copy.deepcopy(fake), tensors), got, n_prompt, r["how"],
                       kinds[0])
        print(f"{name:25s} {r['how']:20s} {','.join(r['modules']):20s} ({kinds[0]}; linears saw {r['dtypes']}): "
              f"max|dlogit|/max|logit| {a['err']:.2e} vs ours computed the same way, {a['err_fp32']:.2e} vs ours in "
              f"fp32; greedy steps determined by the weights: the first {a['upto']}, {a['checked']} of {a['steps']} "
              f"in all, {len(a['wrong'])} different ({r['seconds']} s)")
        if name.startswith("corrupt_"):
            if a["err"] <= REL_TOL:
                failures.append(f"{name}: a corrupted layer passed ({a['err']:.2e} <= {REL_TOL}): the tolerance is blind")
        elif a["err"] > REL_TOL or a["wrong"]:
            failures.append(f"{name}: relative logit error {a['err']:.2e} (tolerance {REL_TOL}); greedy steps where "
                            f"the engine's token is not ours although our margin exceeds the error: {a['wrong']}")
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
