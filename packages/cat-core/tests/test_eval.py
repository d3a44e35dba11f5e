"""cat_core.eval: perplexity protocol and the data-free agreement figure on a tiny random Llama."""

from __future__ import annotations

import math

import pytest
import torch
from cat_core import eval as E
from transformers import AutoModelForCausalLM, LlamaConfig


def _llama(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=2)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(seed))


def test_windows_protocol():
    w = E.windows(torch.arange(10), 4)
    assert w.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]  # tail of 2 dropped
    assert E.windows(torch.arange(10), 4, max_windows=1).shape == (1, 4)
    with pytest.raises(ValueError, match="fewer than one window"):
        E.windows(torch.arange(3), 4)
    with pytest.raises(ValueError, match="seqlen"):
        E.windows(torch.arange(3), 1)


def test_perplexity_matches_full_logits_reference():
    model = _llama()
    ids = _ids(100)
    res = E.perplexity(model, ids, seqlen=16, max_windows=5)
    assert (res.windows, res.tokens, res.seqlen) == (5, 5 * 15, 16)
    wins = ids[:80].view(5, 16)
    with torch.no_grad():
        logits = model(wins).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), wins[:, 1:].reshape(-1))
    assert res.ppl == pytest.approx(math.exp(float(nll)), rel=1e-4)
    assert "75 tokens scored" in res.protocol()


def test_perplexity_chunked_head_equals_unchunked(monkeypatch):
    model = _llama()
    ids = _ids(64)
    a = E.perplexity(model, ids, seqlen=32)
    monkeypatch.setattr(E, "_LOGIT_CHUNK", 7)
    b = E.perplexity(model, ids, seqlen=32)
    monkeypatch.setattr(E, "_split_head", lambda m: None)  # the fallback through model(...).logits
    c = E.perplexity(model, ids, seqlen=32)
    assert a.ppl == pytest.approx(b.ppl, rel=1e-5) and a.ppl == pytest.approx(c.ppl, rel=1e-5)


def test_agreement_self_and_perturbed():
    model = _llama()
    ids = _ids(40).view(2, 20)
    ref = E.reference_logprobs(model, ids)
    assert ref.shape == (2, 20, 64)
    same = E.agreement(model, ids, ref)
    assert same.kl == pytest.approx(0.0, abs=1e-5) and same.top1 == 1.0 and same.positions == 40
    other = _llama(seed=1)
    diff = E.agreement(other, ids, ref)
    assert diff.kl > 0.01 and diff.top1 < 1.0
    with pytest.raises(ValueError, match="do not match"):
        E.agreement(model, ids[:, :5], ref)


def test_sample_texts_is_seeded():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 64)}}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
                                  bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    model = _llama()
    a = E.sample_texts(model, tok, n=2, seqlen=6, seed=3)
    b = E.sample_texts(model, tok, n=2, seqlen=6, seed=3)
    assert a.shape == (2, 6) and torch.equal(a, b) and (a[:, 0] == 1).all()
