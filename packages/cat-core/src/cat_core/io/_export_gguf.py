"""Export to a GGUF file that llama.cpp runs, holding Caterpillar's codes as GGML blocks.

GGML's blocks (public format facts) hold 32 consecutive weights of a row, scales in float16;
byte ``i`` of a 4-bit block holds element ``i`` in its low nibble and element ``i + 16`` in its
high nibble:

- Q4_0 (18 bytes): ``d``, 16 bytes of codes; ``w = d * (q - 8)``;
- Q4_1 (20 bytes): ``d``, ``m``, 16 bytes of codes; ``w = d * q + m``;
- Q8_0 (34 bytes): ``d``, 32 int8 codes; ``w = d * q``.

Caterpillar stores ``w = (q - z) * s`` per group of G input columns (a multiple of 32, or the
whole row), so a group is G/32 blocks that repeat its scale, and (see
:func:`cat_core.engines.gguf_type`):

- symmetric 4-bit (z = 8) is Q4_0 with ``d = s`` and the codes as they are: exact;
- symmetric 8-bit (z = 128) is Q8_0 with ``d = s`` and ``q - 128`` as int8: exact;
- asymmetric 4-bit is Q4_1 with ``d = s`` and ``m = -s * z`` rounded to float16: each weight
  differs from Caterpillar's by that rounding of its block's ``m`` (at most half a float16 ulp of
  ``s * z``), the only inexact step;
- ``d = s`` is exact only when the scale is a float16 number: float16 scales always, bfloat16
  ones in float16's range; any other scale is refused (converting would change the weights).

Unquantized tensors: 1-D ones (norms, biases) in F32 as llama.cpp expects, each the value the
native checkpoint stores (``dtype`` applied first); 2-D ones (embedding, lm_head, linears left
unquantized) in ``dtype`` (F16, BF16 or F32).
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cat_core.engines import gguf_type
from cat_core.io._atomic import atomic_file
from cat_core.io._gguf_arch import (
    Arch,
    add_hparams,
    arch_of,
    check_config,
    qk_row_order,
    rope_factors,
)
from cat_core.io._gguf_vocab import vocab_of
from cat_core.io._state import (
    check_storage_dtype,
    quantized_modules,
    resolve_offloaded,
    unique_state,
)
from cat_core.nn import QuantLinear
from cat_core.quant import QuantizedTensor

_BLOCK = 32
_FILE_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7}  # gguf.LlamaFileType.MOSTLY_*
_OWN_ARRAYS = ("qweight", "scales", "qzeros")  # a QuantLinear's buffers, written as blocks


def export_gguf(
    model: nn.Module,
    path: str | os.PathLike,
    tokenizer: Any,
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a quantized model as one GGUF file for llama.cpp (``llama-cli -m path``).

    Quantized linears become Q4_0 (symmetric 4-bit), Q4_1 (asymmetric 4-bit) or Q8_0 (symmetric
    8-bit), with the codes unchanged; ``tokenizer`` (a fast tokenizer) and its chat template
    become the file's vocabulary. ``dtype``: storage dtype of the unquantized 2-D tensors
    (float16, bfloat16 or float32; default: each keeps its own). Architectures:
    :data:`cat_core.engines.GGUF_MODEL_TYPES`.

    Every layer and scale is checked before the file is opened; the tensors are then converted
    and written one at a time (a model read block by block, :mod:`cat_core.stream`, stays so),
    and the file appears only once complete. Raises ValueError (naming the argument, layer or config field) for what llama.cpp cannot run
    as this model: another architecture, 2/3-bit or asymmetric 8-bit layers, an in_features that
    is not a multiple of 32, scales that are not float16 numbers, an unsupported tokenizer;
    FileExistsError when ``path`` exists without ``overwrite``.
    """
    try:
        from gguf import GGUFWriter
    except ImportError as e:
        raise ImportError(f"export_gguf needs the 'gguf' package (pip install 'cat-core[gguf]'): {e}") from e

    path = Path(path)
    if path.suffix != ".gguf":
        raise ValueError(f"path must name a .gguf file, got {str(path)!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path.absolute()} already exists; pass overwrite=True to replace it")
    check_storage_dtype(dtype)
    if tokenizer is None:
        raise ValueError("tokenizer: llama.cpp tokenizes from the file itself, so a GGUF needs the model's tokenizer")
    config = model.config
    arch = arch_of(config)
    check_config(config, arch)  # the cheap refusals before the tensors are converted
    n_vocab = int(model.get_input_embeddings().weight.shape[0])
    vocab = vocab_of(tokenizer, n_vocab, config)
    items = _plan(model, arch, dtype)
    kinds = [i.raw.name for i in items if i.raw is not None and i.raw.name in _FILE_TYPES]

    writer = GGUFWriter(None, arch.name)
    writer.add_type("model")
    writer.add_name(_model_name(config))
    writer.add_quantized_by("Caterpillar")
    writer.add_file_type(_FILE_TYPES[collections.Counter(kinds).most_common(1)[0][0]])
    writer.add_quantization_version(2)  # GGML_QNT_VERSION of the block layouts above
    add_hparams(writer, config, arch, n_vocab)
    vocab.add_to(writer)
    for i in items:
        writer.add_tensor_info(i.name, i.shape, i.np_dtype, i.nbytes, raw_dtype=i.raw)
    with atomic_file(path, overwrite) as tmp:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            bar = _progress(sum(i.nbytes for i in items), progress)
            for i in items:
                writer.write_tensor_data(i.make())  # one tensor in memory at a time
                bar.update(i.nbytes)
            bar.close()
        finally:
            writer.close()
    return path.absolute()


def check_gguf(model: nn.Module, tokenizer: Any) -> None:
    """Raise ValueError for what :func:`export_gguf` would refuse in this model's architecture,
    config or tokenizer, in a second and before any quantization (the quantized layers' own
    settings are checked when exporting)."""
    if tokenizer is None:
        raise ValueError("tokenizer: llama.cpp tokenizes from the file itself, so a GGUF needs the model's tokenizer")
    check_config(model.config, arch_of(model.config))
    vocab_of(tokenizer, int(model.get_input_embeddings().weight.shape[0]), model.config)


def _model_name(config: Any) -> str:
    source = str(getattr(config, "name_or_path", "") or getattr(config, "_name_or_path", "") or "")
    return Path(source).name or config.model_type


@dataclasses.dataclass
class _Item:
    """One tensor of the file: what its header says, and how to make its data."""

    name: str
    shape: tuple[int, ...]
    np_dtype: Any
    nbytes: int
    raw: Any  # gguf.GGMLQuantizationType, or None for F32 / F16 arrays
    make: Callable[[], np.ndarray]


def _plan(model: nn.Module, arch: Arch, dtype: torch.dtype | None) -> list[_Item]:
    """Every tensor of the file in order, each layer and scale checked, nothing converted yet."""
    from gguf import get_tensor_name_map

    from cat_core.stream import lazy_weights

    config = model.config
    names = get_tensor_name_map(_gguf_arch_enum(arch.name), config.num_hidden_layers)
    mods = quantized_modules(model)
    lazy = lazy_weights(model)
    state = unique_state(model)
    if lazy is None:
        state = resolve_offloaded(model, state)

    def read(key: str) -> torch.Tensor:  # a lazily read model's values live in its files
        return (lazy.read(key) if lazy is not None else state[key]).detach().cpu()

    items: list[_Item] = []
    for key, t in state.items():
        owner, _, attr = key.rpartition(".")
        if owner in mods and attr in _OWN_ARRAYS:
            if attr == "qweight":
                items.append(_quantized_item(owner, mods[owner], names, arch, config, read))
            continue
        if key == "lm_head.weight" and arch.tied_only:
            emb = "model.embed_tokens.weight"
            if emb not in state or not torch.equal(read(emb), read(key)):
                raise ValueError(f"model: llama.cpp's {arch.name} always ties the output to the embedding, and "
                                 "this model's lm_head.weight differs from it")
            continue
        gname = _gguf_name(names, key, key)
        if not t.is_floating_point():
            raise ValueError(f"model: tensor {key!r} is {t.dtype}, not a floating-point tensor GGUF can hold here")
        order = _row_order(config, arch, gname)
        add_one = _norm_offset(model, owner, arch)
        # the dtype the header states: a lazily read tensor may come back in its file's dtype
        as_dtype = dtype if dtype is not None else t.dtype

        def make(key=key, order=order, add_one=add_one, as_dtype=as_dtype) -> np.ndarray:
            arr = _plain(key, read(key), as_dtype, add_one)
            return arr if order is None else np.ascontiguousarray(arr[order])

        np_dtype, raw, size = _plain_type(t, dtype)
        items.append(_Item(gname, tuple(t.shape), np_dtype, t.numel() * size, raw, make))
    if (factors := rope_factors(config)) is not None:
        items.append(_Item("rope_freqs.weight", tuple(factors.shape), np.float32, factors.nbytes, None,
                           lambda: factors))
    return items


def _quantized_item(owner: str, mod: QuantLinear, names: Any, arch: Arch, config: Any,
                    read: Callable[[str], torch.Tensor]) -> _Item:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    gname = _gguf_name(names, f"{owner}.weight", f"{owner}.qweight")
    kind = _block_type(owner, mod)
    g = mod.in_features if mod.group_size == -1 else mod.group_size
    _fp16_scales(owner, read(f"{owner}.scales").float().numpy(), mod.scales.dtype)  # refused before writing
    raw = GGMLQuantizationType[kind]
    block, size = GGML_QUANT_SIZES[raw]
    assert block == _BLOCK and g % _BLOCK == 0
    row = mod.in_features // _BLOCK * size
    order = _row_order(config, arch, gname)

    def make() -> np.ndarray:
        return _blocks(owner, _reorder(_codes(owner, mod, read), order), kind)

    return _Item(gname, (mod.out_features, row), np.uint8, mod.out_features * row, raw, make)


def _plain_type(t: torch.Tensor, dtype: torch.dtype | None) -> tuple[Any, Any, int]:
    """(numpy dtype, GGML type or None, bytes per element) of an unquantized tensor as written."""
    from gguf import GGMLQuantizationType

    stored = dtype if dtype is not None else t.dtype
    if t.dim() <= 1 or stored not in (torch.float16, torch.bfloat16):
        return np.float32, None, 4
    if stored == torch.bfloat16:
        return np.uint16, GGMLQuantizationType.BF16, 2
    return np.float16, None, 2


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="writing GGUF", unit="B", unit_scale=True, disable=not enabled)


def _codes(owner: str, mod: QuantLinear, read: Callable[[str], torch.Tensor]) -> QuantizedTensor:
    """The layer's codes from its buffers as stored (fetched when offloaded or read lazily)."""
    shell = QuantLinear(mod.in_features, mod.out_features, mod.bits, mod.group_size, sym=mod.sym,
                        scale_dtype=mod.scales.dtype, device="meta")
    for attr in _OWN_ARRAYS:
        if attr != "qzeros" or not mod.sym:
            setattr(shell, attr, read(f"{owner}.{attr}"))
    return shell.to_quantized_tensor()


def _gguf_arch_enum(name: str) -> Any:
    from gguf import MODEL_ARCH, MODEL_ARCH_NAMES

    return next(a for a, n in MODEL_ARCH_NAMES.items() if n == name and isinstance(a, MODEL_ARCH))


def _gguf_name(names: Any, hf_name: str, key: str) -> str:
    gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if gname is None:
        raise ValueError(f"model: tensor {key!r} has no counterpart in llama.cpp's model (a module "
                         "Caterpillar added, or one the architecture does not have)")
    return gname


def _block_type(name: str, mod: QuantLinear) -> str:
    kind = gguf_type(mod.bits, mod.sym)
    if kind is None:
        why = "Q8_0 has no zero point" if mod.bits == 8 else "GGUF holds 4-bit and 8-bit codes exactly"
        raise ValueError(f"{name}: {mod.bits}-bit {'symmetric' if mod.sym else 'asymmetric'} weights cannot "
                         f"be written to GGUF exactly ({why})")
    if mod.in_features % _BLOCK:
        raise ValueError(f"{name}: in_features={mod.in_features} is not a multiple of 32, the length of a GGUF block")
    return kind


def _row_order(config: Any, arch: Arch, gname: str) -> np.ndarray | None:
    parts = gname.split(".")
    if not arch.permute_qk or len(parts) < 3 or parts[2] not in ("attn_q", "attn_k"):
        return None
    return qk_row_order(config, "q" if parts[2] == "attn_q" else "k")


def _reorder(qt: QuantizedTensor, order: np.ndarray | None) -> QuantizedTensor:
    if order is None:
        return qt
    idx = torch.from_numpy(order)
    return QuantizedTensor(codes=qt.codes[idx], scales=qt.scales[idx],
                           zeros=None if qt.zeros is None else qt.zeros[idx], bits=qt.bits, group_size=qt.group_size)


def _fp16_scales(name: str, s: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """``s`` (float32 values of the stored scales) as float16, or ValueError if not exact."""
    with np.errstate(over="ignore"):
        d = s.astype(np.float16)
    bad = d.astype(np.float32) != s
    if bad.any():
        rel = np.abs(d[bad].astype(np.float64) - s[bad]) / np.maximum(np.abs(s[bad]), 1e-30)
        raise ValueError(
            f"{name}: {int(bad.sum())} of its {s.size} block scales ({str(dtype).removeprefix('torch.')}) are not "
            f"float16 numbers (rounding would change them by up to {float(rel.max()):.2e}, relative); GGUF stores "
            "float16 scales, so quantize with scale_dtype float16 (or bfloat16) for an exact export")
    return d


def _blocks(name: str, qt: QuantizedTensor, kind: str) -> np.ndarray:
    """``[N, K/32 * block bytes]`` uint8: the rows of ``qt`` as GGML blocks of type ``kind``."""
    n, k = qt.shape
    g = k if qt.group_size == -1 else qt.group_size
    per_group = g // _BLOCK
    nb = k // _BLOCK
    s = np.repeat(qt.scales.float().numpy(), per_group, axis=1)  # [N, nb]
    d = _fp16_scales(name, s, qt.scales.dtype).reshape(n, nb, 1).view(np.uint8)
    q = qt.codes.numpy().reshape(n, nb, _BLOCK)
    if kind == "Q8_0":
        body = (q.astype(np.int16) - 128).astype(np.int8).view(np.uint8)
        parts = [d, body]
    else:
        body = q[..., :16] | (q[..., 16:] << 4)
        parts = [d, body]
        if kind == "Q4_1":
            z = np.repeat(qt.zeros.numpy(), per_group, axis=1).astype(np.float32)
            with np.errstate(over="ignore"):
                m = (-(s * z)).astype(np.float16)  # s * z is exact in float32; this is the rounding
            if not np.isfinite(m).all():
                raise ValueError(f"{name}: scale x zero point exceeds float16's range, so Q4_1's m cannot hold it")
            parts = [d, m.reshape(n, nb, 1).view(np.uint8), body]
    return np.ascontiguousarray(np.concatenate(parts, axis=-1).reshape(n, -1))


def _norm_offset(model: nn.Module, owner: str, arch: Arch) -> bool:
    if not arch.norm_offset or not owner:
        return False
    return type(model.get_submodule(owner)).__name__.endswith("RMSNorm")


def _plain(key: str, t: torch.Tensor, dtype: torch.dtype | None, add_one: bool) -> np.ndarray:
    """An unquantized tensor as stored: its value in ``dtype`` first (what the native checkpoint
    holds), then F32 for 1-D tensors and ``dtype`` for the others; ``add_one``: ``1 + w`` in
    float32, as the model computes it."""
    t = t.detach().cpu()
    if not t.is_floating_point():
        raise ValueError(f"model: tensor {key!r} is {t.dtype}, not a floating-point tensor GGUF can hold here")
    stored = t.to(dtype) if dtype is not None else t
    if dtype is not None and not torch.isfinite(stored).all() and torch.isfinite(t).all():
        raise ValueError(f"model: tensor {key!r} overflows {dtype}; export with dtype=torch.bfloat16 or float32")
    if t.dim() <= 1:
        v = stored.float()
        return (v + 1.0 if add_one else v).numpy()
    if stored.dtype == torch.bfloat16:
        return stored.contiguous().view(torch.int16).numpy().view(np.uint16)
    if stored.dtype != torch.float16:
        stored = stored.float()
    return stored.contiguous().numpy()


