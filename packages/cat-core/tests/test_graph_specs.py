"""User-given groups (GroupSpec), errors on blocks discovery cannot handle, find_blocks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_models import sample_ids, tiny_model  # noqa: E402
from cat_core.graph import GraphError, GroupSpec, NormFold, apply_scales, discover, find_blocks  # noqa: E402


class _Block(nn.Module):
    """Its MLP input is sin(norm(x)): no op can absorb 1/s in front of `mlp_out`."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp_in = nn.Linear(d, 2 * d)
        self.mlp_out = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor, **_: object) -> torch.Tensor:
        return x + self.mlp_out(torch.sin(self.mlp_in(self.norm(x))))


class _ToyLM(nn.Module):
    def __init__(self, d: int = 24, vocab: int = 50) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([_Block(d) for _ in range(3)])
        self.head = nn.Linear(d, vocab)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, input_ids: torch.Tensor, **_: object) -> torch.Tensor:
        h = self.embed(input_ids)
        for blk in self.layers:
            h = blk(h)
        return self.head(h)


@pytest.mark.parametrize("strict", [None, True])
def test_unsupported_block_raises_naming_block_and_module(strict) -> None:
    with pytest.raises(GraphError) as e:
        discover(_ToyLM(), strict=strict)
    msg = str(e.value)
    print(msg)
    assert "layers.0" in msg and "_Block" in msg and "mlp_out" in msg and "sin" in msg
    # one line with what to do: a producer the analysis missed could be named
    assert "\n" not in msg and "GroupSpec" in msg
    assert ("strict=False" in msg) == (strict is None)


def test_non_strict_lists_unscaled_consumers_with_reason_and_hint() -> None:
    g = discover(_ToyLM(), strict=False)
    print(g.describe())
    blk = g.blocks[2]
    assert [(x.producer, x.consumers) for x in blk.groups] == [("norm", ("mlp_in",))]
    assert [(u.consumers, u.kind) for u in blk.unscaled] == [(("mlp_out",), "other")]
    assert "sin" in blk.unscaled[0].reason and "GroupSpec" in blk.unscaled[0].hint
    assert [name for name, _ in blk.skipped] == ["mlp_out"]
    assert "did not run" not in g.describe()


def test_quantize_passes_strict_to_discovery() -> None:
    from cat_core.awq import quantize
    from cat_core.config import QuantConfig

    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    cfg = QuantConfig(group_size=-1)
    with pytest.raises(GraphError, match="mlp_out"):
        quantize(_ToyLM(), config=cfg, calib=ids, progress=False)
    lenient = discover(_ToyLM(), strict=False)
    with pytest.raises(GraphError, match="strict"):  # a given graph is checked too
        quantize(_ToyLM(), config=cfg, calib=ids, graph=lenient, strict=True, progress=False)
    res = quantize(_ToyLM(), config=cfg, calib=ids, strict=False, progress=False)
    assert [r.unscaled for r in res.report if r.unscaled] == ["other"] * 3 and len(res.tensors) == 6
    assert "3 without input scaling" in res.scaling_summary()


def test_explicit_groups_replace_discovery() -> None:
    model = tiny_model("llama")
    auto = discover(model).blocks[0].groups
    spec = GroupSpec(
        producer="input_layernorm",
        consumers=("self_attn.[qkv]_proj",),
        inspect="self_attn",
        fold="norm",
    )
    g = discover(model, groups=[spec])
    print(g.describe())
    groups = g.blocks[0].groups
    assert groups == auto  # same group, whether given or discovered
    ids = sample_ids()
    with torch.no_grad():
        ref = model(ids).logits
    for blk in g.blocks:
        for grp in blk.groups:
            apply_scales(blk.module, grp, torch.linspace(0.5, 2.0, grp.channels))
    with torch.no_grad():
        assert ((model(ids).logits - ref).abs().max() / ref.abs().max()) < 1e-4


def test_explicit_linear_group_and_fold_rule_instance() -> None:
    model = tiny_model("opt")
    specs = [
        GroupSpec(producer="fc1", consumers=("fc2",), fold="linear"),
        GroupSpec(
            producer="final_layer_norm",
            consumers=("fc1",),
            fold=NormFold("final_layer_norm", "final_layer_norm.weight", "final_layer_norm.bias"),
        ),
    ]
    g = discover(model, groups=specs).blocks[0].groups
    by_prod = {x.producer: x for x in g}
    assert by_prod["fc1"].consumers == ("fc2",) and by_prod["fc1"].fold.rows == tuple(range(100))
    assert by_prod["final_layer_norm"].inspect == ""


def test_wrong_explicit_group_is_rejected() -> None:
    spec = GroupSpec(
        producer="post_attention_layernorm",
        consumers=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    )
    with pytest.raises(GraphError, match="changes the block output"):
        discover(tiny_model("llama"), groups=[spec])
    with pytest.raises(GraphError, match="matches no"):
        discover(
            tiny_model("llama"),
            groups=[GroupSpec(producer="input_layernorm", consumers=("nope*",))],
        )


def test_find_blocks() -> None:
    path, parent, blocks = find_blocks(tiny_model("mixtral"))
    assert path == "model.layers" and parent.layers is blocks and len(blocks) == 2
    path, parent, blocks = find_blocks(_ToyLM())
    assert path == "layers" and len(blocks) == 3
