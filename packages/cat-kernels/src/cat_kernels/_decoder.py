"""A whole decoder step of a Llama-family model in one native call (CPU).

A decode step runs a few hundred small products; driven one by one from Python (or through a
framework's modules) the calls cost several times what reading the weights does. :class:`Decoder`
holds a model's packed weights and norms and runs the step natively: norms, the seven linears of
every layer, rotary embedding, attention over a caller-owned KV cache and the MLP. The caller does
the embedding lookup before and the output head after (both are one product each).

Covered: pre-norm decoders with RMSNorm, rotary embedding over the whole head, grouped-query
attention without a sliding window, optional biases on any linear, optional per-head q/k RMSNorm
(Qwen3), SiLU-gated MLP (Llama, Mistral, Qwen2, Qwen3 and their relatives).
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from . import _C
from ._arrays import _inspect
from ._weight import PackedWeight

_LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


class Decoder:
    """The layers of one model over :class:`PackedWeight` linears, for decode steps of one or more
    sequences sharing cache indices (left padding through ``step``'s ``starts``).

    Args:
        hidden, heads, kv_heads, head_dim, intermediate: the model's sizes (``heads`` a multiple
            of ``kv_heads``; ``head_dim`` even).
        eps: RMSNorm epsilon. attn_scale: the factor on q.k (usually ``head_dim ** -0.5``).
        inv_freq: float32 ``[head_dim / 2]``, the rotary frequencies (after any rope scaling).
        final_norm: float32 ``[hidden]``, the norm weight applied before the output head.
        rope_scale: the factor on cos/sin (transformers' ``attention_scaling``; 1 for most).
        int8_activations: the linears' products with x rounded to int8 (see
            :func:`cat_kernels.gemm`); also a settable attribute. Attention, norms and the
            residual stream stay float32.

    All arrays are float32 CPU arrays passed by DLPack (numpy, torch, ...) and referenced, not
    copied: the decoder keeps them alive.

    Raises:
        ValueError: sizes that do not fit together, naming the argument.
    """

    __slots__ = ("_d", "hidden", "kv_heads", "head_dim")

    def __init__(self, *, hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int,
                 eps: float, attn_scale: float, inv_freq: Any, final_norm: Any, rope_scale: float = 1.0,
                 int8_activations: bool = False):
        self._d = _C._Decoder(int(hidden), int(heads), int(kv_heads), int(head_dim), int(intermediate),
                              float(eps), float(attn_scale), float(rope_scale), inv_freq, final_norm)
        self._d.int8_activations = bool(int8_activations)
        self.hidden, self.kv_heads, self.head_dim = int(hidden), int(kv_heads), int(head_dim)

    @property
    def n_layers(self) -> int:
        return int(self._d.n_layers)

    @property
    def int8_activations(self) -> bool:
        return bool(self._d.int8_activations)

    @int8_activations.setter
    def int8_activations(self, on: bool) -> None:
        self._d.int8_activations = bool(on)

    def add_layer(self, *, in_norm: Any, post_norm: Any, q: PackedWeight, k: PackedWeight, v: PackedWeight,
                  o: PackedWeight, gate: PackedWeight, up: PackedWeight, down: PackedWeight,
                  q_norm: Any = None, k_norm: Any = None, biases: Optional[dict[str, Any]] = None) -> None:
        """Append a layer: its two RMSNorm weights, its seven linears (CPU :class:`PackedWeight`,
        shapes checked against the sizes), optional q/k norms ``[head_dim]`` and optional biases
        (``{"q": array [N], ...}``, keys among q, k, v, o, gate, up, down)."""
        given = dict(q=q, k=k, v=v, o=o, gate=gate, up=up, down=down)
        for name, w in given.items():
            if not isinstance(w, PackedWeight):
                raise TypeError(f"{name}: expected a cat_kernels.PackedWeight, got {type(w).__name__}")
        biases = dict(biases or {})
        unknown = set(biases) - set(_LINEARS)
        if unknown:
            raise ValueError(f"biases: unknown linear(s) {sorted(unknown)}; expected among {list(_LINEARS)}")
        self._d.add_layer(in_norm, post_norm, q_norm, k_norm, [given[n]._w for n in _LINEARS],
                          [biases.get(n) for n in _LINEARS])

    def kv_shape(self, capacity: int, batch: int = 1) -> tuple[int, int, int, int, int, int]:
        """Shape of a KV cache holding ``capacity`` positions of ``batch`` sequences: ``[layers, 2,
        batch, kv_heads, capacity, head_dim]`` float32 (keys at ``[:, 0]``, values at ``[:, 1]``,
        rotary already applied)."""
        return (self.n_layers, 2, int(batch), self.kv_heads, int(capacity), self.head_dim)

    def step(self, x: Any, pos: int, kv: Any, out: Any, starts: Any = None) -> Any:
        """Run ``x`` (float32 ``[batch, M, hidden]``: each sequence's embeddings of its tokens at
        positions ``pos .. pos + M - 1``) through every layer, appending their keys and values to
        ``kv`` (positions below ``pos`` must hold the earlier tokens'), and write each sequence's
        final-normed hidden state of its last token to ``out`` (float32 ``[batch, hidden]``).
        Returns ``out``.

        ``starts`` (int64 ``[batch]``, optional): sequence ``b``'s first valid cache index, for
        left-padded batches: its tokens attend to cache indices ``starts[b] .. pos + i`` only and
        are rotated as positions ``pos + i - starts[b]``; each below ``pos + M`` (rows before it are
        padding and attend to nothing).

        Raises:
            ValueError / TypeError: wrong shape, dtype or device, or a cache too short for
                ``pos + M`` positions, naming the argument.
        """
        torch = sys.modules.get("torch")
        if torch is not None and type(x) is torch.Tensor and type(kv) is torch.Tensor and type(out) is torch.Tensor:
            if starts is None or type(starts) is torch.Tensor:
                self._step_torch(torch, x, int(pos), kv, out, starts)
                return out
        for name, a in (("x", x), ("kv", kv), ("out", out)) + ((("starts", starts),) if starts is not None else ()):
            _inspect(a, name)  # a clear error for non-arrays before the native checks
        self._d.step(x, int(pos), kv, out, starts)
        return out

    def _step_torch(self, torch: Any, x: Any, pos: int, kv: Any, out: Any, starts: Any) -> None:
        # Attribute checks instead of a DLPack export per call: a step must cost microseconds.
        for name, a in (("x", x), ("kv", kv), ("out", out)):
            if a.dtype != torch.float32:
                raise TypeError(f"{name}: expected dtype float32, got {a.dtype}")
            if a.device.type != "cpu":
                raise ValueError(f"{name}: must be in CPU memory, got {a.device}")
            if not a.is_contiguous():
                raise ValueError(f"{name}: must be C-contiguous")
        if x.dim() != 3 or x.shape[2] != self.hidden:
            raise ValueError(f"x: expected shape [batch, M, {self.hidden}], got {tuple(x.shape)}")
        batch = x.shape[0]
        if kv.dim() != 6 or tuple(kv.shape) != self.kv_shape(kv.shape[4], batch):
            raise ValueError(f"kv: expected shape {self.kv_shape(0, batch)[:4]} + (capacity, {self.head_dim}), "
                             f"got {tuple(kv.shape)}")
        if tuple(out.shape) != (batch, self.hidden):
            raise ValueError(f"out: expected shape ({batch}, {self.hidden}), got {tuple(out.shape)}")
        st = 0
        if starts is not None:
            if starts.dtype != torch.int64 or starts.device.type != "cpu" or tuple(starts.shape) != (batch,) \
                    or not starts.is_contiguous():
                raise ValueError(f"starts: expected a contiguous CPU int64 tensor of shape ({batch},), got "
                                 f"{starts.dtype} {tuple(starts.shape)} on {starts.device}")
            st = starts.data_ptr()
        self._d.step_ptr(x.data_ptr(), batch, x.shape[1], pos, kv.data_ptr(), kv.shape[4], out.data_ptr(), st)
