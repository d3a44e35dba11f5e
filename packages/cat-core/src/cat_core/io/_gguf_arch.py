"""Per architecture: a Hugging Face config as llama.cpp's hyperparameters (the GGUF keys its
loader reads), and what changes on the way for each tensor.

Facts of llama.cpp's models, as its own converter (convert_hf_to_gguf.py) and loader
(src/models/*.cpp) state them:

- Llama uses GGML's "normal" RoPE, which rotates adjacent pairs of a head's rows, where Hugging
  Face rotates the first half against the second: q_proj and k_proj rows are reordered per head,
  ``(2, head_dim/2) -> (head_dim/2, 2)``. Qwen2/3 and Gemma use the "neox" RoPE, as Hugging Face
  does, and keep their order. A row permutation of the output dimension moves whole rows of codes,
  scales and zero points (groups run along the input dimension), so it is exact.
- Gemma's RMSNorm computes ``x * (1 + w)``, llama.cpp's ``x * w``: the file stores ``1 + w``.
- Gemma and Gemma 2 always tie the output to the embedding; Gemma 2/3 take the attention scale
  from the head size (``n_embd / n_head`` for their 27B), not from ``query_pre_attn_scalar``, and
  assume every 2nd (Gemma 2) / 6th (Gemma 3) layer is global unless the file lists them.

A config these facts do not cover is refused by the name of its field.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from cat_core.engines import GGUF_MODEL_TYPES


@dataclasses.dataclass(frozen=True)
class Arch:
    #: llama.cpp's name (``general.architecture``)
    name: str
    #: q/k rows reordered for GGML's normal RoPE
    permute_qk: bool = False
    #: RMSNorm weights stored as ``1 + w``
    norm_offset: bool = False
    #: llama.cpp has no output tensor of its own (always the embedding)
    tied_only: bool = False
    #: layer count of the model for which llama.cpp scales attention by n_embd / n_head
    wide_scale_layers: int | None = None
    #: llama.cpp's default period of global layers among sliding-window ones
    swa_period: int | None = None


ARCHS = {
    "llama": Arch("llama", permute_qk=True),
    "qwen2": Arch("qwen2"),
    "qwen3": Arch("qwen3"),
    "gemma": Arch("gemma", norm_offset=True, tied_only=True),
    "gemma2": Arch("gemma2", norm_offset=True, tied_only=True, wide_scale_layers=46, swa_period=2),
    "gemma3_text": Arch("gemma3", norm_offset=True, wide_scale_layers=62, swa_period=6),
}
assert tuple(ARCHS) == GGUF_MODEL_TYPES

_ACTIVATIONS = {"llama": ("silu",), "qwen2": ("silu",), "qwen3": ("silu",)}
_GELU_TANH = ("gelu_pytorch_tanh", "gelu")


def arch_of(config: Any) -> Arch:
    """The architecture of a model config, or ValueError naming its model_type."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        hint = " (export the text model, Gemma3ForCausalLM)" if model_type == "gemma3" else ""
        raise ValueError(f"model: llama.cpp export supports model types {', '.join(GGUF_MODEL_TYPES)}; "
                         f"this model is {model_type!r}{hint}")
    return ARCHS[model_type]


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_heads(config: Any) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def qk_row_order(config: Any, kind: str) -> np.ndarray:
    """Row gather index of q_proj (``kind="q"``) or k_proj rows for GGML's normal RoPE:
    GGUF row ``r`` holds Hugging Face row ``order[r]``."""
    heads = config.num_attention_heads if kind == "q" else kv_heads(config)
    d = head_dim(config)
    return np.arange(heads * d).reshape(heads, 2, d // 2).transpose(0, 2, 1).reshape(-1)


def _rope(config: Any, layer_type: str = "full_attention") -> dict[str, Any]:
    """RoPE parameters of a layer type, read from transformers 5's ``rope_parameters`` or
    transformers 4's ``rope_theta`` / ``rope_scaling`` / ``rope_local_base_freq``."""
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict) and rp:
        if "full_attention" in rp or "sliding_attention" in rp:
            rp = rp.get(layer_type) or rp.get("full_attention") or {}
        out = dict(rp)
    else:
        local = getattr(config, "rope_local_base_freq", None)
        if layer_type == "sliding_attention" and local is not None:
            return {"rope_type": "default", "rope_theta": float(local)}
        out = dict(getattr(config, "rope_scaling", None) or {})
        out["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    out["rope_type"] = out.get("rope_type", out.get("type", "default")) or "default"
    out.setdefault("rope_theta", 10000.0)
    return out


def _layer_types(config: Any) -> list[str]:
    types = getattr(config, "layer_types", None)
    return list(types) if types else ["full_attention"] * config.num_hidden_layers


def check_config(config: Any, arch: Arch) -> None:
    """ValueError naming the config field for a config llama.cpp would run differently."""
    act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    allowed = _ACTIVATIONS.get(config.model_type, _GELU_TANH)
    if act not in allowed:
        raise ValueError(f"model: hidden_act {act!r} differs from llama.cpp's {config.model_type} ({allowed[0]})")
    factor = getattr(config, "partial_rotary_factor", None) or _rope(config).get("partial_rotary_factor") or 1.0
    if factor != 1.0:
        raise ValueError(f"model: partial_rotary_factor {factor} is not llama.cpp's {arch.name} (full rotary)")
    types = _layer_types(config)
    if arch.swa_period is None and (set(types) != {"full_attention"} or getattr(config, "use_sliding_window", False)):
        raise ValueError(f"model: sliding-window layers (layer_types / use_sliding_window) are not part of "
                         f"llama.cpp's {arch.name}")
    for layer_type in sorted(set(types)):
        kind = _rope(config, layer_type)["rope_type"]
        ok = ("default", "linear", "llama3") if arch.name == "llama" else ("default", "linear")
        if layer_type == "sliding_attention":
            ok = ("default",)
        if kind not in ok:
            raise ValueError(f"model: rope_type {kind!r} ({layer_type} layers) is not exported to GGUF (supported: {ok})")
    if arch.wide_scale_layers is not None:
        wide = config.num_hidden_layers == arch.wide_scale_layers
        expect = config.hidden_size // config.num_attention_heads if wide else head_dim(config)
        got = getattr(config, "query_pre_attn_scalar", expect)
        if got != expect:
            raise ValueError(f"model: query_pre_attn_scalar={got}, but llama.cpp's {arch.name} scales attention by "
                             f"1/sqrt({expect}) for this model")
    if arch.name == "gemma3" and getattr(config, "attn_logit_softcapping", None):
        raise ValueError("model: attn_logit_softcapping is not part of llama.cpp's gemma3")


def add_hparams(writer: Any, config: Any, arch: Arch, n_vocab: int) -> None:
    """The architecture's hyperparameters; ValueError for a config llama.cpp would run differently."""
    from gguf import RopeScalingType

    check_config(config, arch)
    d = head_dim(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(kv_heads(config))
    writer.add_key_length(d)
    writer.add_value_length(d)
    writer.add_rope_dimension_count(d)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(n_vocab)
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    types = _layer_types(config)
    if arch.name == "gemma2":
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping or 0.0))
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping or 0.0))
    if arch.name == "gemma3" and getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    if arch.swa_period is not None:
        sliding = [t == "sliding_attention" for t in types]
        default = [i % arch.swa_period < arch.swa_period - 1 for i in range(len(types))]
        if any(sliding):
            writer.add_sliding_window(int(config.sliding_window))
            writer.add_rope_freq_base_swa(float(_rope(config, "sliding_attention")["rope_theta"]))
        # the per-layer list only where llama.cpp's default pattern differs (older llama.cpp
        # reads no list); Gemma 3 without a window is plain global attention already
        if sliding != default and (any(sliding) or arch.name == "gemma2"):
            writer.add_sliding_window_pattern(sliding)


def rope_factors(config: Any) -> np.ndarray | None:
    """llama.cpp's ``rope_freqs`` tensor for Llama 3's RoPE scaling (None for other RoPE): per
    frequency, the divisor that turns the base frequency into the scaled one."""
    rope = _rope(config)
    if rope["rope_type"] != "llama3":
        return None
    d = head_dim(config)
    base = float(rope["rope_theta"])
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    out = []
    for i in range(0, d, 2):
        wavelen = 2 * math.pi * base ** (i / d)
        if wavelen < old_ctx / high:  # high frequencies: unchanged
            out.append(1.0)
        elif wavelen > old_ctx / low:  # low frequencies: divided by the factor
            out.append(factor)
        else:  # in between: the blend of both that Llama 3 defines
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)
