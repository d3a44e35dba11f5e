"""Layer-graph discovery on tiny random models of many architectures.

Each model: discover the groups, check the structure, fold random scales into every group of
every block and check that the logits do not move. Post-norm-only models (OLMo-2/3, EXAONE-4)
also go through AWQ at 3 and 4 bits, save and reload.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_models import NAMES, sample_ids, tiny_model  # noqa: E402
from cat_core.graph import (  # noqa: E402
    ActivationFold,
    GraphError,
    LinearFold,
    NormFold,
    ScaledActivation,
    apply_scales,
    discover,
    find_blocks,
)

QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
LLAMA = [
    ("input_layernorm", "norm", QKV),
    ("self_attn.v_proj", "linear", ("self_attn.o_proj",)),
    ("post_attention_layernorm", "norm", ("mlp.gate_proj", "mlp.up_proj")),
    ("mlp.up_proj", "linear", ("mlp.down_proj",)),
]


# post-norm only: h = x + norm(attn(x)); h = h + norm(mlp(h)). Only v -> o and up -> down fold.
POST_NORM = [LLAMA[1], LLAMA[3]]
POST_NORM_UNSCALED = [(QKV, "residual"), (("mlp.gate_proj", "mlp.up_proj"), "residual")]
POST_NORM_NAMES = ["olmo2", "olmo3", "exaone4"]


def _experts(n: int) -> list:
    return [
        (f"mlp.experts.gate_up_proj[{e}]", "linear", (f"mlp.experts.down_proj[{e}]",))
        for e in range(n)
    ]


EXPECTED = {
    "opt": [
        ("self_attn_layer_norm", "norm", QKV),
        ("self_attn.v_proj", "linear", ("self_attn.out_proj",)),
        ("final_layer_norm", "norm", ("fc1",)),
        ("fc1", "linear", ("fc2",)),  # through ReLU
    ],
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "qwen3": LLAMA,
    "gemma": LLAMA,
    "gemma3": [LLAMA[0], LLAMA[1], ("pre_feedforward_layernorm", "norm", LLAMA[2][2]), LLAMA[3]],
    "phi": [  # parallel attention
        ("input_layernorm", "norm", (*QKV, "mlp.fc1")),
        ("self_attn.v_proj", "linear", ("self_attn.dense",)),
        ("mlp.activation_fn", "activation", ("mlp.fc2",)),
    ],
    "phi3": [
        ("input_layernorm", "norm", ("self_attn.qkv_proj",)),
        ("self_attn.qkv_proj", "linear", ("self_attn.o_proj",)),
        ("post_attention_layernorm", "norm", ("mlp.gate_up_proj",)),
        ("mlp.gate_up_proj", "linear", ("mlp.down_proj",)),
    ],
    "falcon": [  # parallel attention: one norm feeds attention and MLP
        ("input_layernorm", "norm", ("self_attention.query_key_value", "mlp.dense_h_to_4h")),
        ("self_attention.query_key_value", "linear", ("self_attention.dense",)),
        ("mlp.act", "activation", ("mlp.dense_4h_to_h",)),
    ],
    "falcon_new": [
        ("ln_attn", "norm", ("self_attention.query_key_value",)),
        ("self_attention.query_key_value", "linear", ("self_attention.dense",)),
        ("ln_mlp", "norm", ("mlp.dense_h_to_4h",)),
        ("mlp.act", "activation", ("mlp.dense_4h_to_h",)),
    ],
    "mpt": [
        ("norm_1", "norm", ("attn.Wqkv",)),
        ("attn.Wqkv", "linear", ("attn.out_proj",)),
        ("norm_2", "norm", ("ffn.up_proj",)),
        ("ffn.act", "activation", ("ffn.down_proj",)),
    ],
    "bloom": [
        ("input_layernorm", "norm", ("self_attention.query_key_value",)),
        ("self_attention.query_key_value", "linear", ("self_attention.dense",)),
        ("post_attention_layernorm", "norm", ("mlp.dense_h_to_4h",)),
        ("mlp.gelu_impl", "activation", ("mlp.dense_4h_to_h",)),
    ],
    "gptj": [
        ("ln_1", "norm", ("attn.q_proj", "attn.k_proj", "attn.v_proj", "mlp.fc_in")),
        ("attn.v_proj", "linear", ("attn.out_proj",)),
        ("mlp.act", "activation", ("mlp.fc_out",)),
    ],
    "gpt_neox": [
        ("input_layernorm", "norm", ("attention.query_key_value",)),
        ("attention.query_key_value", "linear", ("attention.dense",)),
        ("post_attention_layernorm", "norm", ("mlp.dense_h_to_4h",)),
        ("mlp.act", "activation", ("mlp.dense_4h_to_h",)),
    ],
    "gpt2": [
        ("ln_1", "norm", ("attn.c_attn",)),
        ("attn.c_attn", "linear", ("attn.c_proj",)),
        ("ln_2", "norm", ("mlp.c_fc",)),
        ("mlp.act", "activation", ("mlp.c_proj",)),
    ],
    "olmo2": POST_NORM,
    "olmo3": POST_NORM,
    "exaone4": POST_NORM,
    "mixtral": [
        LLAMA[0],
        LLAMA[1],
        ("post_attention_layernorm", "norm", ("mlp.gate", "mlp.experts.gate_up_proj")),
        *_experts(4),
    ],
    "qwen2_moe": [
        LLAMA[0],
        LLAMA[1],
        (
            "post_attention_layernorm",
            "norm",
            (
                "mlp.shared_expert.gate_proj",
                "mlp.shared_expert.up_proj",
                "mlp.gate",
                "mlp.experts.gate_up_proj",
                "mlp.shared_expert_gate",
            ),
        ),
        ("mlp.shared_expert.up_proj", "linear", ("mlp.shared_expert.down_proj",)),
        *_experts(4),
    ],
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize("name", NAMES)
def test_discover_and_fold_preserves_logits(name: str) -> None:
    model = tiny_model(name)
    ids = sample_ids()
    with torch.no_grad():
        ref = model(ids).logits
    graph = discover(model)
    print(f"\n--- {name}\n{graph.describe()}")

    path, _, blocks = find_blocks(model)
    assert graph.blocks_path == path and len(graph.blocks) == len(blocks) == 2
    for blk in graph.blocks:
        got = [(g.producer, g.fold.kind, g.consumers) for g in blk.groups]
        assert got == EXPECTED[name], f"{name} block {blk.index}:\n{blk.describe()}"
        unscaled = [(u.consumers, u.kind) for u in blk.unscaled]
        want = POST_NORM_UNSCALED if name in POST_NORM_NAMES else []
        assert unscaled == want, f"{name} block {blk.index}:\n{blk.describe()}"
        assert blk.module is blocks[blk.index] and blk.path == f"{path}.{blk.index}"

    gen = torch.Generator().manual_seed(1)
    for blk in graph.blocks:
        for g in blk.groups:
            apply_scales(blk.module, g, torch.exp(0.5 * torch.randn(g.channels, generator=gen)))
    with torch.no_grad():
        out = model(ids).logits
    assert _rel(ref, out) < 1e-4


def test_fold_details() -> None:
    g = discover(tiny_model("llama")).blocks[0].groups
    assert [x.inspect for x in g] == ["self_attn", "self_attn.o_proj", "mlp", "mlp.down_proj"]
    vo = g[1].fold
    assert (
        isinstance(vo, LinearFold) and vo.via == "attention" and vo.tied
    )  # 4 q heads share 2 kv heads
    s = g[1].tie(torch.rand(72) + 0.5)
    assert torch.allclose(s.view(2, 2, 18)[:, 0], s.view(2, 2, 18)[:, 1])
    assert isinstance(g[0].fold, NormFold) and g[0].fold.offset == 0.0 and g[0].fold.bias is None

    gemma = discover(tiny_model("gemma")).blocks[0].groups[0].fold
    assert isinstance(gemma, NormFold) and gemma.offset == 1.0  # (1 + weight) RMSNorm

    falcon = discover(tiny_model("falcon")).blocks[0].groups
    assert falcon[0].inspect == ""  # parallel block: attention and MLP are measured together
    assert (
        isinstance(falcon[1].fold, LinearFold) and len(set(falcon[1].fold.rows)) == 18
    )  # multi-query


def test_scaled_activation_is_saved() -> None:
    model = tiny_model("gpt2")
    graph = discover(model)
    blk = graph.blocks[0]
    g = next(x for x in blk.groups if isinstance(x.fold, ActivationFold))
    apply_scales(blk.module, g, torch.full((g.channels,), 2.0))
    assert isinstance(blk.module.mlp.act, ScaledActivation)
    sd = model.state_dict()
    assert torch.equal(sd["transformer.h.0.mlp.act.scales"], torch.full((g.channels,), 2.0))
    apply_scales(blk.module, g, torch.full((g.channels,), 3.0))  # composes, no double wrapping
    assert not isinstance(blk.module.mlp.act.act, ScaledActivation)
    assert torch.equal(blk.module.mlp.act.scales, torch.full((g.channels,), 6.0))


def test_low_precision_model_is_analysed_in_fp32() -> None:
    model = tiny_model("llama").to(torch.bfloat16)
    g = discover(model)
    assert [(x.producer, x.fold.kind, x.consumers) for x in g.blocks[1].groups] == LLAMA
    assert next(model.parameters()).dtype == torch.bfloat16


# ----------------------------------------------------------------------------- post-norm only


def test_post_norm_groups_are_named_with_reason_and_strict_raises() -> None:
    graph = discover(tiny_model("olmo2"))
    u = graph.blocks[0].unscaled
    assert "residual stream" in u[0].reason and u[0].hint == ""
    assert "did not run" not in graph.describe()  # they ran; they just have no producer
    assert graph.blocks[0].skipped[0] == (", ".join(QKV), u[0].reason)
    with pytest.raises(GraphError) as e:
        discover(tiny_model("olmo2"), strict=True)
    msg = str(e.value)
    assert "\n" not in msg and "model.layers.0" in msg and "self_attn.q_proj" in msg
    assert "residual stream" in msg and "GroupSpec" not in msg  # no GroupSpec can help here


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("name", POST_NORM_NAMES)
def test_post_norm_awq_save_reload_same_logits(name: str, bits: int, tmp_path: Path) -> None:
    pytest.importorskip("cat_kernels")
    from cat_core.awq import quantize
    from cat_core.config import QuantConfig
    from cat_core.io import load_quantized, save_quantized
    from cat_core.nn import QuantLinear, replace_linears

    model = tiny_model(name)
    ids = sample_ids(2, 24, seed=5)
    with torch.no_grad():
        ref = model(ids).logits
    cfg = QuantConfig(bits=bits, group_size=-1, n_grid=5, n_clip_grid=5)  # K = 72 / 100: per-row groups
    res = quantize(model, config=cfg, calib=sample_ids(4, 32, seed=1), progress=False)
    # which groups got which treatment: v->o and up->down searched, q/k/v and gate/up without scales
    kinds = [(r.block, r.fold, r.unscaled) for r in res.report]
    assert kinds == [(b, k, u) for b in (0, 1) for k, u in
                     (("linear", None), ("linear", None), (None, "residual"), (None, "residual"))]
    assert res.scaling_summary().startswith("4 groups searched (folded into: 4 linear), 4 without input scaling")
    assert len(res.tensors) == 2 * 7  # every linear of both blocks is quantized, unscaled ones too
    with torch.no_grad():
        fake = model(ids).logits
    err = _rel(ref, fake)
    assert 1e-4 < err < 1.0, err  # quantized, not destroyed (random weights, one group per row)

    replace_linears(model, res.tensors)
    assert isinstance(model.model.layers[1].self_attn.q_proj, QuantLinear)
    with torch.no_grad():
        packed = model(ids).logits
    assert _rel(fake, packed) < 1e-3  # the kernels compute what the fake-quantized model did
    out = save_quantized(model, tmp_path / "ckpt", progress=False)
    loaded, _ = load_quantized(out, model_kwargs={"attn_implementation": "eager"})
    with torch.no_grad():
        again = loaded(ids).logits
    assert torch.equal(again, packed)
