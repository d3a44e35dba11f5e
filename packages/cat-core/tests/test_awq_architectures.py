"""AWQ end to end on every tiny architecture: every block linear is quantized (GPT-2's Conv1D
included), the model keeps its module types, and the packed layers reproduce the model that
quantize() leaves behind."""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_models import NAMES, sample_ids, tiny_model  # noqa: E402
from cat_core import AWQError, QuantConfig, quantize, replace_linears, rtn_quantize  # noqa: E402
from cat_core.config import matches_any  # noqa: E402
from cat_core.graph import discover, find_blocks  # noqa: E402
from cat_core.moe import unfuse_experts  # noqa: E402
from cat_core.quant import dequantize  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# tiny widths (72, 100, ...) are not multiples of 32: one group per row
CFG = QuantConfig(bits=4, group_size=-1, n_grid=6, n_clip_grid=6, rounding="gptq")


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D"


def _block_layers(model: nn.Module, config: QuantConfig) -> dict[str, type]:
    """Name -> class of every linear-like layer of the decoder blocks that gets quantized."""
    path, _, stack = find_blocks(model)
    out = {}
    for i, block in enumerate(stack):
        for rel, m in block.named_modules():
            full = f"{path}.{i}.{rel}"
            if (isinstance(m, nn.Linear) or _is_conv1d(m)) and not matches_any(full, config.modules_to_not_convert):
                out[full] = type(m)
    return out


def _check(model: nn.Module, tensors: dict, layers: dict[str, type], ids: torch.Tensor) -> None:
    assert set(tensors) == set(layers) and layers
    assert _block_layers(model, CFG) == layers  # same names, same classes: Conv1D stays Conv1D
    for n, qt in tensors.items():  # the model is what gets packed
        w = model.get_submodule(n).weight
        w = w if issubclass(layers[n], nn.Linear) else w.t()
        assert torch.equal(w, dequantize(qt, w.dtype)), n
    packed = copy.deepcopy(model)
    replace_linears(packed, tensors)
    with torch.no_grad():
        want, got = model(ids).logits, packed(ids).logits
    # the kernels dequantize in float16: folded weights of ~100 (OPT's fc1 here) lose ~1e-3
    torch.testing.assert_close(got, want, rtol=0, atol=3e-3 * want.abs().max().item())


@pytest.mark.parametrize("name", NAMES)
def test_quantize_covers_every_block_linear(name):
    model = tiny_model(name)
    unfuse_experts(model)
    layers = _block_layers(model, CFG)
    res = quantize(model, None, CFG, calib=sample_ids(4, 24, seed=1), progress=False)
    _check(model, res.tensors, layers, sample_ids(2, 19, seed=2))


@pytest.mark.parametrize("rounding", ["nearest", "learned"])
def test_gpt2_conv1d_is_quantized_in_its_own_parameters(rounding):
    model = tiny_model("gpt2")
    ids = sample_ids(2, 19, seed=2)
    with torch.no_grad():
        fp = model(ids).logits
    conv = model.transformer.h[1].mlp.c_fc
    weight, bias = conv.weight, conv.bias
    layers = _block_layers(model, CFG)
    assert set(layers.values()) == {type(conv)}
    graph = discover(model)  # of the Conv1D model: quantize() must discover it again
    cfg = dataclasses.replace(CFG, rounding=rounding, learned_round_iters=4, learned_round_batch=2)
    res = quantize(model, None, cfg, calib=sample_ids(4, 24, seed=1), graph=graph, progress=False)
    _check(model, res.tensors, layers, ids)
    # the original parameters hold the result, [in, out] as before
    assert conv is model.transformer.h[1].mlp.c_fc and conv.weight is weight and conv.bias is bias
    assert weight.shape == (72, 100)
    with torch.no_grad():
        out = model(ids).logits
    assert not torch.equal(out, fp)
    assert "8 groups searched" in res.scaling_summary()


def test_gpt2_rtn_quantizes_conv1d_transposed():
    model = tiny_model("gpt2")
    layers = _block_layers(model, CFG)
    before = {n: model.get_submodule(n).weight.detach().clone() for n in layers}
    res = rtn_quantize(model, CFG)
    assert set(res.tensors) == set(layers)
    for n, w in before.items():
        qt = res.tensors[n]
        assert tuple(qt.shape) == (w.shape[1], w.shape[0])  # [out, in]
        assert torch.equal(model.get_submodule(n).weight, dequantize(qt, w.dtype).t())
        assert (model.get_submodule(n).weight - w).abs().max() > 0


def test_nothing_to_quantize_is_refused_before_calibration(monkeypatch):
    import cat_core.calib as calib

    def fail(*a, **k):
        raise AssertionError("calibration ran")

    monkeypatch.setattr(calib, "calibration_samples", fail)
    cfg = dataclasses.replace(CFG, modules_to_not_convert=("*",))
    with pytest.raises(AWQError, match=r"none of the 2 decoder blocks under 'model.layers'.*modules_to_not_convert"):
        quantize(tiny_model("llama"), None, cfg, calib="self", progress=False)


def test_gpt2_conv1d_comes_back_when_quantize_fails(monkeypatch):
    import cat_core.awq as awq

    def boom(*a, **k):
        raise RuntimeError("boom")

    model = tiny_model("gpt2")
    params = {n: p for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in params.items()}
    monkeypatch.setattr(awq, "run_awq", boom)
    with pytest.raises(RuntimeError, match="boom"):
        quantize(model, None, CFG, calib=sample_ids(2, 16), progress=False)
    assert all(_is_conv1d(model.get_submodule(n)) for n in _block_layers(model, CFG))
    assert {n: p for n, p in model.named_parameters()}.keys() == params.keys()
    for n, p in model.named_parameters():
        assert p is params[n] and torch.equal(p, before[n]), n


def test_offloaded_conv1d_is_refused():
    model = tiny_model("gpt2")
    model.transformer.h[1].attn.c_attn.weight = nn.Parameter(torch.empty(72, 216, device="meta"))
    with pytest.raises(AWQError, match=r"transformer\.h\.1\.attn\.c_attn.*offloaded"):
        quantize(model, None, CFG, calib=sample_ids(2, 16), progress=False)
    assert _is_conv1d(model.transformer.h[0].attn.c_attn)
