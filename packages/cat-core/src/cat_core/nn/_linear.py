"""``QuantLinear``: an ``nn.Linear`` whose weight is stored in the ``cat-kernels`` packed format."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cat_core.nn import _routing
from cat_core.nn._kernels import _kernels
from cat_core.nn._ops import _dequantize_op, _gemm_op
from cat_core.quant import QuantizedTensor

#: Activation dtypes the kernels accept (CPU and CUDA). Anything else is an error, not a silent
#: cast: a float64 model would otherwise lose precision without anybody asking for it.
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
    #: CPU only: round x to int8 per 32 columns and take integer dot products (every M takes
    #: the kernel then: at M=128 it is ahead of a float32 matmul on the weights it replaces).
    #: Not part of the checkpoint: a serving choice, set with :func:`set_int8_activations`.
    int8_activations: bool = False

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
        fusion = self.__dict__.get("_fusion")  # set by fuse_shared_inputs
        if fusion is not None:
            y = fusion.rows(self, x)
            if y is not None:
                return y
        if x.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"QuantLinear: activations must be float32, float16 or bfloat16, got {x.dtype}; "
                f"convert the model/input explicitly (e.g. model.to(torch.float32))"
            )
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantLinear: expected last dim {self.in_features}, got input shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        int8_x = _routing._rounds_x(self.int8_activations, self.bits, x2.shape[0], x2.device, x2.dtype)
        if _routing._eager_fast_path(x2):
            pw = self._packed_weight()
            if int8_x or self._fused(x2.shape[0], x2.device, x2.dtype):
                if pw.int8_activations != int8_x:
                    pw.int8_activations = int8_x
                y = pw.gemm(x2.contiguous())
            else:
                y = x2 @ pw.dequantize(x2.dtype).T
        else:
            y = _gemm_op(x2, self.qweight, self.scales, self.qzeros, self.group_size, int8_x)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def _fused(self, m: int, device: torch.device, dtype: torch.dtype) -> bool:
        """Fused kernel (True) or dequantize once + matmul (False) for M rows of x."""
        if _routing._m_takes_kernel(m, device, dtype):
            return True
        if device.type != "cuda":
            return False
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
            c[3][dtype] = _routing._dense_weight_fits(sc, qz, qw.shape[2], dtype)
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
        state.pop("_fusion", None)  # a copy computes alone (its buffers are its own copies)
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


def set_int8_activations(model: nn.Module, on: bool = True) -> int:
    """Round activations to int8 (per 32 columns, scale ``max|x| / 127``, as llama.cpp's Q8_0)
    in every :class:`QuantLinear` of ``model`` (the quantized head included), on the CPU; the
    products then run on integer dot products (AVX-512 VNNI where the CPU has it), faster at
    every batch size and prompt length for a small, measured change in the outputs
    (benchmarks/results/). ``on=False`` restores exact float activations. Returns the number of
    layers set; a model without quantized layers raises ``ValueError``."""
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    if not layers:
        raise ValueError("model: no QuantLinear layers to set int8 activations on (quantize or load it first)")
    for m in layers:
        m.int8_activations = bool(on)
    return len(layers)  # the native decode step reads the flag of its layers at every step
