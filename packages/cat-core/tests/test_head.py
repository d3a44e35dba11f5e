"""quantize_head: the output head as an 8- or 4-bit QuantLinear, tied or not.

The quantized head's weight must be exactly the round-to-nearest weight of ``cat_core.quant``
(its dequantization, compared bit for bit), the model's logits must then be those of the same
model with that weight put back into a dense head (fp32, summation order only: 1e-4 of the
largest logit). A tied input embedding then looks up the same quantized rows (bit for bit, no
second copy of the table); an untied one keeps its values.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _quantized_models import llama  # noqa: E402

pytest.importorskip("cat_kernels")
from cat_core.nn import QuantLinear, quantize_head  # noqa: E402
from cat_core.nn import _head  # noqa: E402
from cat_core.nn._head import TiedQuantEmbedding  # noqa: E402
from cat_core.quant import fake_quantize  # noqa: E402


def _model(*, tied: bool, vocab: int = 1037, hidden: int = 96, seed: int = 0):
    return llama(seed, hidden=hidden, inter=160, vocab=vocab, tied=tied, positions=64)


def _ids(vocab: int, n: int = 3, t: int = 11) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("bits", [8, 4])
def test_head_is_the_rtn_weight_and_the_logits_follow(tied, bits, monkeypatch):
    monkeypatch.setattr(_head, "_CHUNK_ROWS", 256)  # several chunks, the last one ragged (1037 rows)
    model = _model(tied=tied)
    embed_before = model.get_input_embeddings().weight.detach().clone()
    w = model.get_output_embeddings().weight.detach().clone()
    sym = bits == 8
    expect_w = fake_quantize(w, bits=bits, group_size=32, sym=sym, scale_dtype=torch.float16)

    q = quantize_head(model, bits)

    assert isinstance(q, QuantLinear) and model.get_output_embeddings() is q
    assert (q.bits, q.group_size, q.sym, q.scales.dtype) == (bits, 32, sym, torch.float16)
    assert torch.equal(q.dequantize_weight(torch.float32), expect_w)
    emb = model.get_input_embeddings()
    ids = _ids(1037)
    if tied:  # lookups read the head's rows: every row of the table, bit for bit
        assert isinstance(emb, TiedQuantEmbedding)
        assert torch.equal(emb(torch.arange(1037).reshape(17, 61)), expect_w.reshape(17, 61, -1))
        assert not any(t.numel() > 1 for t in emb.buffers())  # no copy of the table
    else:
        assert torch.equal(emb.weight, embed_before)
    assert model.config.tie_word_embeddings is False
    model.tie_weights()  # transformers re-ties on this call while the config says tied
    assert model.get_output_embeddings() is q
    dense = _model(tied=False)
    dense.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("lm_head.")},
                          strict=False)
    with torch.no_grad():
        dense.lm_head.weight.copy_(expect_w)
        dense.get_input_embeddings().weight.copy_(expect_w if tied else embed_before)
        got, want = model(ids).logits, dense(ids).logits
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * want.abs().max().item())


def test_rows_and_columns_that_fit_no_block(monkeypatch):
    # hidden 72 is not a multiple of 32: one group per row; vocab 101 leaves a ragged row block
    monkeypatch.setattr(_head, "_CHUNK_ROWS", 32)
    model = _model(tied=False, vocab=101, hidden=72)
    w = model.lm_head.weight.detach().clone()
    q = quantize_head(model, 8)
    assert q.group_size == -1
    assert torch.equal(q.dequantize_weight(), fake_quantize(w, bits=8, group_size=-1, sym=True,
                                                             scale_dtype=torch.float16))
    out = model.generate(_ids(101, 2, 5), max_new_tokens=4, do_sample=False)
    assert out.shape == (2, 9)


@pytest.mark.parametrize("bits", [8, 4])
def test_lookups_follow_dtype_and_device_moves_and_reject_bad_ids(bits):
    model = _model(tied=True)
    quantize_head(model, bits)
    emb = model.get_input_embeddings()
    model.to(torch.bfloat16)
    ids = _ids(1037)
    rows = emb(ids)
    assert rows.dtype == torch.bfloat16
    assert torch.equal(rows, model.lm_head.dequantize_weight(torch.bfloat16)[ids])
    assert model(ids).logits.dtype == torch.bfloat16
    with pytest.raises(IndexError, match=r"token ids must be in \[0, 1037\), got 0\.\.1037"):
        emb(torch.tensor([0, 1037]))


def test_embedding_scale_is_kept():
    # Gemma-style embeddings multiply the looked-up rows by sqrt(hidden)
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=517, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                           max_position_embeddings=64, tie_word_embeddings=True)
    model = Gemma3ForCausalLM(cfg).eval()
    ids = _ids(517)
    with torch.no_grad():
        want = model.get_input_embeddings()(ids)
        quantize_head(model, 8)
        got = model.get_input_embeddings()(ids)
    assert isinstance(model.get_input_embeddings(), TiedQuantEmbedding)
    assert (got - want).abs().max() < 0.01 * want.abs().max()
    assert not torch.equal(got, want / cfg.hidden_size ** 0.5)  # the scale was applied


def test_8bit_head_barely_moves_the_logits():
    # the reason it is the default: 8 bits move the logits by about 1% (relative Frobenius
    # norm) even on this random model, and over 10x less than 4 bits; figures on real models: benchmarks/head_quality.py
    ids = _ids(1037)
    moved = {}
    for bits in (8, 4):
        model = _model(tied=True)
        with torch.no_grad():
            ref = model(ids).logits
            quantize_head(model, bits)
            moved[bits] = ((model(ids).logits - ref).norm() / ref.norm()).item()
    assert moved[8] < 0.02 and moved[8] < moved[4] / 8, moved


def test_sixteen_keeps_the_head_and_bad_bits_are_refused():
    model = _model(tied=False)
    head = model.lm_head
    assert quantize_head(model, 16) is None and model.lm_head is head
    with pytest.raises(ValueError, match=r"head bits must be one of \(16, 8, 4\).*got 3"):
        quantize_head(model, 3)
    q = quantize_head(model, 8)
    assert quantize_head(model, 4) is None and model.lm_head is q  # already quantized: left alone
