"""The output head, quantized: the one matrix every decoded token reads whole.

A decode step reads each quantized linear once and the head once; with a 16- or 32-bit head the
head is most of those bytes (SmolLM2-135M: 113 MB in float32 against 58 MB for all its 4-bit
linears; a Llama-3-shaped 1.5B model: 2.1 GB against 0.5 GB). Rounding it to 8 bits moves the
logits by far less than the 3/4-bit body does (measured per model: ``benchmarks/head_quality.py``).

The head is round-to-nearest quantized in row chunks (a 128k-vocabulary head is never held in
float32 whole) and replaces ``model.get_output_embeddings()``. A head tied to the input embedding
stays tied: the lookups then gather the same quantized rows (:class:`TiedQuantEmbedding`), so
the one table is held once, at 8 or 4 bits, instead of as a float table plus a quantized copy.
"""

from __future__ import annotations

import torch
from torch import nn

from cat_core.nn._kernels import _kernels
from cat_core.nn._linear import QuantLinear

#: Head bit widths and how each is stored: 8 bits symmetric (GGUF Q8_0's grid), 4 bits
#: asymmetric (Q4_1's), both in groups of 32 input columns with float16 scales.
HEAD_BITS = {8: True, 4: False}
#: 16 means "leave the head as it is".
HEAD_CHOICES = (16, 8, 4)
_GROUP = 32
_CHUNK_ROWS = 4096  # a multiple of 16, so packed chunks concatenate row-block by row-block


def quantize_head(model: nn.Module, bits: int = 8) -> QuantLinear | None:
    """Replace ``model``'s output head by a round-to-nearest :class:`QuantLinear` of ``bits``
    (8: symmetric, 4: asymmetric; groups of 32 columns, or one per row when the hidden size is
    not a multiple of 32); ``bits=16`` leaves it as it is.

    Returns the new head, or None when nothing changed (``bits=16``, no separate output head, or
    one that is already quantized). The model computes in the activations' dtype as before.
    """
    if bits not in HEAD_CHOICES:
        raise ValueError(f"head bits must be one of {HEAD_CHOICES} (16: keep the head unquantized), got {bits!r}")
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    if bits == 16 or head is None or isinstance(head, QuantLinear):
        return None
    if not isinstance(head, nn.Linear):
        raise TypeError(f"the output head is a {type(head).__name__}, not an nn.Linear: cannot quantize it")
    weight = head.weight.detach()
    if weight.is_meta:
        raise ValueError("the output head has no data (meta tensor): load the weights before quantizing it")
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = emb is not None and getattr(emb, "weight", None) is head.weight
    q = _quantized_linear(weight, head.bias, bits)
    _untie(model)  # transformers must not tie a float weight onto the quantized head again
    model.set_output_embeddings(q)
    if tied and _plain_lookup(emb):
        model.set_input_embeddings(TiedQuantEmbedding(q, emb))
    return q


def _plain_lookup(emb: nn.Module) -> bool:
    """An nn.Embedding whose forward is the table lookup, optionally times ``embed_scale`` (the
    Gemma families); any other forward is kept as it is (the model then holds the float table)."""
    if not isinstance(emb, nn.Embedding) or emb.max_norm is not None:
        return False
    fwd = type(emb).forward
    return fwd is nn.Embedding.forward or isinstance(getattr(emb, "embed_scale", None), (torch.Tensor, float))


class TiedQuantEmbedding(nn.Module):
    """Input embedding lookups read from the quantized output head that was tied to it.

    Row ``i`` is ``float32(q - z) * float32(s)`` of the head's row ``i`` (the exact weight the head
    multiplies with), rounded once to the dtype the embedding computed in (which follows
    ``model.to(dtype)``), then times ``embed_scale`` where the original embedding had one.
    Holds no copy of the table: it reads the head's buffers at each call.
    """

    def __init__(self, head: QuantLinear, original: nn.Embedding) -> None:
        super().__init__()
        if head.bits not in (4, 8):
            raise ValueError(f"lookups from a quantized head need 4 or 8 bits, got {head.bits}")
        self.__dict__["_head"] = head  # not a submodule: the model owns it as its output head
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features
        self.padding_idx = original.padding_idx
        # the output dtype rides on an empty buffer so that model.to(dtype) moves it like a weight
        self.register_buffer("_out", torch.empty(0, dtype=original.weight.dtype, device=original.weight.device),
                             persistent=False)
        scale = getattr(original, "embed_scale", None)
        if isinstance(scale, torch.Tensor):
            scale = scale.detach().clone()
        self.register_buffer("embed_scale", scale if isinstance(scale, torch.Tensor) else None, persistent=False)
        self._scale = scale if isinstance(scale, float) else None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = _dequantized_rows(self._head, input_ids.reshape(-1)).to(self._out.dtype)
        if self.embed_scale is not None:
            rows = rows * self.embed_scale.to(rows.dtype)
        elif self._scale is not None:
            rows = rows * self._scale
        return rows.reshape(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, from the {self._head.bits}-bit output head"


def _unpack_rows(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes of 8- or 4-bit words ``[rows, n_words]`` (format.md: value ``v`` of a word in bits
    ``[bits*v, bits*(v+1))``, little-endian), as uint8 ``[rows, n_words * 32 / bits]``."""
    b = words.contiguous().view(torch.uint8)  # little-endian bytes: the stream's order
    if bits == 8:
        return b
    return torch.stack((b & 0xF, b >> 4), dim=-1).reshape(b.shape[0], -1)


def _dequantized_rows(head: QuantLinear, ids: torch.Tensor) -> torch.Tensor:
    """float32 ``[len(ids), K]``: rows ``ids`` of the head's weight, from its packed buffers."""
    if ids.device.type == "cpu" and head.qweight.device.type == "cpu" and not torch.compiler.is_compiling():
        # one native call (a decode step's lookup: ~15 torch ops cost 0.2 ms), which range-checks
        try:
            return head._packed_weight().dequantize_rows(ids)
        except IndexError:
            raise IndexError(f"token ids must be in [0, {head.out_features}), got "
                             f"{int(ids.min())}..{int(ids.max())}") from None
    k, bits = head.in_features, head.bits
    # the clear message costs a host read of the ids: eager CPU only (under torch.compile it
    # would break the graph at every step; the indexing below still fails on a bad id)
    if (ids.device.type == "cpu" and not torch.compiler.is_compiling() and ids.numel()
            and (int(ids.min()) < 0 or int(ids.max()) >= head.out_features)):
        raise IndexError(f"token ids must be in [0, {head.out_features}), got {int(ids.min())}..{int(ids.max())}")
    tile, lane = ids // 16, ids % 16
    qw = head.qweight[tile, :, :, lane]  # [rows, K/32 blocks, bits words]
    q = _unpack_rows(qw.reshape(ids.numel(), -1), bits)[:, :k].float()
    s = head.scales[ids].float()  # [rows, n_groups]
    g = k if head.group_size == -1 else head.group_size
    if head.qzeros is None:
        z = torch.full_like(s, float(1 << (bits - 1)))
    else:
        z = _unpack_rows(head.qzeros[tile, :, lane], bits)[:, : s.shape[1]].float()
    q = q.view(ids.numel(), -1, g).sub_(z.unsqueeze(-1)).mul_(s.unsqueeze(-1))
    return q.view(ids.numel(), k)


def _quantized_linear(weight: torch.Tensor, bias: torch.Tensor | None, bits: int) -> QuantLinear:
    from cat_core.quant import quantize_tensor

    ck = _kernels()
    n, k = weight.shape
    sym = HEAD_BITS[bits]
    group = _GROUP if k % _GROUP == 0 else -1
    packed, scales, zeros = [], [], []
    for r0 in range(0, n, _CHUNK_ROWS):
        qt = quantize_tensor(weight[r0:r0 + _CHUNK_ROWS].to("cpu"), bits=bits, group_size=group, sym=sym,
                             scale_dtype=torch.float16)
        packed.append(ck.pack(qt.codes.contiguous(), bits))
        scales.append(qt.scales)
        if qt.zeros is not None:
            zeros.append(ck.pack_zeros(qt.zeros.contiguous(), bits))
    device = weight.device
    q = QuantLinear(k, n, bits, group, sym=sym, bias=bias is not None, scale_dtype=torch.float16,
                    bias_dtype=bias.dtype if bias is not None else torch.float32, device="meta")
    q.qweight = torch.cat(packed).to(device)
    q.scales = torch.cat(scales).to(device)
    q.qzeros = torch.cat(zeros).to(device) if zeros else None
    if bias is not None:
        q.bias = bias.detach().clone()
    return q


def _untie(model: nn.Module) -> None:
    """Stop the head from following the input embedding: transformers re-ties them on
    ``tie_weights()`` while the config says they are tied."""
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "get_text_config", lambda: None)()):
        if cfg is not None and getattr(cfg, "tie_word_embeddings", False):
            cfg.tie_word_embeddings = False
