"""The runtime on a GPU: QuantLinear (eager kernel path and the cat::gemm op), whole models in
fp16/bf16, generate, CUDA graphs and torch.compile. Skipped, with the reason, without CUDA.

Tolerance: the fake-quantized fp16 model and the quantized one use the same weights; the
kernels accumulate in fp32 and round once, torch's fp16 matmul may round differently, so the
logits agree to ~1e-2 of their largest magnitude (asserted: 2e-2 for fp16, 5e-2 for bf16)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

ck = pytest.importorskip("cat_kernels")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device (torch.cuda.is_available() is False)", allow_module_level=True)
if not ck.cuda_available():
    pytest.skip("cat-kernels was built without CUDA or sees no device", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent))
from _quantized_models import llama, rtn_all  # noqa: E402
from _tiny_models import NAMES, sample_ids, tiny_model  # noqa: E402
from cat_core import nn as cnn  # noqa: E402
from cat_core.nn import QuantLinear, cpu_gemm_max_m, replace_linears  # noqa: E402

_DENSE_M = cpu_gemm_max_m(torch.float32)  # above it a float32 CPU product takes dequantize + matmul
from cat_core.quant import dequantize, quantize_tensor  # noqa: E402

pytestmark = pytest.mark.cuda
DEV = torch.device("cuda")
RTOL = {torch.float16: 2e-2, torch.bfloat16: 5e-2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 7, _DENSE_M + 9])
@pytest.mark.parametrize("bits", [3, 4])
def test_quantlinear_eager_and_op_paths(dtype, m, bits):
    w = torch.randn(333, 768, generator=torch.Generator().manual_seed(bits))
    qt = quantize_tensor(w, bits=bits, group_size=128)
    mod = QuantLinear.from_quantized_tensor(qt, torch.randn(333), device=DEV)
    x = torch.randn(m, 768, device=DEV).to(dtype)
    ref = (x.double() @ dequantize(qt, torch.float64).to(DEV).T + mod.bias.double())
    with torch.no_grad():
        assert cnn._eager_fast_path(x)
        fast = mod(x)
    via_op = mod(x.clone().requires_grad_(True)).detach()
    assert fast.dtype == dtype and torch.equal(fast, via_op)
    err = (fast.double() - ref).abs().max() / ref.abs().max()
    assert err < RTOL[dtype], float(err)


@pytest.mark.parametrize("arch", NAMES)
def test_models_fp16_match_fake_quantized(arch):
    model = tiny_model(arch).to(DEV, torch.float16)
    q = rtn_all(model, bits=4, group_size=32)
    ids = sample_ids().to(DEV)
    with torch.no_grad():
        ref = model(ids).logits.float()
        replace_linears(model, q)
        got = model(ids).logits.float()
    assert all(m.qweight.is_cuda for m in model.modules() if isinstance(m, QuantLinear))
    assert (got - ref).abs().max() <= RTOL[torch.float16] * ref.abs().max()


def test_generate_and_cuda_graph_and_compile():
    ref = llama().to(DEV, torch.float16)
    qm = replace_linears(copy.deepcopy(ref), rtn_all(ref, 4, 32))
    ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(0)).to(DEV)
    with torch.no_grad():
        out = qm.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
        assert out.shape == (2, 16)
        lin = next(m for m in qm.modules() if isinstance(m, QuantLinear))
        static_x = torch.randn(1, lin.in_features, device=DEV, dtype=torch.float16)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            lin(static_x)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_y = lin(static_x)
        x2 = torch.randn_like(static_x)
        static_x.copy_(x2)
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, lin(x2))
        compiled = torch.compile(lin, fullgraph=True)
        assert torch.equal(compiled(x2), lin(x2))
