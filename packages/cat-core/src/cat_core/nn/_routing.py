"""Which path a product with the packed weight takes: the fused kernel or dequantize + matmul,
and whether an eager call may skip the ``cat::gemm`` op's dispatch."""

from __future__ import annotations

import functools
import os

import torch

from cat_core.nn._kernels import _kernels

#: CPU: largest number of rows M (tokens) for which ``cat::gemm`` calls the fused split-K kernel,
#: by activation dtype; above it the op dequantizes the weight once and uses torch's matmul.
#: Measured on both CI machine kinds (2 shared cores, torch 2.13; ms as fused / dequantize+matmul;
#: benchmarks/results/decode_2026-12-07/README.md has the full tables and benchmarks/probes/dense_route.py
#: re-measures them):
#:   float32, Sapphire Rapids (AMX): N=K=2048 4-bit M=128 4.6/5.9, M=512 19.6/16.3;
#:     8192x2048 M=128 19.3/40.0, M=512 74.0/75.4, M=1024 157/135; 1536x576 M=128 1.3/1.3,
#:     M=512 5.0/3.3
#:   float32, AMD EPYC (AVX-512, no AMX): the kernel is ahead of dequantize+matmul at every M up to
#:     512 on the SmolLM2 and 1b-preset shapes, and 1.1-8x ahead of the unquantized matmul on the
#:     1b shapes (benchmarks/gemm_crossover.py)
#:   bfloat16, Sapphire Rapids: AMX makes the dense bf16 matmul 5-10x faster than float32, so the
#:     dense route wins from M=64-128 (N=K=2048: M=64 2.4/3.1, M=128 4.5/2.6)
#: float32 crosses between M=128 and M=1024 depending on the machine and shape: 256 keeps prompts
#: of a few hundred tokens on the kernel, where it never lost by more than 1.2x and often won by
#: 2x. 16-bit activations keep the earlier 48 (bf16 crossover 64-128 with AMX; float16 has no
#: fast dense CPU matmul, so 48 is conservative there). Decode steps (M = batch size) always take
#: the fused kernel. Override with ``CAT_CPU_GEMM_MAX_M`` (read at each call, all dtypes).
#: The kernels' ``amx`` path (AMX-BF16 tiles, exact to float32, from 16 rows) makes the kernel
#: 1.2-2x faster than ``avx512`` at M = 16-256, but SmolLM2's batch-1 prefill at 512 tokens was no
#: faster than the dense route in alternated runs (session 22), so the table stays.
CPU_GEMM_MAX_M = {torch.float32: 256, torch.bfloat16: 48, torch.float16: 48}

#: CUDA: largest M for which the fused kernel runs, by compute-capability major; above it the
#: weight is dequantized once to x's dtype and multiplied by the framework's matmul (cuBLAS), but
#: only when the dequantized weights fit x's dtype (else the kernel keeps the contract that a
#: finite weight never becomes inf). Not measured yet (issue 15: no GPU has run the v2 tiled
#: kernel, which decodes each weight once per 128 rows of x): 128 everywhere is the conservative
#: choice, the M up to which that kernel never re-decodes a weight. Override with the environment
#: variable ``CAT_CUDA_GEMM_MAX_M`` (read at each call) or by editing this table.
CUDA_GEMM_MAX_M = {7: 128, 8: 128, 9: 128, 10: 128, 12: 128}
_CUDA_GEMM_MAX_M_DEFAULT = 128


def _env_max_m(name: str) -> int | None:
    env = os.environ.get(name, "").strip()
    if not env:
        return None
    if not env.isdigit():
        raise ValueError(f"{name} must be a non-negative integer, got {env!r}")
    return int(env)


def cpu_gemm_max_m(dtype: torch.dtype) -> int:
    """Largest M that takes the fused kernel on the CPU for activations of ``dtype``."""
    env = _env_max_m("CAT_CPU_GEMM_MAX_M")
    if env is not None:
        return env
    if dtype not in CPU_GEMM_MAX_M:
        raise ValueError(f"dtype must be one of {list(CPU_GEMM_MAX_M)}, got {dtype}")
    return CPU_GEMM_MAX_M[dtype]


def cuda_gemm_max_m(cc_major: int) -> int:
    """Largest M that takes the fused kernel on a GPU of this compute-capability major."""
    env = _env_max_m("CAT_CUDA_GEMM_MAX_M")
    if env is not None:
        return env
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


def _m_takes_kernel(m: int, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether M rows of x (in ``dtype``) are few enough for the fused kernel on ``device``
    whatever the weights."""
    if device.type == "cuda":
        return m <= cuda_gemm_max_m(_cc_major(device.index or 0))
    return m <= cpu_gemm_max_m(dtype)


def _int8_kernel(bits: int) -> bool:
    """Whether ``int8_activations`` runs integer dot products for ``bits``-bit weights here
    (AVX-512 VNNI: every width; AVX2: 2, 4 and 8 bits). Measured on SPR with VNNI
    (benchmarks/probes/int8_gemv.py, benchmarks/results/decode_2026-12-07/session19/): that kernel
    is ahead of the float32 matmul of the unquantized weight at M up to 1024 on the 1b shapes
    (1.7-2.6x at M >= 128) and level with it on SmolLM2's (0.8-1.2x), and ahead of the
    dequantize + matmul route everywhere, so it takes every M; without it the float kernel
    multiplies the int8-rounded x and the usual crossover applies."""
    return bool(_kernels()._C._int8_kernel(bits))


def _rounds_x(int8_activations: bool, bits: int, m: int, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a product of M rows asked for int8 activations multiplies the int8-rounded x: on
    the CPU, where an integer kernel takes every M, else where M takes the fused kernel anyway
    (longer inputs then take the dense float route unrounded)."""
    return (int8_activations and device.type == "cpu"
            and (_int8_kernel(bits) or _m_takes_kernel(m, device, dtype)))


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
