"""AWQ on each compute device: the whole model there, or the model on the CPU with only the block
being searched moved to the device (``quantize(..., device=...)``). The CPU case runs everywhere;
the CUDA case skips, with the reason, without a GPU (``tools/gpu_check.sh`` runs it on one)."""

from __future__ import annotations

import copy

import pytest
import torch

from cat_core.awq import quantize, rtn_quantize
from cat_core.config import QuantConfig
from cat_core.quant import dequantize

HIDDEN, INTER, VOCAB = 96, 160, 101
CFG = QuantConfig(bits=3, group_size=32, n_grid=8, n_clip_grid=6, loss_token_subsample=96)


def _devices() -> list:
    cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)")
    return ["cpu", pytest.param("cuda", marks=[cuda, pytest.mark.cuda])]


def _model() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=3,
                      num_attention_heads=3, num_key_value_heads=1, head_dim=32, max_position_embeddings=64,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a few loud input channels, as in real models
        for layer in model.model.layers:
            layer.input_layernorm.weight[:3] = 25.0
            layer.post_attention_layernorm.weight[5:8] = 25.0
    return model


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, 24), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _err(model, ref, ids) -> float:
    a = model(input_ids=ids.to(model.device)).logits.float().cpu()
    b = ref(input_ids=ids).logits.float()
    return float((a - b).pow(2).mean() / b.pow(2).mean())


@pytest.mark.parametrize("device", _devices())
def test_awq_on_device_whole_model(device):
    ref = _model()
    model = copy.deepcopy(ref).to(device)
    res = quantize(model, None, CFG, calib=_ids(6, 1), progress=False)
    assert len(res.tensors) == 3 * 7
    assert all(t.codes.device.type == "cpu" for t in res.tensors.values())
    for name, qt in res.tensors.items():  # the model holds exactly what the kernels reconstruct
        w = model.get_submodule(name).weight
        assert w.device.type == device
        assert torch.equal(w.cpu(), dequantize(qt, w.dtype))
    rtn = rtn_quantize(copy.deepcopy(ref), CFG).model
    held_out = _ids(4, 99)
    assert _err(model, ref, held_out) < _err(rtn, ref, held_out)


@pytest.mark.parametrize("device", _devices())
def test_awq_moves_one_block_at_a_time(device):
    """Model on the CPU, search on ``device``: at every block call at most one block has weights
    on the device (checked where the device is not the CPU), every weight is back on the CPU afterwards, and the codes are those of the
    whole-model-on-device run (the same arithmetic on the same device)."""
    ref = _model()
    on_device = copy.deepcopy(ref).to(device)
    want = quantize(on_device, None, CFG, calib=_ids(6, 1), progress=False).tensors

    model = copy.deepcopy(ref)
    layers = list(model.model.layers)
    seen: list[int] = []

    def count(module, args, kwargs):
        seen.append(sum(next(b.parameters()).device.type == device for b in layers))

    hooks = [b.register_forward_pre_hook(count, with_kwargs=True) for b in layers]
    try:
        got = quantize(model, None, CFG, calib=_ids(6, 1), device=device, progress=False).tensors
    finally:
        for h in hooks:
            h.remove()
    assert seen
    if device != "cpu":  # (on the CPU every block is "on the device")
        assert max(seen) == 1  # never two blocks there, and the search did run there
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name].codes, want[name].codes), name
        assert torch.equal(got[name].scales, want[name].scales), name
        assert torch.equal(got[name].zeros, want[name].zeros), name
