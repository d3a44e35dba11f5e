"""Fixtures: a tiny random Llama with an offline word-level tokenizer, saved as an HF directory."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

VOCAB = 128


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def _random_decoder(config_class, seed: int, hidden: int, inter: int, **extra):
    """A 2-layer decoder of ``config_class`` with N(0, 1/K) matrices and perturbed vectors (norms
    away from 1): the default init's tiny activations would hide what the tests look for."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = config_class(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0, **extra)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            else:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def tiny_llama(seed: int = 0, hidden: int = 128, inter: int = 256):
    from transformers import LlamaConfig

    return _random_decoder(LlamaConfig, seed, hidden, inter, tie_word_embeddings=False)


def tiny_olmo2(seed: int = 0, hidden: int = 128, inter: int = 256):
    """A post-norm-only decoder (h = x + norm(attn(x)); h = h + norm(mlp(h))): no producer can
    absorb the input scales of its q/k/v and gate/up."""
    from transformers import Olmo2Config

    return _random_decoder(Olmo2Config, seed, hidden, inter)


def tiny_gpt2(seed: int = 0, hidden: int = 128, inter: int = 256):
    """GPT-2 blocks: transformers' Conv1D layers (weights stored [in, out]), tied embeddings."""
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=hidden, n_inner=inter, n_layer=2, n_head=4, n_positions=128,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def save_tiny(path: Path, dtype: torch.dtype = torch.float32, **kw) -> Path:
    return _save_with_tokenizer(path, tiny_llama(**kw).to(dtype))


@pytest.fixture
def tiny_tok():
    return tiny_tokenizer()


@pytest.fixture
def make_tiny():
    return save_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_bf16_dir(tmp_path_factory) -> Path:
    """The tiny Llama stored in bfloat16 (config.json says so), as many hub models are."""
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-llama-bf16", dtype=torch.bfloat16, seed=4)


def _save_with_tokenizer(path: Path, model) -> Path:
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_olmo2_dir(tmp_path_factory) -> Path:
    return _save_with_tokenizer(tmp_path_factory.mktemp("models") / "tiny-olmo2", tiny_olmo2())


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return _save_with_tokenizer(tmp_path_factory.mktemp("models") / "tiny-gpt2", tiny_gpt2())


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    rnd = random.Random(0)
    lines = [" ".join(f"w{rnd.randrange(4, VOCAB)}" for _ in range(40)) for _ in range(60)]
    path = tmp_path_factory.mktemp("text") / "words.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path, monkeypatch):
    # the fast tests never touch the user's model cache (the slow ones reuse it)
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("CAT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
