"""GGUF export, read back by the ``gguf`` package's own reader and dequantizer (gguf.GGUFReader,
gguf.quants.dequantize: an unpacker independent of ours), on tiny random Llama, Qwen2, Qwen3 and
Gemma 1/2/3 models: every quantized weight, the unquantized tensors, the hyperparameters and the
tokenizer; and the refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("cat_kernels")
gguf = pytest.importorskip("gguf")
sys.path.insert(0, str(Path(__file__).parent))
from _quantized_models import randomize, rtn_all, word_tokenizer  # noqa: E402
from cat_core.engines import GGUF_MODEL_TYPES, export_problem  # noqa: E402
from cat_core.io import export_gguf  # noqa: E402
from cat_core.nn import QuantLinear, replace_linears  # noqa: E402
from cat_core.quant import QuantizedTensor, dequantize  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 320
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FF = 128, 4, 2, 32, 192
ARCHS = ["llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"]
CONTROL, USER_DEFINED, NORMAL, UNUSED, BYTE = 3, 4, 1, 5, 6


def _config(arch: str, **extra):
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FF, num_hidden_layers=2,
                  num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, rms_norm_eps=1e-5)
    gemma = dict(head_dim=HEAD_DIM, query_pre_attn_scalar=HEAD_DIM)
    make = {
        "llama": lambda: tf.LlamaConfig(**common, rope_theta=50000.0),
        "qwen2": lambda: tf.Qwen2Config(**common),
        "qwen3": lambda: tf.Qwen3Config(**common, head_dim=HEAD_DIM),
        "gemma": lambda: tf.GemmaConfig(**common, head_dim=HEAD_DIM),
        "gemma2": lambda: tf.Gemma2Config(**common, **gemma, sliding_window=16),
        # a global first layer: not llama.cpp's default pattern, so the file lists the layers
        "gemma3": lambda: tf.Gemma3TextConfig(**common, **gemma, sliding_window=16,
                                              layer_types=["full_attention", "sliding_attention"]),
    }
    cfg = make[arch]()
    for k, v in extra.items():
        setattr(cfg, k, v)
    return cfg


def _model(arch: str, seed: int = 0, **extra):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, **extra), dtype=torch.float32).eval()
    return randomize(model, seed + 1)


def _quantized(arch, bits=4, group_size=32, sym=True, scale_dtype="float16", seed=0, **extra):
    model = _model(arch, seed, **extra)
    q = rtn_all(model, bits=bits, group_size=group_size, sym=sym, scale_dtype=scale_dtype)
    return replace_linears(model, q), q


def bpe_tokenizer():
    """A byte-level BPE tokenizer trained here (offline, deterministic), with three special
    tokens, one added non-special token and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world", "tokens", "merge"]
    rnd = np.random.default_rng(0)
    text = [" ".join(rnd.choice(words, 12)) + f" {int(rnd.integers(0, 999))}." for _ in range(200)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 8, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(text, trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>")
    out.add_tokens(["<think>"])
    out.chat_template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    return out


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


def _read(path: Path):
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def _weight(t) -> np.ndarray:
    """A GGUF tensor as float32 [rows, columns], by the gguf package's dequantizer."""
    rows = int(t.shape[-1]) if len(t.shape) > 1 else 1
    return np.asarray(gguf_dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(rows, -1)


def _gguf_name(hf: str) -> str:
    parts = hf.split(".")
    layer = parts[2]
    short = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}[parts[-1]]
    return f"blk.{layer}.{short}.weight"


def _hf_rows(w: np.ndarray, arch: str, hf: str) -> np.ndarray:
    """Undo llama.cpp's q/k row order for Llama: GGUF row (head, i, j) is HF row (head, j, i) with
    i < head_dim/2, j < 2 (GGML's normal RoPE rotates adjacent rows, HF the two halves)."""
    if arch != "llama" or hf.split(".")[-1] not in ("q_proj", "k_proj"):
        return w
    heads = HEADS if hf.endswith("q_proj") else KV_HEADS
    return w.reshape(heads, HEAD_DIM // 2, 2, -1).transpose(0, 2, 1, 3).reshape(w.shape)


def _half_ulp_fp16(x: np.ndarray) -> np.ndarray:
    """Half the spacing of float16 numbers at |x|: 2**(e - 11) with e = floor(log2|x|), e >= -14
    (subnormals are spaced 2**-24). Round-to-nearest moves x by at most this much."""
    ax = np.abs(x.astype(np.float64))
    e = np.floor(np.log2(np.where(ax > 0, ax, 1.0)))
    return np.where(ax > 0, 2.0 ** (np.maximum(e, -14) - 11), 0.0)


# (bits, group size, symmetric) -> the block type that holds them
SETTINGS = [(4, 32, True, "Q4_0"), (4, 64, False, "Q4_1"), (8, 32, True, "Q8_0"), (4, -1, True, "Q4_0"),
            (8, 128, True, "Q8_0")]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("bits, group_size, sym, kind", SETTINGS)
def test_every_quantized_weight_reads_back_as_ours(tmp_path, tok, arch, bits, group_size, sym, kind):
    model, q = _quantized(arch, bits, group_size, sym, seed=bits + group_size)
    path = export_gguf(model, tmp_path / "m.gguf", tok, progress=False)
    fields, tensors = _read(path)
    assert fields["general.file_type"] == {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7}[kind]
    worst = 0.0
    for name, qt in q.items():
        t = tensors[_gguf_name(name)]
        assert t.tensor_type.name == kind, name
        got = _hf_rows(_weight(t), arch, name)
        ours = dequantize(qt, torch.float32).numpy()
        assert got.shape == ours.shape
        if kind != "Q4_1":  # Q4_0 / Q8_0: d = s and the codes as they are: bit for bit
            assert np.array_equal(got, ours), name
            continue
        # Q4_1 stores m = -s*z rounded to float16 once per 32-weight block; d*q is exact and so is
        # d*q + m in float32 (both multiples of s's float16 spacing, |sum| < 2**16 of them), so
        # each weight differs from (q - z) * s by exactly that rounding: at most half a float16
        # ulp of s*z, and equal to it
        g = qt.shape[1] if qt.group_size == -1 else qt.group_size
        s = np.repeat(qt.scales.float().numpy(), g, axis=1).astype(np.float64)
        z = np.repeat(qt.zeros.numpy(), g, axis=1).astype(np.float64)
        m = -s * z
        diff = got.astype(np.float64) - ours.astype(np.float64)
        assert np.array_equal(diff, m.astype(np.float16).astype(np.float64) - m), name
        assert (np.abs(diff) <= _half_ulp_fp16(m)).all(), name
        worst = max(worst, float(np.abs(diff).max()))
    if kind == "Q4_1":
        assert worst > 0  # the rounding is real: the bound above is what it is checked against
    # the layers' own dequantization (the kernels') is the same weight
    for name in q:
        ref = model.get_submodule(name).dequantize_weight().numpy()
        assert np.array_equal(ref, dequantize(q[name], torch.float32).numpy())


@pytest.mark.parametrize("arch", ARCHS)
def test_unquantized_tensors_hyperparameters_and_tokenizer(tmp_path, tok, arch):
    model, _ = _quantized(arch)
    path = export_gguf(model, tmp_path / "m.gguf", tok, dtype=torch.float16, progress=False)
    fields, tensors = _read(path)
    name = {"gemma3": "gemma3"}.get(arch, arch)
    assert fields["general.architecture"] == name
    p = name + "."
    cfg = model.config
    assert fields[p + "block_count"] == 2 and fields[p + "context_length"] == 256
    assert fields[p + "embedding_length"] == HIDDEN and fields[p + "feed_forward_length"] == FF
    assert fields[p + "attention.head_count"] == HEADS and fields[p + "attention.head_count_kv"] == KV_HEADS
    assert fields[p + "attention.key_length"] == HEAD_DIM and fields[p + "rope.dimension_count"] == HEAD_DIM
    assert fields[p + "attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert fields[p + "rope.freq_base"] == (50000.0 if arch == "llama" else
                                            cfg.rope_parameters.get("full_attention", cfg.rope_parameters)["rope_theta"])
    if arch == "gemma2":
        assert fields[p + "attention.sliding_window"] == 16
        assert fields[p + "attn_logit_softcapping"] == pytest.approx(50.0)
        assert p + "attention.sliding_window_pattern" not in fields  # llama.cpp's default: every 2nd global
    if arch == "gemma3":
        assert fields[p + "attention.sliding_window"] == 16
        assert fields[p + "rope.freq_base_swa"] == 10000.0
        assert list(fields[p + "attention.sliding_window_pattern"]) == [False, True]

    # embedding in float16, 1-D tensors in float32 of the float16-stored value, Gemma's norms as 1 + w
    emb = tensors["token_embd.weight"]
    assert emb.tensor_type.name == "F16"
    assert np.array_equal(_weight(emb), model.model.embed_tokens.weight.detach().half().float().numpy())
    offset = 1.0 if arch.startswith("gemma") else 0.0
    layer = model.model.layers[1]
    norms = {"blk.1.attn_norm.weight": layer.input_layernorm.weight, "output_norm.weight": model.model.norm.weight}
    if arch in ("qwen3", "gemma3"):
        norms["blk.1.attn_q_norm.weight"] = layer.self_attn.q_norm.weight
        norms["blk.1.attn_k_norm.weight"] = layer.self_attn.k_norm.weight
    if arch in ("gemma2", "gemma3"):
        norms["blk.1.post_ffw_norm.weight"] = layer.post_feedforward_layernorm.weight
        norms["blk.1.post_attention_norm.weight"] = layer.post_attention_layernorm.weight
        norms["blk.1.ffn_norm.weight"] = layer.pre_feedforward_layernorm.weight
    else:
        norms["blk.1.ffn_norm.weight"] = layer.post_attention_layernorm.weight
    for gname, w in norms.items():
        t = tensors[gname]
        assert t.tensor_type.name == "F32", gname
        assert np.array_equal(np.asarray(t.data), w.detach().half().float().numpy() + np.float32(offset)), gname
    if arch == "qwen2":  # biases of q/k/v, in float32
        b = tensors["blk.0.attn_q.bias"]
        assert b.tensor_type.name == "F32"
        assert np.array_equal(np.asarray(b.data), model.model.layers[0].self_attn.q_proj.bias.detach().half().float().numpy())
    if cfg.tie_word_embeddings:
        assert "output.weight" not in tensors
    else:
        assert np.array_equal(_weight(tensors["output.weight"]), model.lm_head.weight.detach().half().float().numpy())
    n_tensors = 3 + 2 * (9 + {"qwen2": 3, "qwen3": 2, "gemma2": 2, "gemma3": 4}.get(arch, 0))
    assert len(tensors) == n_tensors - cfg.tie_word_embeddings

    # tokenizer: tokens, types, merges, special ids, chat template
    vocab = tok.get_vocab()
    tokens = list(fields["tokenizer.ggml.tokens"])
    types = list(fields["tokenizer.ggml.token_type"])
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert len(tokens) == VOCAB and all(tokens[i] == t for t, i in vocab.items())
    assert types[vocab["<|im_start|>"]] == CONTROL and types[vocab["<think>"]] == USER_DEFINED
    assert types[vocab["Ġthe"]] == NORMAL and tokens[VOCAB - 1] == f"[PAD{VOCAB - 1}]" and types[VOCAB - 1] == UNUSED
    assert len(fields["tokenizer.ggml.merges"]) > 50
    assert fields["tokenizer.ggml.bos_token_id"] == vocab["<|im_start|>"]
    assert fields["tokenizer.ggml.eos_token_id"] == vocab["<|im_end|>"]
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == tok.chat_template


def test_merges_are_the_tokenizers_in_rank_order(tmp_path, tok):
    import json

    model, _ = _quantized("qwen2")
    fields, _ = _read(export_gguf(model, tmp_path / "m.gguf", tok, progress=False))
    ranked = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert len(ranked) > 50
    assert list(fields["tokenizer.ggml.merges"]) == [f"{a} {b}" for a, b in ranked]


def test_bfloat16_scales_are_exact_and_float32_ones_refused(tmp_path, tok):
    model, q = _quantized("llama", 4, 32, True, scale_dtype="bfloat16")
    _, tensors = _read(export_gguf(model, tmp_path / "b.gguf", tok, progress=False))
    name = "model.layers.0.mlp.down_proj"
    assert np.array_equal(_weight(tensors["blk.0.ffn_down.weight"]), dequantize(q[name], torch.float32).numpy())
    model, _ = _quantized("llama", 4, 32, True, scale_dtype="float32")
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.q_proj: \d+ of its 512 block scales \(float32\) "
                                         r"are not float16 numbers.*relative.*scale_dtype float16"):
        export_gguf(model, tmp_path / "f.gguf", tok, progress=False)
    assert not (tmp_path / "f.gguf").exists()


def test_llama3_rope_factors_give_transformers_frequencies(tmp_path, tok):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    model, _ = _quantized("llama", rope_parameters=rope)
    model.model.rotary_emb.__init__(model.config)  # the config changed after the model was built
    _, tensors = _read(export_gguf(model, tmp_path / "m.gguf", tok, progress=False))
    factors = np.asarray(tensors["rope_freqs.weight"].data, dtype=np.float64)
    base = 1.0 / 500000.0 ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    hf = model.model.rotary_emb.inv_freq.double().numpy()
    assert (factors != 1).any() and (factors != 8).any()  # all three regimes present
    np.testing.assert_allclose(base / factors, hf, rtol=1e-6)


@pytest.mark.parametrize("keep", [0, 10**9], ids=["nothing-kept", "all-kept"])
def test_a_model_read_block_by_block_exports_the_same_file(tmp_path, tok, keep):
    """cat-quantize reads Hugging Face models lazily (cat_core.stream): the export reads each
    tensor from where it lives (memory, spill, checkpoint) and writes the same bytes."""
    from cat_core.awq import quantize
    from cat_core.config import Nearest, QuantConfig
    from cat_core.stream import lazy_weights, load_lazy
    from transformers import AutoModelForCausalLM

    src = tmp_path / "src"
    _model("qwen2").to(torch.bfloat16).save_pretrained(src)
    config = QuantConfig(bits=4, group_size=32, sym=False, rounding=Nearest())
    ids = torch.randint(3, VOCAB, (4, 24), generator=torch.Generator().manual_seed(0))
    whole = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    replace_linears(whole, quantize(whole, None, config, calib=ids, progress=False).tensors)
    a = export_gguf(whole, tmp_path / "whole.gguf", tok, dtype=torch.bfloat16, progress=False)
    lazy_model = load_lazy(src, keep_bytes=keep)
    quantize(lazy_model, None, config, calib=ids, progress=False)
    if keep:
        with torch.no_grad():
            lazy_model(ids[:1])  # with room, the packed blocks are resident when the export reads them
    b = export_gguf(lazy_model, tmp_path / "lazy.gguf", tok, dtype=torch.bfloat16, progress=False)
    assert a.read_bytes() == b.read_bytes()
    lazy_weights(lazy_model).close()


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("bits, sym, needle", [(3, False, "3-bit asymmetric"), (2, True, "2-bit symmetric"),
                                               (8, False, "8-bit asymmetric.*Q8_0 has no zero point")])
def test_bit_widths_without_an_exact_block_type_are_refused(tmp_path, tok, bits, sym, needle):
    model, _ = _quantized("llama", bits, 32, sym)
    with pytest.raises(ValueError, match=f"model.layers.0.self_attn.q_proj: {needle}"):
        export_gguf(model, tmp_path / "m.gguf", tok, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_in_features_not_a_multiple_of_32_is_refused(tmp_path, tok):
    model, _ = _quantized("llama")
    odd = QuantLinear.from_quantized_tensor(QuantizedTensor(
        torch.zeros(HIDDEN, 48, dtype=torch.uint8), torch.ones(HIDDEN, 1, dtype=torch.float16), None, 4, -1))
    model.model.layers[1].mlp.down_proj = odd
    with pytest.raises(ValueError, match="model.layers.1.mlp.down_proj: in_features=48 is not a multiple of 32"):
        export_gguf(model, tmp_path / "m.gguf", tok, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arch", ["gpt2", "falcon", "mistral"])
def test_other_architectures_are_refused_by_model_type(tmp_path, tok, arch):
    from _tiny_models import tiny_model

    model = tiny_model(arch)
    replace_linears(model, rtn_all(model, bits=4, group_size=-1, sym=True))
    with pytest.raises(ValueError, match=f"model: llama.cpp export supports model types llama, .*; this model is '{arch}'"):
        export_gguf(model, tmp_path / "m.gguf", tok, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_config_llama_cpp_would_run_differently_is_refused(tmp_path, tok):
    model, _ = _quantized("gemma3", query_pre_attn_scalar=64)
    with pytest.raises(ValueError, match=r"query_pre_attn_scalar=64.*1/sqrt\(32\)"):
        export_gguf(model, tmp_path / "a.gguf", tok, progress=False)
    model, _ = _quantized("llama", rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0})
    with pytest.raises(ValueError, match="rope_type 'yarn'"):
        export_gguf(model, tmp_path / "b.gguf", tok, progress=False)
    model, _ = _quantized("gemma")
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach() * 2)
    with pytest.raises(ValueError, match="always ties the output to the embedding"):
        export_gguf(model, tmp_path / "c.gguf", tok, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_path_tokenizer_and_overwrite(tmp_path, tok):
    model, _ = _quantized("qwen3")
    with pytest.raises(ValueError, match="path must name a .gguf file"):
        export_gguf(model, tmp_path / "m.bin", tok, progress=False)
    with pytest.raises(ValueError, match="tokenizer: .*needs the model's tokenizer"):
        export_gguf(model, tmp_path / "m.gguf", None, progress=False)
    with pytest.raises(ValueError, match="tokenizer: .* is a WordLevel tokenizer"):
        export_gguf(model, tmp_path / "m.gguf", word_tokenizer(VOCAB), progress=False)
    assert list(tmp_path.iterdir()) == []
    path = export_gguf(model, tmp_path / "m.gguf", tok, progress=False)
    with pytest.raises(FileExistsError):
        export_gguf(model, path, tok, progress=False)
    size = path.stat().st_size
    export_gguf(model, path, tok, progress=False, dtype=torch.float16, overwrite=True)
    assert path.stat().st_size < size and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_export_problem_decides_before_any_work():
    assert GGUF_MODEL_TYPES == ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
    for bits, gs, sym in ((4, 32, True), (4, 128, False), (8, 64, True), (4, -1, False), (4, "auto", True)):
        assert export_problem("gguf", bits, gs, sym, "qwen3") is None
    assert "not 3-bit" in export_problem("gguf", 3, 32, False)
    assert "--sym" in export_problem("gguf", 8, 32, False)
    assert "multiple of 32 or -1, got 48" in export_problem("gguf", 4, 48, True)
    assert "this model is 'gpt2'" in export_problem("gguf", 4, 32, True, "gpt2")


# ----------------------------------------------------------------------------- tokenizers


def _with_pre_tokenizer(pre, normalizer=None):
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    base = bpe_tokenizer().backend_tokenizer
    tok = Tokenizer(models.BPE(vocab=base.get_vocab(), merges=[tuple(m) for m in
                                                               __import__("json").loads(base.to_str())["model"]["merges"]]))
    tok.pre_tokenizer = pre
    tok.normalizer = normalizer
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")


def test_byte_level_pre_tokenizers_map_to_llama_cpp_names():
    from cat_core.io._gguf_vocab import _LLAMA3_SPLIT, _QWEN2_SPLIT, vocab_of
    from tokenizers import Regex, normalizers
    from tokenizers import pre_tokenizers as pt

    def split(rx):
        return pt.Sequence([pt.Split(Regex(rx), behavior="isolated"), pt.ByteLevel(add_prefix_space=False, use_regex=False)])

    cases = {
        "gpt-2": (pt.ByteLevel(add_prefix_space=False), None),
        "smollm": (pt.Sequence([pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False)]), None),
        "llama-bpe": (split(_LLAMA3_SPLIT), None),
        "qwen2": (split(_QWEN2_SPLIT), normalizers.NFC()),
    }
    for name, (pre, norm) in cases.items():
        assert vocab_of(_with_pre_tokenizer(pre, norm), VOCAB).pre == name
    for pre in (pt.ByteLevel(add_prefix_space=True), pt.Sequence([pt.Whitespace(), pt.ByteLevel()]),
                split(_LLAMA3_SPLIT.replace("{1,3}", "{1,2}"))):
        with pytest.raises(ValueError, match="not one llama.cpp implements the same way"):
            vocab_of(_with_pre_tokenizer(pre), VOCAB)


def _spm_tokenizer():
    """A SentencePiece-style BPE (byte fallback, spaces as ▁, Gemma's normalizer), trained here."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = ["the", "then", "there", "quick", "quiet", "brown", "browse", "fox", "foxes", "ab", "abc", "bc"]
    rnd = np.random.default_rng(1)
    text = [" ".join(rnd.choice(words, 10)) for _ in range(300)]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB + 40, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", *bytes_],
                                  show_progress=False)
    tok.train_from_iterator(text, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>")


def _llama_cpp_spm(text: str, tokens: list[str], scores: list[float]) -> list[int]:
    """llama.cpp's "llama" tokenizer as its source describes it: spaces become ▁, the text is cut
    into characters, and the adjacent pair whose concatenation is a token with the highest score
    (leftmost on ties) is merged until none is; leftover characters fall back to <0xXX> bytes."""
    ids = {t: i for i, t in enumerate(tokens)}
    syms = list(text.replace(" ", "▁"))
    while True:
        best = None
        for i in range(len(syms) - 1):
            j = ids.get(syms[i] + syms[i + 1])
            if j is not None and (best is None or scores[j] > best[0]):
                best = (scores[j], i)
        if best is None:
            break
        i = best[1]
        syms[i:i + 2] = [syms[i] + syms[i + 1]]
    out = []
    for s in syms:
        out.extend([ids[s]] if s in ids else [ids[f"<0x{b:02X}>"] for b in s.encode()])
    return out


def test_sentencepiece_style_tokenizer_is_written_as_llama_with_merge_order_scores(tmp_path):
    from cat_core.io._gguf_vocab import vocab_of

    spm = _spm_tokenizer()
    n = len(spm)
    v = vocab_of(spm, n)
    assert v.model == "llama" and v.merges is None and v.add_space_prefix is False
    assert v.types[spm.convert_tokens_to_ids("<0x41>")] == BYTE and v.types[spm.eos_token_id] == CONTROL
    texts = ["the quick brown fox", "then there browse foxes", "abc bc ab the", "quiet ÿ€ the", "xyz foxes"]
    for text in texts:
        assert _llama_cpp_spm(text, v.tokens, v.scores) == spm.encode(text, add_special_tokens=False), text
    # merge order decides: "bc" before "ab" before "▁a" (equal scores or reversed ones would not);
    # the list holds every split of each piece, as conversions of SentencePiece models write it
    from tokenizers import Tokenizer, models, normalizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", *(f"<0x{i:02X}>" for i in range(256)), "a", "b", "c", "▁", "bc", "ab", "▁a", "▁ab"]
    hand = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, unk_token="<unk>", byte_fallback=True,
                                merges=[("b", "c"), ("a", "b"), ("▁", "a"), ("▁a", "b"), ("▁", "ab")]))
    hand.normalizer = normalizers.Replace(" ", "▁")
    hand = PreTrainedTokenizerFast(tokenizer_object=hand, unk_token="<unk>")
    hv = vocab_of(hand, len(pieces))
    for text in ["abc", " abc", "cab", "abcab", " ab d"]:
        assert _llama_cpp_spm(text, hv.tokens, hv.scores) == hand.encode(text, add_special_tokens=False), text
    assert _llama_cpp_spm(" abc", hv.tokens, [-x for x in hv.scores]) != hand.encode(" abc", add_special_tokens=False)
    # and in a file, for a Gemma model whose embedding has that many rows
    model, _ = _quantized("gemma", vocab_size=n)
    fields, _ = _read(export_gguf(model, tmp_path / "g.gguf", spm, progress=False))
    assert fields["tokenizer.ggml.model"] == "llama" and fields["tokenizer.ggml.add_space_prefix"] is False
    assert list(fields["tokenizer.ggml.scores"]) == pytest.approx(v.scores)
