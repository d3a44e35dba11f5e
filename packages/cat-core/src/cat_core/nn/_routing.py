"""Which path a product with the packed weight takes: the fused kernel or dequantize + matmul,
and whether an eager call may skip the ``cat::gemm`` op's dispatch."""

from __future__ import annotations

import functools
import os

import torch

from cat_core.nn._kernels import _kernels

#: Largest number of rows M (tokens) for which ``cat::gemm`` calls the fused split-K kernel;
#: above it the op dequantizes the weight once and uses torch's matmul.
#: Chosen from a CPU measurement (2 shared cores, AVX-512, torch 2.13; best of 7, ms as
#: fused / dequantize+matmul):
#:   N=K=2048 4-bit G=128 fp32:   M=32 1.7/5.0   M=48 2.6/5.5   M=64 3.4/9.3   M=96 5.4/9.6
#:   N=K=2048 4-bit G=128 bf16:   M=32 2.4/5.0   M=48 3.6/5.1   M=64 4.6/4.8   M=96 6.9/5.2
#:   1536x576 4-bit G=64 fp32:    M=32 0.8/1.6   M=48 0.7/1.3   M=64 1.6/1.7   M=96 1.8/2.1
#:   576x1536 3-bit G=64 fp32:    M=32 1.3/1.7   M=48 1.2/2.1   M=64 1.7/1.6   M=96 2.3/1.7
#:   576x1536 3-bit G=64 bf16:    M=32 0.9/0.8   M=48 2.0/1.4   M=64 2.0/1.0
#: The crossover lies between M=32 (3-bit bf16) and M=96 (4-bit fp32); 48 is in the middle of
#: that range and never more than ~1.5x off the better path. Decode steps (M = batch size)
#: take the fused kernel, long prompts the dense path. A GPU has another crossover (tensor
#: cores); the same op runs there and the constant can be re-measured.
GEMM_MAX_M = 48

#: CUDA: largest M for which the fused kernel runs, by compute-capability major; above it the
#: weight is dequantized once to x's dtype and multiplied by the framework's matmul (cuBLAS), but
#: only when the dequantized weights fit x's dtype (else the kernel keeps the contract that a
#: finite weight never becomes inf). Not measured yet (issue 15: no GPU has run the v2 tiled
#: kernel, which decodes each weight once per 128 rows of x): 128 everywhere is the conservative
#: choice, the M up to which that kernel never re-decodes a weight. Override with the environment
#: variable ``CAT_CUDA_GEMM_MAX_M`` (read at each call) or by editing this table.
CUDA_GEMM_MAX_M = {7: 128, 8: 128, 9: 128, 10: 128, 12: 128}
_CUDA_GEMM_MAX_M_DEFAULT = 128


def cuda_gemm_max_m(cc_major: int) -> int:
    """Largest M that takes the fused kernel on a GPU of this compute-capability major."""
    env = os.environ.get("CAT_CUDA_GEMM_MAX_M", "").strip()
    if env:
        if not env.isdigit():
            raise ValueError(f"CAT_CUDA_GEMM_MAX_M must be a non-negative integer, got {env!r}")
        return int(env)
    return CUDA_GEMM_MAX_M.get(cc_major, _CUDA_GEMM_MAX_M_DEFAULT)


@functools.cache
def _cc_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def _dense_weight_fits(scales: torch.Tensor, qzeros: torch.Tensor | None, bits: int, dtype: torch.dtype) -> bool:
    """Whether every dequantized weight ``(q - z) * s`` is finite in ``dtype``: bounded by
    ``|s| * max(z, 2**bits - 1 - z)`` per (row, group), computed in float64 (one host sync)."""
    n, ng = scales.shape
    qmax = (1 << bits) - 1
    if qzeros is None:
        reach = torch.full((n, ng), float(max(1 << (bits - 1), qmax - (1 << (bits - 1)))), dtype=torch.float64)
    else:
        z = _kernels().unpack_zeros(qzeros.detach().cpu().contiguous(), n, ng, bits).to(torch.float64)
        reach = torch.maximum(z, qmax - z)
    bound = (scales.detach().cpu().to(torch.float64).abs() * reach).max().item() if n * ng else 0.0
    return bound <= torch.finfo(dtype).max


def _m_takes_kernel(m: int, device: torch.device) -> bool:
    """Whether M rows of x are few enough for the fused kernel on ``device`` whatever the weights."""
    if device.type == "cuda":
        return m <= cuda_gemm_max_m(_cc_major(device.index or 0))
    return m <= GEMM_MAX_M


def _eager_fast_path(x: torch.Tensor) -> bool:
    """Whether to call the kernels directly instead of through the ``cat::gemm`` op.

    The op exists for ``torch.compile`` (fake tensors), autograd and dispatcher-level tooling;
    in plain eager inference its dispatch costs several times the arithmetic of a decode-step
    GEMV, so a real CPU/CUDA tensor that needs no gradient goes straight to the kernels (same
    kernels, same results).
    """
    return (
        type(x) is torch.Tensor
        and not (x.requires_grad and torch.is_grad_enabled())
        and x.device.type in ("cpu", "cuda")
        and not torch.compiler.is_compiling()
    )
