"""set_int8_activations: every QuantLinear (head included) multiplies x rounded to int8 per 32
columns, through every route (eager kernel, the cat::gemm op, fused groups, the native decode
step), and gives exactly the float results again when turned off."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _quantized_models import llama, rtn_all  # noqa: E402
from _tiny_models import VOCAB, tiny_model  # noqa: E402
from cat_core import set_int8_activations  # noqa: E402
from cat_core.decode import cached_forward  # noqa: E402
from cat_core.native_decode import disable_native_decode, enable_native_decode  # noqa: E402
from cat_core.nn import QuantLinear, fuse_shared_inputs, quantize_head, replace_linears  # noqa: E402
from cat_core.nn._routing import _int8_kernel  # noqa: E402
from cat_core.quant import quantize_tensor  # noqa: E402

import cat_kernels as ck  # noqa: E402


def _layer(n=72, k=320, bits=4, seed=0) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    return QuantLinear.from_quantized_tensor(quantize_tensor(w, bits=bits, group_size=64, sym=False))


def _model(name="llama", bits=4):
    model = tiny_model(name, seed=3)
    replace_linears(model, rtn_all(model, bits=bits, group_size=-1))
    quantize_head(model, 8)
    return model


@pytest.mark.parametrize("m", [1, 5, 600])
def test_layer_uses_the_int8_product(m):
    lin = _layer()
    x = torch.randn(m, 320, generator=torch.Generator().manual_seed(m))
    with torch.no_grad():
        y_float = lin(x)
        lin.int8_activations = True
        y = lin(x)
    args = (lin.qweight, lin.scales, lin.qzeros, 64)
    if m <= 256 or _int8_kernel(4):  # without the integer kernel long inputs take the dense float route
        assert torch.equal(y, ck.gemm(x, *args, int8_activations=True))
        assert not torch.equal(y, y_float)
    else:
        assert torch.equal(y, y_float)
    lin.int8_activations = False
    with torch.no_grad():
        assert torch.equal(lin(x), y_float)


def test_op_route_matches_eager_and_passes_gradients():
    lin = _layer(bits=3)
    lin.int8_activations = True
    x = torch.randn(4, 320, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = lin(x)
    xg = x.clone().requires_grad_(True)  # needs a gradient: the cat::gemm op, not the eager shortcut
    y = lin(xg)
    assert torch.equal(y.detach(), eager)
    y.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_set_and_unset_on_a_model():
    model = _model()
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids).logits
        n = set_int8_activations(model)
        assert n == sum(isinstance(m, QuantLinear) for m in model.modules()) and n > 2
        assert model.get_output_embeddings().int8_activations  # the quantized head too
        q = model(ids).logits
        assert not torch.equal(q, ref)
        # the rounding moves logits of magnitude ~10 by a little, not a lot
        assert (q - ref).abs().max() < 0.05 * ref.abs().max()
        set_int8_activations(model, False)
        assert torch.equal(model(ids).logits, ref)
    with pytest.raises(ValueError, match="no QuantLinear"):
        set_int8_activations(tiny_model("llama", seed=1))


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_native_step_follows_the_flag(name):
    """The native step rounds as the plain path does: the same tokens, and scores far closer to
    the plain path's int8 scores than int8 is to float (not bit-equal: the two paths' norms differ
    by float rounding, so a value on an int8 rounding tie may land on the other side)."""
    model = _model(name)
    ids = torch.randint(3, VOCAB, (1, 7), generator=torch.Generator().manual_seed(4))

    def gen():
        out = model.generate(ids, max_new_tokens=16, attention_mask=torch.ones_like(ids), pad_token_id=0,
                             output_scores=True, return_dict_in_generate=True, do_sample=False)
        return out.sequences, torch.stack(out.scores)

    with torch.no_grad():
        _, plain_float = gen()
        set_int8_activations(model)
        plain_tokens, plain_int8 = gen()
        enable_native_decode(model)
        tokens, native_int8 = gen()
        set_int8_activations(model, False)
        _, native_float = gen()
        disable_native_decode(model)
    assert torch.equal(tokens, plain_tokens)
    rounding = (plain_int8 - plain_float).abs().max()
    assert rounding > 0
    assert (native_int8 - plain_int8).abs().max() < 0.25 * rounding
    torch.testing.assert_close(native_float, plain_float, rtol=1e-4, atol=1e-4)  # and stopped when told


def test_fused_groups_round_alike():
    plain = llama(0, hidden=96, inter=160, vocab=301, positions=512)  # row counts the fusion takes
    replace_linears(plain, rtn_all(plain, bits=4, group_size=32))
    set_int8_activations(plain)
    fused = copy.deepcopy(plain)
    assert len(fuse_shared_inputs(fused)) == 4
    ids = torch.randint(3, 301, (2, 6), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        a, ca = cached_forward(plain, ids)
        b, cb = cached_forward(fused, ids)
        assert torch.equal(a, b)
        nxt = a[:, -1].argmax(-1, keepdim=True)
        assert torch.equal(cached_forward(plain, nxt, ca)[0], cached_forward(fused, nxt, cb)[0])
