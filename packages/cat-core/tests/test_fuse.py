"""fuse_shared_inputs: q/k/v and gate/up as one packed weight, bit-identical to the unfused model."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _quantized_models import llama  # noqa: E402

pytest.importorskip("cat_kernels")
from cat_core.awq import rtn_quantize  # noqa: E402
from cat_core.config import QuantConfig  # noqa: E402
from cat_core.decode import cached_forward  # noqa: E402
from cat_core.nn import QuantLinear, cpu_gemm_max_m, fuse_shared_inputs, replace_linears  # noqa: E402
from cat_core.nn._fuse import _one_split  # noqa: E402
from cat_core.quant import quantize_tensor  # noqa: E402


def _quant_model(bits: int = 4, seed: int = 0):
    model = llama(seed, hidden=96, inter=160, vocab=301, positions=512)
    replace_linears(model, rtn_quantize(model, QuantConfig(bits=bits, group_size=32)).tensors)
    return model


def _bytes(model) -> int:
    return sum(b.untyped_storage().nbytes() for b in {b.untyped_storage().data_ptr(): b for b in model.buffers()}.values())


@pytest.mark.parametrize("bits", [4, 3])
def test_fused_model_gives_the_same_logits_bit_for_bit(bits):
    plain = _quant_model(bits)
    fused = copy.deepcopy(plain)
    before = _bytes(fused)
    groups = fuse_shared_inputs(fused)
    names = {tuple(n.rsplit(".", 1)[-1] for n in g) for g in groups}
    assert names == {("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")}
    assert len(groups) == 4  # two blocks
    assert _bytes(fused) == before  # members are views of the fused buffers: nothing added
    assert fuse_shared_inputs(fused) == []
    g = torch.Generator().manual_seed(3)
    # decode steps (fused kernel route) and a prompt longer than the kernel's M (dense route)
    for ids in (torch.randint(0, 301, (1, 5), generator=g), torch.randint(0, 301, (3, 7), generator=g),
                torch.randint(0, 301, (1, cpu_gemm_max_m(torch.float32) + 9), generator=g)):
        with torch.no_grad():
            a, ca = cached_forward(plain, ids)
            b, cb = cached_forward(fused, ids)
            assert torch.equal(a, b)
            for _ in range(4):
                nxt = a[:, -1].argmax(-1, keepdim=True)
                a, ca = cached_forward(plain, nxt, ca)
                b, cb = cached_forward(fused, nxt, cb)
                assert torch.equal(a, b)
    with torch.no_grad():  # bf16 activations, and the generate() path
        assert torch.equal(plain.to(torch.bfloat16)(ids[:, :9]).logits, fused.to(torch.bfloat16)(ids[:, :9]).logits)
        plain.float(), fused.float()
        out_a = plain.generate(ids[:, :4], max_new_tokens=6, do_sample=False)
        out_b = fused.generate(ids[:, :4], max_new_tokens=6, do_sample=False)
    assert torch.equal(out_a, out_b)


def test_fused_product_is_used_and_falls_back_when_buffers_are_replaced(monkeypatch):
    model = _quant_model()
    fuse_shared_inputs(model)
    calls = []
    real = QuantLinear.forward

    def counted(self, x):
        calls.append(self.out_features)
        return real(self, x)

    monkeypatch.setattr(QuantLinear, "forward", counted)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        ref = model(ids).logits
    assert calls.count(96 + 48 + 48) == 2 and calls.count(160 + 160) == 2  # the fused weights ran
    # a member whose buffer is replaced (as a device move does) computes alone, still right
    q = model.model.layers[0].self_attn.q_proj
    q.qweight = q.qweight.clone()
    calls.clear()
    with torch.no_grad():
        again = model(ids).logits
    assert torch.equal(ref, again)
    assert calls[:4] == [96, 48, 48, 96]  # block 0's q, k, v alone, then o
    assert calls.count(96 + 48 + 48) == 1  # block 1 still fused


def _gemm(qts, x):
    mods = [QuantLinear.from_quantized_tensor(qt) for qt in qts]
    return [m(x) for m in mods]


@pytest.mark.parametrize("shapes,k", [((512, 528), 320), ((48, 80, 32), 224), ((1024, 512), 1000)])
def test_one_split_rule_matches_the_kernel(shapes, k):
    """Where _one_split holds for every member and the concatenation, the fused kernel computes
    each member's rows exactly as the member alone (odd K, odd M)."""
    assert all(_one_split(n, k) for n in shapes) and _one_split(sum(shapes), k)
    g = torch.Generator().manual_seed(k)
    ws = [torch.randn(n, k, generator=g) for n in shapes]
    gs = -1 if k == 1000 else 32  # one group a row where 32 does not divide K
    qts = [quantize_tensor(w, bits=4, group_size=gs) for w in ws]
    whole = quantize_tensor(torch.cat(ws), bits=4, group_size=gs)
    for m in (1, 3, 17):
        x = torch.randn(m, k, generator=g)
        parts = _gemm(qts, x)
        fused = QuantLinear.from_quantized_tensor(whole)(x)
        assert torch.equal(torch.cat(parts, dim=1), fused)


def test_weights_split_over_k_are_not_fused():
    """SmolLM2's k/v (192 x 576) are summed in three K splits alone but in one inside q/k/v: the
    rows would differ, so such a group is left unfused."""
    assert not _one_split(192, 576) and _one_split(576 + 2 * 192, 576)
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(192, 576, generator=g) for _ in range(2)]
    qts = [quantize_tensor(w, bits=4, group_size=64) for w in ws]
    whole = quantize_tensor(torch.cat(ws + [torch.randn(576, 576, generator=g)]), bits=4, group_size=64)
    x = torch.randn(1, 576, generator=g)
    fused = QuantLinear.from_quantized_tensor(whole)(x)[:, :384]
    assert not torch.equal(torch.cat(_gemm(qts, x), dim=1), fused)  # why the rule exists
