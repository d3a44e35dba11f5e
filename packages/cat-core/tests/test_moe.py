"""Mixture-of-experts: unfusing transformers' fused expert tensors into per-expert linears, their
scale groups, AWQ end to end, the packed runtime and checkpoints, on tiny random MoE models."""

from __future__ import annotations

import copy
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _quantized_models import randomize, word_tokenizer  # noqa: E402
from cat_core.config import CalibConfig, QuantConfig  # noqa: E402
from cat_core.graph import apply_scales, discover  # noqa: E402
from cat_core.moe import (  # noqa: E402
    ExpertsError,
    UnfusedExperts,
    find_fused_experts,
    unfuse_experts,
)

VOCAB, H = 128, 64
ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe"]
N_EXPERTS = {"mixtral": 4, "qwen2_moe": 4, "qwen3_moe": 8}


def _config(name: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                  pad_token_id=0)
    if name == "mixtral":
        return tf.MixtralConfig(**common, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2)
    if name == "qwen2_moe":
        return tf.Qwen2MoeConfig(**common, intermediate_size=64, moe_intermediate_size=32,
                                 shared_expert_intermediate_size=64, num_experts=4, num_experts_per_tok=2,
                                 decoder_sparse_step=1)
    if not hasattr(tf, "Qwen3MoeConfig"):
        pytest.skip("this transformers has no Qwen3-MoE")
    return tf.Qwen3MoeConfig(**common, head_dim=16, intermediate_size=64, moe_intermediate_size=32,
                             num_experts=8, num_experts_per_tok=2, decoder_sparse_step=1)


def moe_model(name: str, seed: int = 0) -> nn.Module:
    """2 layers, hidden 64, expert width 32 (group size 32 fits every linear), N(0, 1/K) weights."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        _config(name), dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    return randomize(model, seed + 1)


def _ids(n: int = 2, t: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def _logits(model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(_ids() if ids is None else ids).logits


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("name", ARCHS)
def test_unfuse_is_exact(name: str) -> None:
    model = moe_model(name)
    fused = {p: model.get_submodule(p) for p in find_fused_experts(model)}
    assert len(fused) == 2
    w = {p: (m.gate_up_proj.detach().clone(), m.down_proj.detach().clone()) for p, m in fused.items()}
    ref = _logits(model)
    done = unfuse_experts(model, strict=True)
    assert done == {p: "gate_up" for p in fused}
    assert not find_fused_experts(model)
    n, inter = N_EXPERTS[name], 32
    for p, (gu, dn) in w.items():
        mod = model.get_submodule(p)
        assert isinstance(mod, UnfusedExperts) and len(mod) == n
        for e in range(n):
            assert torch.equal(mod[e].gate_proj.weight, gu[e, :inter])
            assert torch.equal(mod[e].up_proj.weight, gu[e, inter:])
            assert torch.equal(mod[e].down_proj.weight, dn[e])
    got = _logits(model)
    print(f"{name}: unfused logits max abs diff {(got - ref).abs().max().item():.2e}")
    assert _rel(ref, got) < 1e-5  # separate matmuls round differently from the fused one, no more


class _Experts(nn.Module):
    """Hand-made fused experts: [gate; up] concatenated or interleaved, stored [out, in] or
    transposed, optional biases, optional clamped activation (a forward no unfused expert
    reproduces)."""

    def __init__(self, e=3, h=16, i=8, *, interleaved=False, transposed=False, bias=False, clamp=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        gu = torch.randn(e, 2 * i, h, generator=g)
        dn = torch.randn(e, h, i, generator=g)
        self.gate_up_proj = nn.Parameter(gu.transpose(1, 2).contiguous() if transposed else gu)
        self.down_proj = nn.Parameter(dn.transpose(1, 2).contiguous() if transposed else dn)
        if bias:
            self.gate_up_proj_bias = nn.Parameter(torch.randn(e, 2 * i, generator=g))
            self.down_proj_bias = nn.Parameter(torch.randn(e, h, generator=g))
        self.act_fn = nn.SiLU()
        self.num_experts, self.interleaved, self.transposed, self.clamp = e, interleaved, transposed, clamp

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        for e in range(self.num_experts):
            tok, pos = torch.where(top_k_index == e)
            if tok.numel() == 0:
                continue
            gu, dn = self.gate_up_proj[e], self.down_proj[e]
            if self.transposed:
                gu, dn = gu.t(), dn.t()
            y = hidden_states[tok] @ gu.t()
            if hasattr(self, "gate_up_proj_bias"):
                y = y + self.gate_up_proj_bias[e]
            gate, up = (y[:, 0::2], y[:, 1::2]) if self.interleaved else y.chunk(2, dim=-1)
            if self.clamp:
                gate = gate.clamp(max=0.5)
            y = (self.act_fn(gate) * up) @ dn.t()
            if hasattr(self, "down_proj_bias"):
                y = y + self.down_proj_bias[e]
            out.index_add_(0, tok, y * top_k_weights[tok, pos, None])
        return out


class _Holder(nn.Module):
    def __init__(self, experts: nn.Module) -> None:
        super().__init__()
        self.experts = experts


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_layouts_are_found_numerically(interleaved: bool, transposed: bool, bias: bool) -> None:
    m = _Holder(_Experts(interleaved=interleaved, transposed=transposed, bias=bias))
    fused = copy.deepcopy(m.experts)
    done = unfuse_experts(m, strict=True)
    want = ("interleaved" if interleaved else "gate_up") + ("_t" if transposed else "")
    assert done == {"experts": want}
    x, idx = torch.randn(10, 16), torch.randint(0, 3, (10, 2))
    w = torch.rand(10, 2)
    torch.testing.assert_close(m.experts(x, idx, w), fused(x, idx, w), rtol=1e-5, atol=1e-5)


def test_unreproducible_experts_stay_fused() -> None:
    m = _Holder(_Experts(clamp=True))
    with pytest.warns(UserWarning, match=r"left unconverted.*experts \(_Experts\): no layout reproduces"):
        assert unfuse_experts(m) == {}
    assert isinstance(m.experts, _Experts)
    with pytest.raises(ExpertsError, match="no layout reproduces"):
        unfuse_experts(m, strict=True)


# --------------------------------------------------------------------------- graph


def _expected_groups(name: str, n: int) -> list[tuple[str, tuple[str, ...]]]:
    experts_in = tuple(f"mlp.experts.{e}.{p}" for e in range(n) for p in ("gate_proj", "up_proj"))
    norm = {
        "mixtral": ("mlp.gate", *experts_in),
        "qwen3_moe": ("mlp.gate", *experts_in),
        "qwen2_moe": ("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.gate",
                      *experts_in, "mlp.shared_expert_gate"),
    }[name]
    out = [
        ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        ("self_attn.v_proj", ("self_attn.o_proj",)),
        ("post_attention_layernorm", norm),
    ]
    if name == "qwen2_moe":
        out.append(("mlp.shared_expert.up_proj", ("mlp.shared_expert.down_proj",)))
    out += [(f"mlp.experts.{e}.up_proj", (f"mlp.experts.{e}.down_proj",)) for e in range(n)]
    return out


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("sample", ["default", "one_token"])
def test_unfused_groups_and_fold_invariance(name: str, sample: str) -> None:
    """One token reaches only top-k experts: the others get their groups from a sibling."""
    model = moe_model(name)
    unfuse_experts(model, strict=True)
    ids = _ids()
    ref = _logits(model, ids)
    graph = discover(model, sample_input_ids=torch.tensor([[7]]) if sample == "one_token" else None)
    print(f"\n--- {name} ({sample})\n{graph.describe()}")
    want = _expected_groups(name, N_EXPERTS[name])
    for blk in graph.blocks:
        assert [(g.producer, g.consumers) for g in blk.groups] == want
        norm = blk.groups[2]
        assert norm.inspect == "mlp"  # the loss sees the whole MoE block's output
    gen = torch.Generator().manual_seed(1)
    for blk in graph.blocks:
        for g in blk.groups:
            apply_scales(blk.module, g, torch.exp(0.5 * torch.randn(g.channels, generator=gen)))
    assert _rel(ref, _logits(model, ids)) < 1e-4


# --------------------------------------------------------------------------- AWQ end to end

CFG = QuantConfig(bits=4, group_size=32, n_grid=6, n_clip_grid=4, loss_token_subsample=64,
                  clip_token_subsample=64)


def _texts(n: int = 12, words: int = 40) -> list[str]:
    g = torch.Generator().manual_seed(5)
    return [" ".join(f"w{int(i)}" for i in torch.randint(4, VOCAB, (words,), generator=g)) for _ in range(n)]


@pytest.fixture(scope="module")
def quantized():
    """{arch: (fake-quantized model, QuantizeResult)} from cat_core.quantize on text."""
    from cat_core import quantize

    out = {}
    for name in ("mixtral", "qwen2_moe"):
        model = moe_model(name)
        res = quantize(model, word_tokenizer(VOCAB), CFG, calib=CalibConfig(source=_texts(), n_samples=4, seqlen=32),
                       progress=False)
        out[name] = (model, res)
    return out


def _expert_linears(model: nn.Module) -> list[str]:
    return [f"{p}.{e}.{lin}" for p, m in model.named_modules() if isinstance(m, UnfusedExperts)
            for e in range(len(m)) for lin in ("gate_proj", "up_proj", "down_proj")]


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_quantize_runs_packed_saves_and_loads(name: str, quantized, tmp_path) -> None:
    from cat_core.io import load_quantized, save_quantized
    from cat_core.nn import QuantLinear, memory_report, replace_linears

    model, res = quantized[name]
    model = copy.deepcopy(model)
    experts = _expert_linears(model)
    assert len(experts) == 2 * N_EXPERTS[name] * 3 == 24
    assert set(experts) <= set(res.tensors)  # every expert's three linears are quantized
    assert not find_fused_experts(model)
    for r in res.report:
        assert r.skipped is None and r.best_loss <= r.rtn_loss
    fq = _logits(model)
    assert torch.isfinite(fq).all()
    replace_linears(model, res.tensors)
    assert all(isinstance(model.get_submodule(n), QuantLinear) for n in experts)
    got = _logits(model)
    assert (got - fq).abs().max() <= 1e-4 * fq.abs().max()  # packed kernels == fake quantization
    mem = memory_report(model)
    assert set(experts) <= set(mem["layers"]) and mem["bits_per_weight"] < 8

    out = save_quantized(model, tmp_path / name, word_tokenizer(VOCAB), progress=False)
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["unfused_experts"] == {f"model.layers.{i}.mlp.experts": "gate_up" for i in range(2)}
    assert set(experts) <= set(q["modules"])
    loaded, tok = load_quantized(out, model_kwargs={"attn_implementation": "eager"})
    assert tok is not None
    assert all(isinstance(loaded.get_submodule(n), QuantLinear) for n in experts)
    assert torch.equal(_logits(loaded), got)
    # decode steps (one token: M = 1 per expert, the fused kernel) give the fake-quantized tokens
    prompt = _ids(1, 6, 9)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(loaded.generate(prompt, **kw), quantized[name][0].generate(prompt, **kw))


def test_awq_and_gptq_export_round_trip_per_expert(quantized, tmp_path) -> None:
    from cat_core.io import export_awq, export_gptq, import_awq, import_gptq
    from cat_core.nn import replace_linears

    model, res = quantized["mixtral"]
    model = replace_linears(copy.deepcopy(model), res.tensors)
    ref = _logits(model)
    kw = {"model_kwargs": {"attn_implementation": "eager"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scale dtype notes
        a = export_awq(model, tmp_path / "awq", progress=False)
        g = export_gptq(model, tmp_path / "gptq", checkpoint_format="gptq_v2", progress=False)
    for path, imp in ((a, import_awq), (g, import_gptq)):
        q = json.loads((path / "config.json").read_text())["quantization_config"]
        assert "unfused_experts" in q
        back, _ = imp(path, **kw)
        assert torch.equal(_logits(back), ref)
    # checkpoints of other tools name the experts the same way but carry no record: still unfused
    cfg = json.loads((a / "config.json").read_text())
    del cfg["quantization_config"]["unfused_experts"]
    (a / "config.json").write_text(json.dumps(cfg))
    back, _ = import_awq(a, **kw)
    assert torch.equal(_logits(back), ref)


def test_expert_without_calibration_tokens_falls_back_to_rtn() -> None:
    """The router never picks expert 3: its up->down search is skipped (identity scales, RTN),
    with a warning, and the model stays finite."""
    from cat_core import quantize

    model = moe_model("mixtral")

    def never_three(mod, args, out):
        logits, _, _ = out
        probs = torch.softmax(logits.float(), dim=-1)
        probs = probs.masked_fill(torch.arange(probs.shape[-1]) == 3, -1.0)  # not in place: learned
        # rounding differentiates through the router
        top, idx = torch.topk(probs, mod.top_k, dim=-1)
        return logits, top / top.sum(-1, keepdim=True), idx

    for layer in model.model.layers:
        layer.mlp.gate.register_forward_hook(never_three)
    with pytest.warns(UserWarning, match=r"scale search skipped for 2 group\(s\).*experts\.3\.up_proj"):
        res = quantize(model, None, CFG, calib=_ids(4, 32, 3), progress=False)
    skipped = [r for r in res.report if r.skipped]
    assert [r.group.split(" ")[0] for r in skipped] == ["mlp.experts.3.up_proj"] * 2
    assert all(r.alpha is None and "no calibration token" in r.skipped for r in skipped)
    for i in range(2):
        assert f"model.layers.{i}.mlp.experts.3.down_proj" in res.tensors
    assert torch.isfinite(_logits(model)).all()


def test_given_graph_of_fused_model_is_rediscovered() -> None:
    from cat_core import quantize

    model = moe_model("qwen2_moe")
    graph = discover(model)  # describes the fused tensors
    with pytest.warns(UserWarning, match="discovering it again"):
        res = quantize(model, None, CFG, calib=_ids(4, 32, 3), graph=graph, progress=False)
    assert set(_expert_linears(model)) <= set(res.tensors)


def test_unfuse_off_leaves_experts_fused_and_unquantized() -> None:
    """Fused experts (unfuse_experts=False, or a family no layout reproduces) keep full precision;
    their groups are reported as skipped instead of failing the run."""
    import dataclasses

    from cat_core import quantize

    model = moe_model("mixtral")
    with pytest.warns(UserWarning, match="none of its consumers is quantized"):
        res = quantize(model, None, dataclasses.replace(CFG, unfuse_experts=False), calib=_ids(4, 32, 3),
                       progress=False)
    assert len(find_fused_experts(model)) == 2 and len(res.tensors) == 8  # attention only
    assert sum(r.skipped is not None for r in res.report) == 2 * 5
    assert torch.isfinite(_logits(model)).all()
