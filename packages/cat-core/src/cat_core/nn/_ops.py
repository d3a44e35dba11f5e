"""The ``cat::dequantize`` and ``cat::gemm`` torch custom ops over the packed arrays.

They exist so that a quantized layer works under ``torch.compile`` (fake implementations give the
output shapes without running a kernel), under CUDA graphs and with autograd (a gradient for x,
so that adapters can train on a frozen quantized base).
"""

from __future__ import annotations

import torch

from cat_core.nn import _routing
from cat_core.nn._kernels import _kernels


@torch.library.custom_op("cat::dequantize", mutates_args=())
def _dequantize_op(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor | None,
    group_size: int,
    k: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``W [N, K]`` in ``dtype`` from the packed arrays (one rounding from float32)."""
    return _kernels().dequantize(qweight, scales, qzeros, group_size, k=k, dtype=dtype)


@_dequantize_op.register_fake
def _(qweight, scales, qzeros, group_size, k, dtype):
    return scales.new_empty((scales.shape[0], k), dtype=dtype)


@torch.library.custom_op("cat::gemm", mutates_args=())
def _gemm_op(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor | None,
    group_size: int,
    int8_activations: bool = False,
) -> torch.Tensor:
    """``x [M, K] @ W.T -> [M, N]`` in x's dtype; fused kernel for small M, else dense matmul.
    ``int8_activations`` (CPU): x rounded to int8 per 32 columns, always the fused kernel."""
    ck = _kernels()
    x = x.contiguous()
    if _routing._rounds_x(int8_activations, qweight.shape[2], x.shape[0], x.device, x.dtype):
        return ck.gemm(x, qweight, scales, qzeros, group_size, int8_activations=True)
    fused = _routing._m_takes_kernel(x.shape[0], x.device, x.dtype) or (
        x.device.type == "cuda"
        and (
            torch.cuda.is_current_stream_capturing()  # no host sync while capturing a graph
            or not _routing._dense_weight_fits(scales, qzeros, qweight.shape[2], x.dtype)
        )
    )
    if fused:
        return ck.gemm(x, qweight, scales, qzeros, group_size)
    w = ck.dequantize(qweight, scales, qzeros, group_size, k=x.shape[1], dtype=x.dtype)
    return x @ w.T


@_gemm_op.register_fake
def _(x, qweight, scales, qzeros, group_size, int8_activations=False):
    torch._check(x.dim() == 2, lambda: f"cat::gemm: x must be [M, K], got {x.dim()}-D")
    torch._check(qweight.dim() == 4, lambda: "cat::gemm: qweight must be 4-D packed int32")
    return x.new_empty((x.shape[0], scales.shape[0]))


def _gemm_setup_context(ctx, inputs, output):
    x, qweight, scales, qzeros, group_size = inputs[:5]
    ctx.n_inputs = len(inputs)  # int8_activations may or may not be among them
    ctx.save_for_backward(qweight, scales, qzeros)
    ctx.group_size = group_size
    ctx.k = x.shape[1]
    ctx.x_dtype = x.dtype


def _gemm_backward(ctx, grad):
    # Only x gets a gradient (the weights are integer codes): dx = dy @ W. This lets adapters
    # (LoRA...) train on top of a frozen quantized base.
    qweight, scales, qzeros = ctx.saved_tensors
    w = _dequantize_op(qweight, scales, qzeros, ctx.group_size, ctx.k, ctx.x_dtype)
    return (grad @ w,) + (None,) * (ctx.n_inputs - 1)


_gemm_op.register_autograd(_gemm_backward, setup_context=_gemm_setup_context)
