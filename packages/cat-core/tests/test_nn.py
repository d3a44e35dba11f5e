"""QuantLinear, the cat::gemm custom op, replace_linears and memory_report.

Tolerances: the kernels and the fake-quantized model use the same weights bit for bit
(``float32(q - z) * float32(s)``); only the summation order differs, so fp32 outputs agree to
~1e-6 relative per layer and model logits to < 1e-4 relative (asserted: 1e-4 of max |logit|).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("cat_kernels")
sys.path.insert(0, str(Path(__file__).parent))
from _quantized_models import llama, rtn_all  # noqa: E402
from _tiny_models import NAMES, sample_ids, tiny_model  # noqa: E402
from cat_core.nn import QuantLinear, cpu_gemm_max_m, memory_report, replace_linears  # noqa: E402

_DENSE_M = cpu_gemm_max_m(torch.float32)  # above it a float32 CPU product takes dequantize + matmul
from cat_core.quant import dequantize, quantize_tensor  # noqa: E402

LOGIT_RTOL = 1e-4


def _layer(n=40, k=64, bits=4, gs=32, sym=False, bias=True, seed=0, scale_dtype="float16"):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    qt = quantize_tensor(w, bits=bits, group_size=gs, sym=sym, scale_dtype=scale_dtype)
    b = torch.randn(n, generator=g) if bias else None
    return qt, b, QuantLinear.from_quantized_tensor(qt, b)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("gs", [32, -1])
@pytest.mark.parametrize("m", [3, _DENSE_M + 5])  # fused kernel and dequantize+matmul paths
def test_quantlinear_matches_dequantized(bits, sym, gs, m):
    qt, b, mod = _layer(bits=bits, gs=gs, sym=sym)
    x = torch.randn(2, m, 64, generator=torch.Generator().manual_seed(bits))  # leading dims flattened
    w = dequantize(qt)
    ref = x.double() @ w.double().T + b.double()
    y = mod(x)
    assert y.shape == (2, m, 40) and y.dtype == torch.float32
    # float32 accumulation in any order: |error| <= K * 2**-24 * sum_k |x_k w_k| (+ the bias add).
    # 4x that: the CPU kernel was measured at 2.2x on 2-bit sym / group -1 (reported to the
    # kernels side); a wiring error (wrong code, scale or zero) is ~|x_k| * |s|, far above.
    bound = 4 * (64 * 2.0**-24 * (x.double().abs() @ w.double().abs().T) + 2.0**-24 * ref.abs())
    assert ((y.double() - ref).abs() <= bound).all()
    # codes survive pack/unpack
    back = mod.to_quantized_tensor()
    assert torch.equal(back.codes, qt.codes) and torch.equal(back.scales, qt.scales)
    assert (back.zeros is None) == sym and (sym or torch.equal(back.zeros, qt.zeros))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_activations(dtype):
    qt, b, mod = _layer()
    x = torch.randn(5, 64)
    y = mod(x.to(dtype))
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), x @ dequantize(qt).T + b, rtol=2e-2, atol=5e-2)


def test_unsupported_dtype_is_a_clear_error():
    _, _, mod = _layer()
    with pytest.raises(TypeError, match="float32, float16 or bfloat16.*float64"):
        mod(torch.randn(2, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected last dim 64"):
        mod(torch.randn(2, 63))


def test_opcheck():
    ops = torch.ops.cat
    for bits, sym, gs, m, dt in [(4, False, 32, 3, torch.float32), (3, True, -1, _DENSE_M + 1, torch.float32),
                                 (4, False, 32, 2, torch.bfloat16)]:
        qt, _, mod = _layer(bits=bits, sym=sym, gs=gs)
        x = torch.randn(m, 64, dtype=dt)
        torch.library.opcheck(ops.gemm.default, (x, mod.qweight, mod.scales, mod.qzeros, gs))
        xg = torch.randn(m, 64, dtype=dt, requires_grad=True)
        torch.library.opcheck(ops.gemm.default, (xg, mod.qweight, mod.scales, mod.qzeros, gs))
        torch.library.opcheck(ops.dequantize.default, (mod.qweight, mod.scales, mod.qzeros, gs, 64, dt))


def test_meta_shapes():
    _, _, mod = _layer()
    mod = mod.to("meta")
    y = mod(torch.empty(3, 7, 64, device="meta", dtype=torch.bfloat16))
    assert y.shape == (3, 7, 40) and y.dtype == torch.bfloat16 and y.is_meta


def test_backward_gives_input_gradient():
    qt, b, mod = _layer()
    x = torch.randn(4, 64, requires_grad=True)
    mod(x).square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    (x2 @ dequantize(qt).T + b).square().sum().backward()
    # grad_x = 2 y W sums 40 terms of both signs, so a single element can lose most of its
    # relative precision to cancellation; bound the error by the gradient's scale instead
    # (a wiring mistake is off by O(max|grad|), three orders above this bound).
    scale = float(x2.grad.abs().max())
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4 * scale)


def test_torch_compile_fullgraph():
    qt, b, mod = _layer()
    torch._dynamo.reset()
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    for m in (2, _DENSE_M + 3):
        x = torch.randn(m, 64)
        torch.testing.assert_close(compiled(x), mod(x))


def test_dtype_conversion_keeps_scale_dtype():
    _, _, mod = _layer(scale_dtype="float16")
    s = mod.scales.clone()
    mod.to(torch.bfloat16)
    assert mod.scales.dtype == torch.float16 and torch.equal(mod.scales, s)
    assert mod.bias.dtype == torch.bfloat16 and mod.qweight.dtype == torch.int32
    assert mod(torch.randn(2, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_replace_linears_rejects_bad_entries_without_touching_the_model():
    model = llama()
    q = rtn_all(model, 4, 32)
    bad = dict(q)
    bad["model.layers.0.mlp.nope"] = q["model.layers.0.mlp.up_proj"]
    with pytest.raises(ValueError, match="no module named 'model.layers.0.mlp.nope'"):
        replace_linears(model, bad)
    with pytest.raises(ValueError, match="not an nn.Linear"):
        replace_linears(model, {"model.norm": q["model.layers.0.mlp.up_proj"]})
    with pytest.raises(ValueError, match=r"weight \[out, in\] = \[256, 128\]"):
        replace_linears(model, {"model.layers.0.mlp.up_proj": q["model.layers.0.mlp.down_proj"]})
    assert not any(isinstance(m, QuantLinear) for m in model.modules())


@pytest.mark.parametrize("arch", NAMES)
def test_quantized_logits_match_fake_quantized(arch):
    """Every linear except lm_head (fused 3-D MoE expert tensors are not nn.Linear and stay
    unquantized)."""
    model = tiny_model(arch)
    q = rtn_all(model, bits=4, group_size=32)
    ids = sample_ids()
    with torch.no_grad():
        ref = model(ids).logits
        replace_linears(model, q)
        got = model(ids).logits
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == len(q) > 0
    assert (got - ref).abs().max() <= LOGIT_RTOL * ref.abs().max()


def _pair():
    ref = llama()
    q = rtn_all(ref, 4, 32)
    import copy

    qm = replace_linears(copy.deepcopy(ref), q)
    return ref, qm


def test_generate_greedy_sampling_and_left_padding():
    ref, qm = _pair()
    ids = torch.randint(3, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    kw = dict(max_new_tokens=12, pad_token_id=0)
    with torch.no_grad():
        # greedy with KV cache (M = 1 per decode step: fused kernel; prompt: same)
        assert torch.equal(qm.generate(ids, do_sample=False, **kw), ref.generate(ids, do_sample=False, **kw))
        # sampling: same seed -> same tokens (logits differ by < 1e-4)
        outs = []
        for m in (qm, ref):
            torch.manual_seed(123)
            outs.append(m.generate(ids, do_sample=True, top_k=0, temperature=1.0, **kw))
        assert torch.equal(*outs)
        # batch with left padding == each prompt alone
        a = torch.randint(3, 128, (1, 4), generator=torch.Generator().manual_seed(1))
        b = torch.randint(3, 128, (1, 7), generator=torch.Generator().manual_seed(2))
        batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), a], 1), b])
        mask = (torch.arange(7) >= torch.tensor([[3], [0]])).long()
        out = qm.generate(batch, attention_mask=mask, do_sample=False, **kw)
        assert torch.equal(out[0, 7:], qm.generate(a, do_sample=False, **kw)[0, 4:])
        assert torch.equal(out[1, 7:], qm.generate(b, do_sample=False, **kw)[0, 7:])


def test_accelerate_offload_and_to():
    accelerate = pytest.importorskip("accelerate")
    _, qm = _pair()
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = qm(ids).logits
        # buffers go to meta and are streamed back by accelerate's hooks at every forward
        off = accelerate.cpu_offload(qm, execution_device="cpu")
        torch.testing.assert_close(off(ids).logits, ref, rtol=0, atol=0)
        accelerate.hooks.remove_hook_from_submodules(off)
    _, qm2 = _pair()
    qm2 = accelerate.dispatch_model(qm2, device_map={"": "cpu"})
    with torch.no_grad():
        torch.testing.assert_close(qm2.to("cpu")(ids).logits, ref, rtol=0, atol=0)


@pytest.mark.parametrize("group_size", [128, 64])
def test_memory_ratio_3bit(group_size):
    # realistic K (1024, 2048): the packed zero points are padded to 32 groups per row, which
    # only matters for tiny K
    model = llama(hidden=1024, inter=2048, vocab=64)
    replace_linears(model, rtn_all(model, bits=3, group_size=group_size))
    rep = memory_report(model)
    per = {n.split(".")[-1]: round(v["ratio"], 4) for n, v in rep["layers"].items()}
    print(f"3-bit g{group_size}: model ratio {rep['ratio']:.4f} ({rep['bits_per_weight']:.3f} bits/weight); {per}")
    assert rep["ratio"] <= 0.21
    assert all(v["ratio"] <= 0.21 for v in rep["layers"].values())
    assert rep["bytes"] == sum(v["bytes"] for v in rep["layers"].values())


# --------------------------------------------------------------------------- eager fast path


@pytest.mark.parametrize("m", [1, 5, _DENSE_M + 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_path_equals_the_custom_op(m, dtype):
    # Plain inference calls the kernels directly; with a gradient to track it goes through the
    # cat::gemm op. Both must give the same bits.
    from cat_core import nn as cnn

    _, _, mod = _layer(n=37, k=96, bits=3, gs=32)
    x = torch.randn(m, 96).to(dtype)
    with torch.no_grad():
        assert cnn._eager_fast_path(x)
        fast = mod(x)
    xg = x.clone().requires_grad_(True)
    assert not cnn._eager_fast_path(xg)
    via_op = mod(xg)
    assert torch.equal(fast, via_op.detach())


def test_eager_path_follows_buffer_changes():
    import copy

    qt, b, mod = _layer(n=24, k=64, bits=4, gs=32)
    x = torch.randn(3, 64)
    with torch.no_grad():
        y0 = mod(x)
        # load_state_dict copies in place: same storage, new values, seen without a rebuild
        qt2, b2, other = _layer(n=24, k=64, bits=4, gs=32, seed=5)
        mod.load_state_dict(other.state_dict())
        assert torch.equal(mod(x), other(x)) and not torch.equal(mod(x), y0)
        # buffers replaced (a dtype/device round trip makes new tensors): rebuilt
        mod.scales = mod.scales.clone() * 2
        assert torch.allclose(mod(x) - mod.bias, 2 * (other(x) - other.bias), rtol=1e-5, atol=1e-5)
        # deepcopy / pickling drop the native view and rebuild it
        dup = copy.deepcopy(mod)
        assert torch.equal(dup(x), mod(x))
        import pickle

        assert torch.equal(pickle.loads(pickle.dumps(mod))(x), mod(x))
