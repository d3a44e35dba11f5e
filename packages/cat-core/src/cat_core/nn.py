"""Quantized linear layers backed by the ``cat-kernels`` packed format.

``QuantLinear`` keeps a weight in the layout of ``packages/cat-kernels/docs/format.md`` and runs
``y = x @ W.T + b`` through the ``cat::gemm`` torch custom op, so the module works under
``torch.compile`` and CUDA graphs (the op has a fake/meta implementation) and its result is what
the kernels compute: ``W = float32(q - z) * float32(s)``.

    from cat_core.nn import replace_linears, memory_report
    replace_linears(model, result.tensors)     # {module name: QuantizedTensor}
    model.generate(...)
    print(memory_report(model)["ratio"])
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import nn

from cat_core.quant import QuantizedTensor

__all__ = [
    "QuantLinear", "replace_linears", "memory_report", "GEMM_MAX_M", "CUDA_GEMM_MAX_M", "cuda_gemm_max_m",
    "SUPPORTED_DTYPES", "linear_shape",
]

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

#: Activation dtypes the kernels accept (CPU and CUDA). Anything else is an error, not a silent
#: cast: a float64 model would otherwise lose precision without anybody asking for it.
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _kernels() -> Any:
    try:
        import cat_kernels
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "cat_core.nn needs the cat-kernels package (pip install cat-kernels); "
            f"importing it failed: {e}"
        ) from e
    return cat_kernels


def cuda_gemm_max_m(cc_major: int) -> int:
    """Largest M that takes the fused kernel on a GPU of this compute-capability major."""
    env = os.environ.get("CAT_CUDA_GEMM_MAX_M", "").strip()
    if env:
        if not env.isdigit():
            raise ValueError(f"CAT_CUDA_GEMM_MAX_M must be a non-negative integer, got {env!r}")
        return int(env)
    return CUDA_GEMM_MAX_M.get(cc_major, _CUDA_GEMM_MAX_M_DEFAULT)


@functools.lru_cache(maxsize=None)
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


def _true_k(x_k: int, scales: torch.Tensor, group_size: int) -> int:
    return x_k if group_size == -1 else scales.shape[1] * group_size


# --------------------------------------------------------------------------- custom ops


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
) -> torch.Tensor:
    """``x [M, K] @ W.T -> [M, N]`` in x's dtype; fused kernel for small M, else dense matmul."""
    ck = _kernels()
    x = x.contiguous()
    if x.device.type == "cuda":
        fused = (
            x.shape[0] <= cuda_gemm_max_m(_cc_major(x.device.index or 0))
            or torch.cuda.is_current_stream_capturing()  # no host sync while capturing a graph
            or not _dense_weight_fits(scales, qzeros, qweight.shape[2], x.dtype)
        )
    else:
        fused = x.shape[0] <= GEMM_MAX_M
    if fused:
        return ck.gemm(x, qweight, scales, qzeros, group_size)
    w = ck.dequantize(qweight, scales, qzeros, group_size, k=x.shape[1], dtype=x.dtype)
    return x @ w.T


@_gemm_op.register_fake
def _(x, qweight, scales, qzeros, group_size):
    torch._check(x.dim() == 2, lambda: f"cat::gemm: x must be [M, K], got {x.dim()}-D")
    torch._check(qweight.dim() == 4, lambda: "cat::gemm: qweight must be 4-D packed int32")
    return x.new_empty((x.shape[0], scales.shape[0]))


def _gemm_setup_context(ctx, inputs, output):
    x, qweight, scales, qzeros, group_size = inputs
    ctx.save_for_backward(qweight, scales, qzeros)
    ctx.group_size = group_size
    ctx.k = x.shape[1]
    ctx.x_dtype = x.dtype


def _gemm_backward(ctx, grad):
    # Only x gets a gradient (the weights are integer codes): dx = dy @ W. This lets adapters
    # (LoRA...) train on top of a frozen quantized base.
    qweight, scales, qzeros = ctx.saved_tensors
    w = _dequantize_op(qweight, scales, qzeros, ctx.group_size, ctx.k, ctx.x_dtype)
    return grad @ w, None, None, None, None


_gemm_op.register_autograd(_gemm_backward, setup_context=_gemm_setup_context)


# --------------------------------------------------------------------------- eager path


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


# --------------------------------------------------------------------------- module


def _packed_shape(n: int, k: int, bits: int) -> tuple[int, int, int, int]:
    return (-(-n // 16), -(-k // 32), bits, 16)


def _zeros_shape(n: int, n_groups: int, bits: int) -> tuple[int, int, int]:
    return (-(-n // 16), -(-(n_groups * bits) // 32), 16)


class QuantLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` stored packed (``bits`` in {2, 3, 4, 8}).

    Buffers (the state dict of a quantized checkpoint): ``qweight`` int32
    ``[ceil(N/16), ceil(K/32), bits, 16]``; ``scales`` ``[N, K/G]`` (float16, bfloat16 or
    float32); ``qzeros`` int32 ``[ceil(N/16), ceil((K/G)*bits/32), 16]`` for asymmetric weights
    (absent when symmetric); ``bias`` ``[N]`` when present.

    ``model.to(dtype)`` converts the bias but never the scales: re-rounding them would change the
    weights. Device moves apply to every buffer.
    """

    qzeros: torch.Tensor | None
    bias: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        *,
        sym: bool = False,
        bias: bool = False,
        scale_dtype: torch.dtype = torch.float16,
        bias_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if bits not in (2, 3, 4, 8):
            raise ValueError(f"bits must be 2, 3, 4 or 8, got {bits!r}")
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"in_features and out_features must be positive, got {in_features}, {out_features}")
        if group_size != -1 and (group_size <= 0 or group_size % 32 or in_features % group_size):
            raise ValueError(
                f"group_size must be -1 or a multiple of 32 dividing in_features={in_features}, got {group_size}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        self.sym = sym
        n_groups = 1 if group_size == -1 else in_features // group_size
        i32 = dict(dtype=torch.int32, device=device)
        self.register_buffer("qweight", torch.zeros(_packed_shape(out_features, in_features, bits), **i32))
        self.register_buffer("scales", torch.zeros(out_features, n_groups, dtype=scale_dtype, device=device))
        if sym:
            self.register_buffer("qzeros", None)
        else:
            self.register_buffer("qzeros", torch.zeros(_zeros_shape(out_features, n_groups, bits), **i32))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.register_buffer("bias", None)

    @property
    def n_groups(self) -> int:
        return self.scales.shape[1]

    @classmethod
    def from_quantized_tensor(
        cls, qt: QuantizedTensor, bias: torch.Tensor | None = None, *, device: torch.device | str | None = None
    ) -> QuantLinear:
        """Pack ``qt`` (codes ``[N, K]``); ``bias`` ``[N]`` keeps its dtype. ``device``: where the
        buffers live (default: where ``qt`` is)."""
        ck = _kernels()
        n, k = qt.shape
        device = torch.device(device) if device is not None else qt.codes.device
        if bias is not None and tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape [{n}] (out_features), got {tuple(bias.shape)}")
        mod = cls(
            k, n, qt.bits, qt.group_size, sym=qt.zeros is None, bias=bias is not None,
            scale_dtype=qt.scales.dtype, bias_dtype=bias.dtype if bias is not None else torch.float32,
            device="meta",
        )
        if tuple(qt.scales.shape) != tuple(mod.scales.shape):
            raise ValueError(f"scales must have shape {tuple(mod.scales.shape)}, got {tuple(qt.scales.shape)}")
        # Pack on the CPU (always available), then move: the kernels' CUDA pack is not needed here.
        mod.qweight = ck.pack(qt.codes.detach().to("cpu", torch.uint8).contiguous(), qt.bits).to(device)
        mod.scales = qt.scales.detach().to(device).contiguous().clone()
        if qt.zeros is not None:
            mod.qzeros = ck.pack_zeros(qt.zeros.detach().to("cpu", torch.uint8).contiguous(), qt.bits).to(device)
        if bias is not None:
            mod.bias = bias.detach().to(device).clone()
        return mod

    def to_quantized_tensor(self) -> QuantizedTensor:
        """The codes, scales and zero points (unpacked, on the CPU) of this layer."""
        ck = _kernels()
        n, k = self.out_features, self.in_features
        codes = ck.unpack(self.qweight.cpu().contiguous(), n, k)
        zeros = (None if self.qzeros is None
                 else ck.unpack_zeros(self.qzeros.cpu().contiguous(), n, self.n_groups, self.bits))
        return QuantizedTensor(codes=codes, scales=self.scales.detach().cpu().clone(), zeros=zeros,
                               bits=self.bits, group_size=self.group_size)

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense ``[N, K]`` weight the kernels use."""
        return _dequantize_op(self.qweight, self.scales, self.qzeros, self.group_size, self.in_features, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"QuantLinear: activations must be float32, float16 or bfloat16, got {x.dtype}; "
                f"convert the model/input explicitly (e.g. model.to(torch.float32))"
            )
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantLinear: expected last dim {self.in_features}, got input shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if _eager_fast_path(x2):
            pw = self._packed_weight()
            if self._fused(x2.shape[0], x2.device, x2.dtype):
                y = pw.gemm(x2.contiguous())
            else:
                y = x2 @ pw.dequantize(x2.dtype).T
        else:
            y = _gemm_op(x2, self.qweight, self.scales, self.qzeros, self.group_size)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def _fused(self, m: int, device: torch.device, dtype: torch.dtype) -> bool:
        """Fused kernel (True) or dequantize once + matmul (False) for M rows of x."""
        if device.type != "cuda":
            return m <= GEMM_MAX_M
        if m <= cuda_gemm_max_m(_cc_major(device.index or 0)):
            return True
        # The dense route rounds W to x's dtype: taken only when no weight overflows there.
        # Cached per (buffers, dtype); computing it syncs once, so never while capturing a graph.
        qw, sc, qz = self._buffers["qweight"], self._buffers["scales"], self._buffers["qzeros"]
        c = self.__dict__.get("_fits_cache")
        if c is None or c[0] is not sc or c[1] is not qz or c[2] is not qw:
            c = (sc, qz, qw, {})
            self.__dict__["_fits_cache"] = c
        if dtype not in c[3]:
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                return True
            c[3][dtype] = _dense_weight_fits(sc, qz, qw.shape[2], dtype)
        return not c[3][dtype]

    def _packed_weight(self) -> Any:
        # The kernels' validated view of the three buffers, rebuilt whenever one of them is
        # replaced (device moves, assignment); in-place updates (load_state_dict) need no rebuild
        # because the view reads the buffers' memory on every call.
        qw, sc, qz = self._buffers["qweight"], self._buffers["scales"], self._buffers["qzeros"]
        c = self.__dict__.get("_pw_cache")
        if c is None or c[0] is not qw or c[1] is not sc or c[2] is not qz:
            pw = _kernels().PackedWeight(qw, sc, qz, self.group_size, k=self.in_features)
            self.__dict__["_pw_cache"] = (qw, sc, qz, pw)
            return pw
        return c[3]

    def __getstate__(self) -> dict[str, Any]:
        # The native view cannot be pickled or deep-copied; it is rebuilt on first use.
        state = self.__dict__.copy()
        state.pop("_pw_cache", None)
        state.pop("_fits_cache", None)
        return state

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # Let device moves through but keep the scales' storage dtype: model.half()/.to(bf16)
        # would otherwise re-round float16 scales to bfloat16 and change every weight.
        scales = self._buffers["scales"]
        super()._apply(fn, recurse)
        moved = self._buffers["scales"]
        if moved is not None and scales is not None and moved.dtype != scales.dtype:
            self._buffers["scales"] = scales.to(device=moved.device)
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, sym={self.sym}, bias={self.bias is not None}, "
            f"scale_dtype={str(self.scales.dtype).removeprefix('torch.')}"
        )


# --------------------------------------------------------------------------- model surgery


def _is_conv1d(mod: nn.Module) -> bool:
    # transformers' GPT-2 Conv1D (weight stored transposed, [K, N]); matched by class name so
    # that this module does not import transformers.
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and getattr(mod, "weight", None) is not None


def linear_shape(mod: nn.Module) -> tuple[int, int] | None:
    """``(out_features, in_features)`` of a layer :func:`replace_linears` can replace (an
    ``nn.Linear`` or a GPT-2 ``Conv1D``, whose weight is stored ``[in, out]``), else None."""
    if isinstance(mod, nn.Linear):
        return mod.out_features, mod.in_features
    if _is_conv1d(mod):
        k, n = mod.weight.shape
        return n, k
    return None


def _module_at(model: nn.Module, name: str) -> nn.Module | None:
    """The submodule at dotted ``name``, or None when there is none."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at dotted ``name`` (its parent must exist)."""
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attr, new)


def replace_linears(model: nn.Module, quantized: dict[str, QuantizedTensor]) -> nn.Module:
    """Swap each named ``nn.Linear`` (or GPT-2 ``Conv1D``) of ``model`` for a :class:`QuantLinear`.

    ``quantized[name]`` holds ``[N, K]`` = (out_features, in_features) codes (a Conv1D's
    weight ``[K, N]`` is quantized transposed). The new module lands on the device of the old
    weight and keeps its bias. Every name is checked before anything is replaced, so a bad entry
    leaves the model untouched. Returns ``model`` (changed in place).
    """
    plans: list[tuple[str, nn.Module, QuantizedTensor]] = []
    for name, qt in quantized.items():
        mod = _module_at(model, name)
        if mod is None:
            raise ValueError(f"replace_linears: model has no module named {name!r}")
        shape = linear_shape(mod)
        if shape is None:
            raise ValueError(
                f"replace_linears: {name!r} is a {type(mod).__name__}, not an nn.Linear or Conv1D"
            )
        if tuple(qt.shape) != shape:
            raise ValueError(
                f"replace_linears: {name!r} has weight [out, in] = {list(shape)} but the quantized "
                f"tensor has shape {list(qt.shape)}"
            )
        plans.append((name, mod, qt))
    for name, mod, qt in plans:
        device = mod.weight.device
        bias = mod.bias.detach() if getattr(mod, "bias", None) is not None else None
        if device.type == "meta":
            # offloaded by accelerate (cpu/disk): the packed layer is a quarter of the size and
            # lives where the layer computes; the bias comes from the offload store
            from cat_core._offload import execution_device, offloaded_tensor

            device = execution_device(mod)
            if bias is not None:
                bias = offloaded_tensor(model, f"{name}.bias")
                if bias is None:
                    raise ValueError(f"replace_linears: the bias of {name!r} is on the meta device and "
                                     "not offloaded by accelerate: the model is incomplete")
        _set_module(model, name, QuantLinear.from_quantized_tensor(qt, bias, device=device))
    return model


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def memory_report(model: nn.Module) -> dict[str, Any]:
    """Bytes of every :class:`QuantLinear` vs the same weight in float16.

    Returns ``{"layers": {name: {"bytes", "fp16_bytes", "ratio", "bits_per_weight"}},
    "bytes", "fp16_bytes", "ratio", "bits_per_weight"}`` where ``bytes`` counts
    qweight + scales + qzeros (not the bias, which the fp16 layer has too) and ``fp16_bytes`` is
    ``N * K * 2``. Whole-model numbers sum over the quantized linears only.
    """
    layers: dict[str, dict[str, float]] = {}
    tot = tot16 = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, QuantLinear):
            continue
        b = _nbytes(mod.qweight) + _nbytes(mod.scales) + _nbytes(mod.qzeros)
        b16 = mod.out_features * mod.in_features * 2
        w = mod.out_features * mod.in_features
        layers[name] = {"bytes": b, "fp16_bytes": b16, "ratio": b / b16, "bits_per_weight": 8 * b / w}
        tot += b
        tot16 += b16
    return {
        "layers": layers,
        "bytes": tot,
        "fp16_bytes": tot16,
        "ratio": tot / tot16 if tot16 else float("nan"),
        "bits_per_weight": 16 * tot / tot16 if tot16 else float("nan"),
    }
