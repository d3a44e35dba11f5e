"""enable_native_decode: the native step gives the plain model's tokens and logits (to float32
rounding) through generate() and cached steps, on every covered architecture, and steps aside
wherever it does not apply."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _quantized_models import rtn_all  # noqa: E402
from _tiny_models import VOCAB, tiny_model  # noqa: E402
from cat_core.decode import cached_forward  # noqa: E402
from cat_core.native_decode import (  # noqa: E402
    NativeDecodeError,
    disable_native_decode,
    enable_native_decode,
    native_decode_enabled,
)
from cat_core.nn import quantize_head, replace_linears  # noqa: E402

# The native step sums in another order than aten: logits differ by float32 rounding, which
# through 2 layers of these random models stays below 1e-4 of logits of magnitude ~10.
TOL = dict(rtol=1e-4, atol=1e-4)


def _quantized(name: str, bits: int = 4, head_bits: int = 8) -> torch.nn.Module:
    model = tiny_model(name, seed=3)
    replace_linears(model, rtn_all(model, bits=bits, group_size=-1))
    quantize_head(model, head_bits)
    return model


def _generate(model, ids, n=24, **kw):
    out = model.generate(ids, max_new_tokens=n, attention_mask=torch.ones_like(ids), pad_token_id=0,
                         output_scores=True, return_dict_in_generate=True, **kw)
    return out.sequences, torch.stack(out.scores)


def _native_calls(model) -> list[int]:
    """Counts native steps by wrapping the decoder's step."""
    native = model.__dict__["_cat_native_decode"].native
    native.dec = _Counting(native.dec)
    return native.dec.calls


class _Counting:
    def __init__(self, dec) -> None:
        self.dec, self.calls = dec, []

    def step(self, *args):
        self.calls.append(1)
        return self.dec.step(*args)

    def __getattr__(self, name):
        return getattr(self.dec, name)


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "qwen3"])
def test_generate_gives_the_plain_tokens_and_logits(name):
    model = _quantized(name, bits=3 if name == "qwen2" else 4, head_bits=16 if name == "mistral" else 8)
    if name == "mistral":
        model.config.sliding_window = None  # as Mistral 7B v0.2 on (v0.1's window is refused below)
    ids = torch.randint(3, VOCAB, (1, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        tokens, scores = _generate(model, ids)
        enable_native_decode(model)
        calls = _native_calls(model)
        fast_tokens, fast_scores = _generate(model, ids)
    assert len(calls) == 23  # every token after the prompt's first
    assert torch.equal(fast_tokens, tokens)
    torch.testing.assert_close(fast_scores, scores, **TOL)


def test_sampling_follows_the_seed():
    model = _quantized("llama")
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.manual_seed(11)
        tokens, _ = _generate(model, ids, do_sample=True, temperature=0.8, top_p=0.9, top_k=0)
        enable_native_decode(model)
        torch.manual_seed(11)
        fast, _ = _generate(model, ids, do_sample=True, temperature=0.8, top_p=0.9, top_k=0)
    assert torch.equal(fast, tokens)


def test_cached_steps_mix_native_and_plain_and_keep_the_cache_whole():
    model = _quantized("qwen3")
    ids = torch.randint(3, VOCAB, (1, 20), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        enable_native_decode(model)
        calls = _native_calls(model)
        logits, cache = cached_forward(model, ids[:, :6])
        steps = [logits]
        # single tokens (native), a chunk of three (plain, then copied back), single tokens again
        for a, b in [(6, 7), (7, 8), (8, 11), (11, 12), (12, 13), (13, 16), (16, 17), (17, 18), (18, 19), (19, 20)]:
            logits, cache = cached_forward(model, ids[:, a:b], cache)
            steps.append(logits)
        assert len(calls) == 8
        torch.testing.assert_close(torch.cat(steps, 1), full, **TOL)
        # the cache the caller holds is complete: a plain model continues from it
        assert cache.get_seq_length() == 20
        disable_native_decode(model)
        nxt = torch.tensor([[5]])
        cont, _ = cached_forward(model, nxt, cache)
        ref = model(input_ids=torch.cat([ids, nxt], 1), use_cache=False).logits[:, -1:]
    torch.testing.assert_close(cont, ref, **TOL)


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_batches_without_padding_take_the_native_step(name):
    model = _quantized(name)
    ids = torch.randint(3, VOCAB, (3, 6), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        tokens, scores = _generate(model, ids, n=10)
        enable_native_decode(model)
        calls = _native_calls(model)
        fast, fast_scores = _generate(model, ids, n=10)
    assert len(calls) == 9
    assert torch.equal(fast, tokens)
    torch.testing.assert_close(fast_scores, scores, **TOL)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_left_padded_batches_take_the_native_step(name):
    model = _quantized(name)
    ids = torch.randint(3, VOCAB, (3, 7), generator=torch.Generator().manual_seed(10))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # as a tokenizer pads a shorter prompt on the left
    mask[2, :1] = 0
    ids[mask == 0] = 0
    kw = dict(attention_mask=mask, max_new_tokens=8, pad_token_id=0, do_sample=False, output_scores=True,
              return_dict_in_generate=True)
    with torch.no_grad():
        plain = model.generate(ids, **kw)
        enable_native_decode(model)
        calls = _native_calls(model)
        fast = model.generate(ids, **kw)
    assert len(calls) == 7
    assert torch.equal(fast.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(fast.scores), torch.stack(plain.scores), **TOL)


def test_what_it_does_not_cover_runs_the_plain_path():
    model = _quantized("llama")
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(7))
    mask = torch.ones_like(ids)
    mask[1, 2] = 0  # a hole, not left padding
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=mask, max_new_tokens=6, pad_token_id=0, do_sample=False)
        enable_native_decode(model)
        calls = _native_calls(model)
        holed = model.generate(ids, attention_mask=mask, max_new_tokens=6, pad_token_id=0, do_sample=False)
        embeds = model(inputs_embeds=model.get_input_embeddings()(ids[:1]), use_cache=True)
    assert calls == []
    assert torch.equal(holed, plain)
    assert embeds.logits.shape == (1, 6, VOCAB)


def test_models_it_cannot_run_are_refused_by_name():
    with pytest.raises(NativeDecodeError, match="model_type 'gemma' is not covered"):
        enable_native_decode(_quantized("gemma"))
    with pytest.raises(NativeDecodeError, match=r"layer 0 self_attn.q_proj is a Linear, not a QuantLinear"):
        enable_native_decode(tiny_model("llama"))
    with pytest.raises(NativeDecodeError, match=r"sliding-window attention \(window 4096\)"):
        enable_native_decode(_quantized("mistral"))
    model = _quantized("llama").to(torch.bfloat16)
    with pytest.raises(NativeDecodeError, match="needs a float32 model"):
        enable_native_decode(model)
    assert not native_decode_enabled(model)
    hooked = _quantized("llama")
    hooked.forward = lambda *a, **k: None  # as accelerate's hooks replace it
    with pytest.raises(NativeDecodeError, match="forward is already replaced"):
        enable_native_decode(hooked)


def test_copies_and_moves_get_their_own_view_or_the_plain_path():
    model = _quantized("llama")
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        tokens, _ = _generate(model, ids, n=8)
        enable_native_decode(model)
        twin = copy.deepcopy(model)  # its own weights: it must not run the original's view
        for p in model.parameters():
            p.data.zero_()
        for b in model.buffers():
            if b.is_floating_point():
                b.zero_()
        twin_tokens, _ = _generate(twin, ids, n=8)
        assert twin.__dict__["_cat_native_decode"].native is not None
        assert twin.__dict__["_cat_native_decode"].native.model is twin
        assert torch.equal(twin_tokens, tokens)
        half = twin.to(torch.bfloat16)  # no longer fits: the plain path, in bfloat16
        half_tokens = half.generate(ids, max_new_tokens=4, attention_mask=torch.ones_like(ids), pad_token_id=0)
        assert half.__dict__["_cat_native_decode"].native is None
        assert "float32" in half.__dict__["_cat_native_decode"].failed
        assert half_tokens.shape == (1, 9)


def test_disable_restores_the_plain_forward():
    model = _quantized("llama")
    enable_native_decode(model)
    enable_native_decode(model)  # again: rebuilt, not stacked
    assert native_decode_enabled(model)
    assert disable_native_decode(model) and not native_decode_enabled(model)
    assert "forward" not in model.__dict__
    assert not disable_native_decode(model)


def test_loaded_checkpoints_take_the_native_step(tmp_path, monkeypatch):
    import cat_core  # noqa: F401  (registers the quantization method with transformers)
    from _quantized_models import llama, word_tokenizer
    from cat_core.io import load_quantized, save_quantized
    from transformers import AutoModelForCausalLM

    model = llama(seed=4)
    replace_linears(model, rtn_all(model, bits=4, group_size=32))
    save_quantized(model, tmp_path / "q", word_tokenizer(), progress=False)
    ids = torch.tensor([[1, 5, 17, 33, 9]])
    ours, _ = load_quantized(tmp_path / "q")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "q", device_map="cpu", dtype=torch.float32)
    assert native_decode_enabled(ours) and native_decode_enabled(hf)
    monkeypatch.setenv("CAT_NATIVE_DECODE", "0")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "q", device_map="cpu", dtype=torch.float32)
    assert not native_decode_enabled(plain)
    with torch.no_grad():
        ref, ref_scores = _generate(plain, ids, n=12)
        calls = _native_calls(hf)
        got, got_scores = _generate(hf, ids, n=12)
    assert len(calls) == 11 and torch.equal(got, ref)
    torch.testing.assert_close(got_scores, ref_scores, **TOL)
