"""cat-quantize --export gguf: DIR/model.gguf beside the native checkpoint, the summary naming
llama.cpp and the file, and the refusals before any work (bits, architecture, tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cat_apps import quantize

gguf = pytest.importorskip("gguf")

VOCAB = 288


def _bpe_tokenizer():
    """A byte-level BPE tokenizer trained here (offline), as Llama 3 / SmolLM2 / Qwen have."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rnd = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "words", "and", "more", "text"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([" ".join(rnd.choice(words, 10)) for _ in range(100)], trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<|endoftext|>")
    out.chat_template = "{% for m in messages %}{{ m['content'] }}</s>{% endfor %}"
    return out


@pytest.fixture(scope="module")
def bpe_llama_dir(tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    tok = _bpe_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    path = tmp_path_factory.mktemp("models") / "tiny-bpe-llama"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _err(capsys, rc: int, expected_rc: int, needle: str) -> None:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and "%|" not in ln and "it/s]" not in ln]
    assert rc == expected_rc, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert needle in lines[0], lines[0]


def test_export_gguf_writes_the_file_beside_the_native_checkpoint(bpe_llama_dir, tmp_path, capsys):
    from cat_core.io import load_quantized
    from gguf.quants import dequantize

    out = tmp_path / "q4"
    rc = quantize.main([str(bpe_llama_dir), "--bits", "4", "--sym", "--group-size", "64", "--n-samples", "2",
                        "--seqlen", "16", "--rounding", "nearest", "--no-quality", "--export", "gguf",
                        "--out", str(out), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    path = out / "model.gguf"
    assert cap.out.startswith(f"wrote {path} (GGUF Q4_0) and the native checkpoint beside it")
    assert "llama.cpp / Ollama / LM Studio (GGUF Q4_0): llama-cli -m " + str(path) in cap.out
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["gguf_file"] == "model.gguf" and q["source_model"] == str(bpe_llama_dir.absolute())
    # the GGUF's weights are the native checkpoint's (v_proj: no row reordering for Llama's RoPE)
    model, tok = load_quantized(out)
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    for layer in range(2):
        for hf, g in (("self_attn.v_proj", "attn_v"), ("mlp.down_proj", "ffn_down"), ("mlp.gate_proj", "ffn_gate")):
            t = tensors[f"blk.{layer}.{g}.weight"]
            assert t.tensor_type.name == "Q4_0"
            got = dequantize(t.data, t.tensor_type).reshape(int(t.shape[1]), -1)
            ref = model.get_submodule(f"model.layers.{layer}.{hf}").dequantize_weight().numpy()
            assert np.array_equal(got, ref)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.merges")}
    assert fields["tokenizer.ggml.model"] == "gpt2" and len(fields["tokenizer.ggml.tokens"]) == len(tok)
    assert fields["tokenizer.chat_template"] == tok.chat_template


def test_export_gguf_refusals_come_before_any_work(tiny_dir, tiny_gpt2_dir, tmp_path, capsys, monkeypatch):
    import cat_core.awq
    import cat_core.calib

    def no_work(*a, **k):
        raise AssertionError("calibration or AWQ ran before the refusal")

    for mod, name in ((cat_core.calib, "self_samples"), (cat_core.calib, "calibration_samples"),
                      (cat_core.awq, "quantize")):
        monkeypatch.setattr(mod, name, no_work)
    missing = str(tmp_path / "no-such-model")
    rc = quantize.main([missing, "--bits", "3", "--export", "gguf", "--out", str(tmp_path / "o")])
    _err(capsys, rc, 2, "--export gguf: GGUF holds Caterpillar's codes exactly as Q4_0/Q4_1 (4-bit) or Q8_0")
    rc = quantize.main([missing, "--bits", "8", "--export", "gguf", "--out", str(tmp_path / "o")])
    _err(capsys, rc, 2, "asymmetric 8-bit cannot be written; quantize with --sym")
    # the architecture, from config.json before the weights load
    rc = quantize.main([str(tiny_gpt2_dir), "--export", "gguf", "--out", str(tmp_path / "o")])
    _err(capsys, rc, 2, "this model is 'gpt2'")
    # the tokenizer (a word-level one), once loaded but before calibration and AWQ
    rc = quantize.main([str(tiny_dir), "--bits", "4", "--seqlen", "16", "--n-samples", "2", "--export", "gguf",
                        "--out", str(tmp_path / "o"), "--quiet"])
    _err(capsys, rc, 1, "is a WordLevel tokenizer; a GGUF export writes BPE tokenizers only")
    assert not (tmp_path / "o").exists()
