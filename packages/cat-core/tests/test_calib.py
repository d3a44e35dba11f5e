"""Calibration samples from every kind of source, with a tokenizer built offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cat_core.calib import CalibError, calibration_samples
from cat_core.config import CalibConfig

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hum "
         "old songs about rivers mountains and distant cities").split()


def _docs(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (40,), generator=g).tolist())
            for _ in range(n)]


def tiny_tokenizer(texts: list[str] | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for t in texts or [" ".join(WORDS)]:
        for w in t.split():
            vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_list_of_strings_shape_and_determinism(tok):
    docs = _docs(30)
    cfg = CalibConfig(source=docs, n_samples=6, seqlen=32, seed=3)
    a = calibration_samples(cfg, tok)
    assert a.shape == (6, 32) and a.dtype == torch.long
    assert torch.equal(a, calibration_samples(cfg, tok))
    b = calibration_samples(CalibConfig(source=docs, n_samples=6, seqlen=32, seed=4), tok)
    assert not torch.equal(a, b)
    # every window is a slice of the concatenated token stream
    stream = tok("\n\n".join(docs), add_special_tokens=False)["input_ids"]
    rows = {tuple(stream[i:i + 32]) for i in range(0, len(stream) - 31, 32)}
    assert all(tuple(r) in rows for r in a.tolist())


def test_too_short_names_source_and_counts(tok):
    with pytest.raises(CalibError) as e:
        calibration_samples(CalibConfig(source=_docs(2), n_samples=8, seqlen=32), tok)
    msg = str(e.value)
    assert "2 strings" in msg and "80 tokens available" in msg and "256 needed" in msg


def _write_all(tmp_path: Path, docs: list[str]) -> dict[str, Path]:
    paths = {}
    p = tmp_path / "d.txt"
    p.write_text("\n".join(docs) + "\n")
    paths["txt"] = p
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    paths["jsonl"] = p
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"body": d} for d in docs]))
    paths["json"] = p
    p = tmp_path / "d.csv"
    p.write_text("body,id\n" + "".join(f'"{d}",{i}\n' for i, d in enumerate(docs)))
    paths["csv"] = p
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        pass
    else:
        p = tmp_path / "d.parquet"
        pq.write_table(pa.table({"body": docs}), p)
        paths["parquet"] = p
    return paths


def test_local_files_of_each_kind_agree(tmp_path, tok):
    pytest.importorskip("datasets")
    docs = _docs(20, seed=1)
    expect = calibration_samples(CalibConfig(source=docs, n_samples=4, seqlen=16), tok)
    for kind, path in _write_all(tmp_path, docs).items():
        column = "text" if kind == "txt" else "body"
        got = calibration_samples(CalibConfig(source=str(path), n_samples=4, seqlen=16, text_column=column), tok)
        assert torch.equal(got, expect), kind


def test_local_errors(tmp_path, tok):
    with pytest.raises(CalibError, match="does not exist"):
        calibration_samples(CalibConfig(source=str(tmp_path / "missing.jsonl")), tok)
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"body": "x"}) + "\n")
    pytest.importorskip("datasets")
    with pytest.raises(CalibError, match=r"no column 'text'.*\['body'\]"):
        calibration_samples(CalibConfig(source=str(p)), tok)
    (tmp_path / "e.bin").write_text("x")
    with pytest.raises(CalibError, match="unsupported calibration file"):
        calibration_samples(str(tmp_path / "e.bin"), tok)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibError, match="no calibration files"):
        calibration_samples(str(tmp_path / "empty"), tok)


def test_hub_name_offline_fails_fast(monkeypatch, tok):
    pytest.importorskip("datasets")
    import time

    import cat_core.calib as calib

    monkeypatch.setattr(calib, "_network_reachable", lambda url: False)
    t = time.time()
    with pytest.raises(CalibError, match=r"cannot reach .* \(offline\?\)"):
        calibration_samples("someone/some-dataset", tok)
    assert time.time() - t < 5


def test_network_probe_is_bounded():
    import time

    import cat_core.calib as calib

    t = time.time()
    calib._network_reachable("https://10.255.255.1:9")  # unroutable: must time out, not hang
    assert time.time() - t < calib._NETWORK_PROBE_S + 2


def test_pretokenized_tensor_passes_through():
    ids = torch.randint(0, 10, (3, 8), dtype=torch.int32)
    assert torch.equal(calibration_samples(ids), ids.long())
    with pytest.raises(CalibError):
        calibration_samples(torch.zeros(3))


def test_self_samples_from_model(tok):
    model = _tiny_lm(tok, layers=1)
    c = CalibConfig(source="self", n_samples=3, seqlen=12, seed=5)
    a = calibration_samples(c, tok, model)
    assert a.shape == (3, 12) and bool((a[:, 0] == tok.bos_token_id).all())
    assert torch.equal(a, calibration_samples(c, tok, model))
    assert int(a.max()) < len(tok)
    with pytest.raises(CalibError, match="model="):
        calibration_samples(c, tok)


@pytest.mark.skipif(not (SHARED / "wikitext2-valid.txt").exists(), reason="shared test text absent")
def test_real_text_file():
    text = (SHARED / "lee-background.txt").read_text()[:200_000]
    tok = tiny_tokenizer([text])
    cfg = CalibConfig(source=str(SHARED / "lee-background.txt"), n_samples=16, seqlen=128)
    ids = calibration_samples(cfg, tok)
    assert ids.shape == (16, 128) and int((ids == 0).sum()) < ids.numel() // 4


def test_self_sampling_batches_fit_the_kv_budget(tok, monkeypatch):
    import cat_core.calib as calib

    model = _tiny_lm(tok, layers=3)
    per_seq = 2 * 3 * 1 * 16 * 12 * 4  # K and V, layers, kv heads, head dim, tokens, fp32 bytes
    assert calib._self_batch(model, 12, torch.float32) == calib._SELF_MAX_BATCH
    monkeypatch.setattr(calib, "_SELF_KV_BUDGET", 2 * per_seq + 1)
    assert calib._self_batch(model, 12, torch.float32) == 2
    assert calib._self_batch(model, 12, torch.bfloat16) == 4
    assert calib._self_batch(torch.nn.Linear(2, 2), 12, torch.float32) == calib._SELF_FALLBACK_BATCH
    c = CalibConfig(source="self", n_samples=5, seqlen=12, seed=1)
    a = calibration_samples(c, tok, model)  # batches of 2, 2, 1
    assert a.shape == (5, 12) and bool((a[:, 0] == tok.bos_token_id).all())
    assert torch.equal(a, calibration_samples(c, tok, model))


def test_self_sampling_shows_progress(tok, capsys):
    model = _tiny_lm(tok, layers=1)
    c = CalibConfig(source="self", n_samples=3, seqlen=12, seed=5)
    quiet = calibration_samples(c, tok, model)
    assert "sampling" not in capsys.readouterr().err
    loud = calibration_samples(c, tok, model, progress=True)
    err = capsys.readouterr().err
    assert "sampling 3 x 12 tokens" in err and "11/11" in err
    assert torch.equal(quiet, loud)


def _tiny_lm(tok, layers: int):
    """A random Llama over ``tok``'s vocabulary: 1 KV head of dim 16 per layer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_self_samples_share_one_pass_and_equal_separate_runs(tok, capsys):
    from cat_core.calib import self_samples

    model = _tiny_lm(tok, layers=2)
    long = CalibConfig(source="self", n_samples=3, seqlen=12, seed=5)
    short = CalibConfig(source="self", n_samples=2, seqlen=7, seed=1234)
    a, b = self_samples(model, tok, [long, short], progress=True)
    err = capsys.readouterr().err
    assert "sampling 3 x 12 + 2 x 7 tokens (one batch of 5)" in err and "11/11" in err  # 11 steps, not 17
    assert a.shape == (3, 12) and b.shape == (2, 7)
    assert torch.equal(a, calibration_samples(long, tok, model))
    assert torch.equal(b, calibration_samples(short, tok, model))
    # the shorter config first: its rows stop drawing at 7 tokens, the others go on
    b2, a2 = self_samples(model, tok, [short, long])
    assert torch.equal(a2, a) and torch.equal(b2, b)


def test_self_samples_too_wide_for_one_batch_run_one_after_the_other(tok, monkeypatch, capsys):
    import cat_core.calib as calib

    model = _tiny_lm(tok, layers=1)
    long = CalibConfig(source="self", n_samples=3, seqlen=12, seed=5)
    short = CalibConfig(source="self", n_samples=2, seqlen=7, seed=1234)
    together = calib.self_samples(model, tok, [long, short])
    per_seq = 2 * 1 * 1 * 16 * 12 * 4
    monkeypatch.setattr(calib, "_SELF_KV_BUDGET", 4 * per_seq)  # 4 rows at 12 tokens: 5 do not fit
    a, b = calib.self_samples(model, tok, [long, short], progress=True)
    err = capsys.readouterr().err
    assert "one batch" not in err and "sampling 3 x 12 tokens" in err and "sampling 2 x 7 tokens" in err
    assert torch.equal(a, together[0]) and torch.equal(b, together[1])
    assert calib.self_samples(model, tok, []) == []
    with pytest.raises(CalibError, match="source='self'"):
        calib.self_samples(model, tok, [CalibConfig(source=_docs(2), n_samples=2, seqlen=8)])
