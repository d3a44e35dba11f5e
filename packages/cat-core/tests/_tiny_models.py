"""Tiny random-weight causal LMs built offline from transformers configs (2 layers, fp32)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM

VOCAB = 101
H = 72  # hidden size: not a power of two
HEADS = 4
HEAD_DIM = 18  # H / HEADS, even for rotary
FF = 100


def _cfg(name: str) -> object:
    from transformers import (
        BloomConfig,
        Exaone4Config,
        FalconConfig,
        Gemma3TextConfig,
        GemmaConfig,
        GPT2Config,
        GPTJConfig,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        MixtralConfig,
        MptConfig,
        Olmo2Config,
        Olmo3Config,
        OPTConfig,
        Phi3Config,
        PhiConfig,
        Qwen2Config,
        Qwen2MoeConfig,
        Qwen3Config,
    )

    # the same sizes under each family's parameter names
    hf_names = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=HEADS)
    gpt_names = dict(vocab_size=VOCAB, n_embd=H, n_head=HEADS, n_layer=2)
    decoder = dict(**hf_names, hidden_size=H, intermediate_size=FF, max_position_embeddings=64)
    llama_like = dict(**decoder, num_key_value_heads=2)
    ids_in_vocab = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    mixed = ["sliding_attention", "full_attention"]
    table: dict[str, Callable[[], object]] = {
        "opt": lambda: OPTConfig(
            **hf_names, hidden_size=H, word_embed_proj_dim=H, ffn_dim=FF, max_position_embeddings=64
        ),
        "llama": lambda: LlamaConfig(**llama_like),
        "mistral": lambda: MistralConfig(**llama_like),
        "qwen2": lambda: Qwen2Config(**llama_like),
        "qwen3": lambda: Qwen3Config(**llama_like, head_dim=HEAD_DIM),
        "gemma": lambda: GemmaConfig(**llama_like, head_dim=HEAD_DIM),
        "gemma3": lambda: Gemma3TextConfig(**llama_like, head_dim=HEAD_DIM, sliding_window=8),
        "phi": lambda: PhiConfig(**{**decoder, "hidden_size": 80}, partial_rotary_factor=0.5),
        "phi3": lambda: Phi3Config(**llama_like, pad_token_id=0),
        "falcon": lambda: FalconConfig(
            **hf_names, hidden_size=H, multi_query=True, parallel_attn=True,
            new_decoder_architecture=False, bias=False,
        ),
        "falcon_new": lambda: FalconConfig(
            **hf_names, hidden_size=H, num_kv_heads=2, new_decoder_architecture=True, bias=True
        ),
        "mpt": lambda: MptConfig(
            vocab_size=VOCAB, d_model=H, n_heads=HEADS, n_layers=2, expansion_ratio=3, max_seq_len=64
        ),
        "bloom": lambda: BloomConfig(vocab_size=VOCAB, hidden_size=H, n_head=HEADS, n_layer=2),
        "gptj": lambda: GPTJConfig(**gpt_names, n_inner=FF, rotary_dim=8, n_positions=64),
        "gpt_neox": lambda: GPTNeoXConfig(**decoder, use_parallel_residual=True),
        "gpt2": lambda: GPT2Config(**gpt_names, n_inner=FF, n_positions=64),
        # post-norm only (h = x + norm(attn(x)); h = h + norm(mlp(h))): q/k/v and gate/up read
        # the residual stream, so no producer can absorb their input scales
        "olmo2": lambda: Olmo2Config(**llama_like, **ids_in_vocab),
        "olmo3": lambda: Olmo3Config(**llama_like, **ids_in_vocab, sliding_window=8, layer_types=mixed),
        "exaone4": lambda: Exaone4Config(
            **llama_like, **ids_in_vocab, head_dim=HEAD_DIM, sliding_window=8, layer_types=mixed
        ),
        "mixtral": lambda: MixtralConfig(
            **{**llama_like, "intermediate_size": 50}, num_local_experts=4, num_experts_per_tok=2
        ),
        "qwen2_moe": lambda: Qwen2MoeConfig(
            **{**llama_like, "intermediate_size": FF},
            moe_intermediate_size=40,
            shared_expert_intermediate_size=60,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
        ),
    }
    return table[name]()


NAMES = [
    "opt",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma3",
    "phi",
    "phi3",
    "falcon",
    "falcon_new",
    "mpt",
    "bloom",
    "gptj",
    "gpt_neox",
    "gpt2",
    "olmo2",
    "olmo3",
    "exaone4",
    "mixtral",
    "qwen2_moe",
]


@torch.no_grad()
def randomize_small_params(model: torch.nn.Module, seed: int = 0) -> None:
    """Make norm weights/biases and linear biases non-trivial: default init (1/0) hides fold bugs."""
    g = torch.Generator().manual_seed(seed)
    for _name, p in model.named_parameters():
        if p.dim() == 1:
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def tiny_model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = _cfg(name)
    # grouped_mm experts need 16-byte aligned strides, which odd tiny dims do not have
    extra = {"experts_implementation": "eager"} if name in ("mixtral", "qwen2_moe") else {}
    model = AutoModelForCausalLM.from_config(
        cfg, dtype=torch.float32, attn_implementation="eager", **extra
    )
    model.eval()
    # the default init has std 0.02: tiny activations make every check trivially pass
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    randomize_small_params(model, seed)
    return model


def sample_ids(n: int = 2, t: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, t), generator=g)
