"""The four commands: --help, bad input (one line, exit code, no traceback), and an end-to-end run
quantize -> generate -> eval -> bench on a tiny random Llama saved as an HF directory."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cat_apps import _models, bench, generate, quantize
from cat_apps import eval as cat_eval

COMMANDS = {"cat-quantize": quantize, "cat-generate": generate, "cat-bench": bench, "cat-eval": cat_eval}
REPO = Path(__file__).resolve().parents[3]


def _one_line_error(capsys, rc: int, expected_rc: int = 1, needle: str = "") -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line and "it/s]" not in line]
    assert rc == expected_rc, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- help


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_explains_every_option(name, capsys):
    mod = COMMANDS[name]
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {name}")
    for action in mod.build()._actions:
        for opt in action.option_strings:
            assert opt in out
        if action.dest != "help":
            assert action.help, f"{name}: {action.dest} has no help text"


def test_console_scripts_declared():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    for name, mod in COMMANDS.items():
        assert f'{name} = "{mod.__name__}:main"' in text


def test_help_as_a_process():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "packages/cat-core/src"), str(REPO / "packages/cat-apps/src")])}
    r = subprocess.run([sys.executable, "-m", "cat_apps.quantize", "--help"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0 and "--group-size" in r.stdout


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_missing_model_path(name, tmp_path, capsys):
    missing = str(tmp_path / "nope")
    argv = {"cat-quantize": [missing, "--out", str(tmp_path / "o")],
            "cat-generate": [missing, "--prompt", "hi"],
            "cat-bench": [missing],
            "cat-eval": [missing]}[name]
    rc = COMMANDS[name].main(argv)
    _one_line_error(capsys, rc, 1, "does not exist")
    assert not (tmp_path / "o").exists()


def test_hub_id_without_network_is_fast_and_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(_models, "network_reachable", lambda *a, **k: False)
    rc = quantize.main(["some-org/some-model", "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, 1, "no network")
    assert not (tmp_path / "o").exists()


def test_hub_id_offline_mode_not_cached(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    rc = generate.main(["some-org/some-model", "--prompt", "x"])
    _one_line_error(capsys, rc, 1, "not in the local cache")


def test_output_exists_refused_without_overwrite(tiny_dir, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = quantize.main([str(tiny_dir), "--out", str(out)])
    _one_line_error(capsys, rc, 1, "already exists")
    assert (out / "keep.txt").read_text() == "mine"


def test_group_size_that_does_not_divide(tmp_path, capsys, make_tiny):
    d = make_tiny(tmp_path / "odd", hidden=96, inter=192)  # 96 % 64 != 0
    rc = quantize.main([str(d), "--group-size", "64", "--seqlen", "64", "--out", str(tmp_path / "o"), "--quiet"])
    line = _one_line_error(capsys, rc, 1, "group_size=64")
    assert "model.layers.0." in line and "valid group sizes" in line and "32" in line
    assert not (tmp_path / "o").exists()


def test_group_size_not_a_multiple_of_32(tiny_dir, tmp_path, capsys):
    rc = quantize.main([str(tiny_dir), "--group-size", "48", "--out", str(tmp_path / "o"), "--quiet"])
    _one_line_error(capsys, rc, 2, "group_size=48")


def test_unsupported_architecture(tmp_path, capsys, tiny_tok):
    # a real architecture the layer graph cannot handle: Mamba's x_proj reads a transposed
    # convolution output that no module produces
    from transformers import AutoModelForCausalLM, MambaConfig

    src = tmp_path / "mamba"
    cfg = MambaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=1, state_size=4)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(src)
    tiny_tok.save_pretrained(src)
    rc = quantize.main([str(src), "--out", str(tmp_path / "o"), "--n-samples", "2", "--seqlen", "16", "--quiet"])
    line = _one_line_error(capsys, rc, 1, "the layer graph cannot handle this MambaForCausalLM")
    assert "x_proj" in line
    assert not (tmp_path / "o").exists()


def test_not_a_causal_lm(tmp_path, capsys):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    rc = generate.main([str(d), "--prompt", "x", "--quiet"])
    _one_line_error(capsys, rc, 1)


def test_bad_argument_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        quantize.main(["--bits", "5", "--out", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--bits" in err[0]


@pytest.mark.parametrize("module, function", [("cat_core.awq", "quantize"), ("cat_core.io._shards", "_write_shard")],
                         ids=["mid-quantization", "while-saving"])
def test_ctrl_c_leaves_nothing(module, function, tiny_dir, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), function, interrupted)
    monkeypatch.setenv("CAT_QUIET_PROGRESS_S", "1e9")  # a slow machine's minute lines are not the error
    out = tmp_path / "o"
    rc = quantize.main([str(tiny_dir), "--out", str(out), "--n-samples", "2", "--seqlen", "16", "--no-quality",
                        "--quiet"])
    _one_line_error(capsys, rc, 130, "interrupted")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o")]


def test_sigterm_unwinds_like_ctrl_c(tiny_dir, tmp_path, capsys, monkeypatch):
    """A job scheduler's stop (SIGTERM) mid-AWQ of a model read block by block: exit 143, no
    output directory, and the spilled blocks' temporary folder removed."""
    import gc
    import os
    import signal
    import tempfile

    from cat_core.awq import _pipeline

    spill_root = tmp_path / "tmp"
    spill_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill_root))
    pack, calls = _pipeline._pack, []

    def pack_then_stop(work):
        calls.append(1)
        if len(calls) == 2:  # the first block is spilled by now
            assert [p for p in spill_root.iterdir() if p.name.startswith("cat-spill-")]
            os.kill(os.getpid(), signal.SIGTERM)
        return pack(work)

    monkeypatch.setattr(_pipeline, "_pack", pack_then_stop)
    monkeypatch.setenv("CAT_QUIET_PROGRESS_S", "1e9")
    out = tmp_path / "o"
    handler = signal.getsignal(signal.SIGTERM)
    rc = quantize.main([str(tiny_dir), "--out", str(out), "--n-samples", "2", "--seqlen", "16", "--no-quality",
                        "--max-memory", "4GB", "--quiet"])
    _one_line_error(capsys, rc, 143, "SIGTERM")
    assert signal.getsignal(signal.SIGTERM) is handler  # restored for whatever runs next
    assert len(calls) == 2 and not out.exists()
    gc.collect()
    assert not list(spill_root.iterdir())


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        quantize.main([str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--debug"])


# ----------------------------------------------------------------------------- end to end


def _summary_line(out: str, field: str) -> str:
    """The line of cat-quantize's closing summary that starts with ``field``."""
    return next(x for x in out.splitlines() if x.strip().startswith(field))


def _quantize_small(capsys, src, out, text_file, bits: int):
    """cat-quantize of a tiny model on 4 x 32 calibration tokens, group 64; its captured output."""
    rc = quantize.main([str(src), "--bits", str(bits), "--group-size", "64", "--calib", str(text_file),
                        "--n-samples", "4", "--seqlen", "32", "--quality-samples", "2", "--quality-seqlen", "16",
                        "--out", str(out), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return cap


def test_end_to_end_quantize_generate_eval_bench(tiny_dir, text_file, tmp_path, capsys):
    out = tmp_path / "q3"
    cap = _quantize_small(capsys, tiny_dir, out, text_file, bits=3)
    for key in ("time", "peak memory", "on disk", "bits per weight", "mean KL", "top-1 agreement"):
        assert key in cap.out
    cfg = json.loads((out / "config.json").read_text())
    q = cfg["quantization_config"]
    assert q["quant_method"] == "caterpillar" and q["bits"] == 3 and q["group_size"] == 64
    assert q["source_model"] == str(tiny_dir.absolute())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    # refuses to overwrite, then overwrites when told
    assert quantize.main([str(tiny_dir), "--out", str(out), "--quiet"]) == 1
    capsys.readouterr()

    rc = generate.main([str(out), "--prompt", "w5 w6 w7", "--max-new-tokens", "5", "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.out.startswith("w5") and len(cap.out.split()) >= 4
    rc = generate.main([str(tiny_dir), "--prompt", "w5 w6", "--max-new-tokens", "3", "--temperature", "0.8",
                        "--top-p", "0.9", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()

    js = tmp_path / "eval.json"
    rc = cat_eval.main([str(out), "--text", str(text_file), "--seqlen", "64", "--max-windows", "3",
                        "--kl-samples", "2", "--kl-seqlen", "16", "--json", str(js), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    res = json.loads(js.read_text())
    assert res["perplexity"]["tokens_scored"] == 3 * 63 and res["perplexity"]["windows"] == 3
    assert res["perplexity"]["ppl"] > 1 and res["head_bits"] == 8  # the output head as served
    assert "output head 8-bit" in cap.out
    assert res["data_free"]["reference"] == str(tiny_dir.absolute())
    assert res["data_free"]["mean_kl"] > 0 and 0 <= res["data_free"]["top1_agreement"] <= 1
    assert "tokens scored" in cap.out and "top-1 agreement" in cap.out
    # --head-bits 16 evaluates the head as stored: the same windows, another (fp) head
    rc = cat_eval.main([str(out), "--text", str(text_file), "--seqlen", "64", "--max-windows", "3", "--no-kl",
                        "--head-bits", "16", "--json", str(js), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    res16 = json.loads(js.read_text())
    assert res16["head_bits"] is None and res16["perplexity"]["ppl"] != res["perplexity"]["ppl"]
    # --activations int8: the same windows through int8-rounded inputs: close to, not equal to, float
    rc = cat_eval.main([str(out), "--text", str(text_file), "--seqlen", "64", "--max-windows", "3", "--no-kl",
                        "--activations", "int8", "--json", str(js), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    res8 = json.loads(js.read_text())
    assert res8["activations"] == "int8" and "int8 activations" in cap.out
    assert res8["perplexity"]["ppl"] != res["perplexity"]["ppl"]
    assert abs(res8["perplexity"]["ppl"] / res["perplexity"]["ppl"] - 1) < 0.05
    rc = cat_eval.main([str(tiny_dir), "--text", str(text_file), "--seqlen", "64", "--max-windows", "1", "--no-kl",
                        "--activations", "int8", "--quiet"])
    assert rc != 0 and "is not quantized" in capsys.readouterr().err
    rc = generate.main([str(out), "--prompt", "w5 w6 w7", "--max-new-tokens", "5", "--activations", "int8", "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0 and cap.out.startswith("w5"), cap.err
    rc = generate.main([str(tiny_dir), "--prompt", "w5", "--max-new-tokens", "2", "--activations", "int8", "--quiet"])
    assert rc != 0 and "is not quantized" in capsys.readouterr().err

    bdir = tmp_path / "bench"
    rc = bench.main([str(out), "--batch-sizes", "1", "--prompt-len", "8", "--new-tokens", "3", "--activations", "both",
                     "--min-runs", "3", "--max-runs", "3", "--out", str(bdir), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    hows = [r["how"] for r in json.loads((bdir / "bench.json").read_text())["rows"]]
    assert len(hows) == 2 and not hows[0].endswith("int8 activations") and hows[1].endswith(", int8 activations")
    rc = bench.main([str(tiny_dir), str(out), "--batch-sizes", "1", "2", "--prompt-len", "8", "--new-tokens", "3",
                     "--min-runs", "3", "--max-runs", "3", "--out", str(bdir), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    data = json.loads((bdir / "bench.json").read_text())
    kinds = [(r["weights"], r["how"].split(" ")[0], r["batch"]) for r in data["rows"]]
    assert kinds == [("fp32", "unquantized", 1), ("fp32", "unquantized", 2), ("4-bit", "RTN", 1), ("4-bit", "RTN", 2),
                     ("3-bit", "RTN", 1), ("3-bit", "RTN", 2), ("3-bit", "given", 1), ("3-bit", "given", 2)]
    fp, q4 = data["rows"][0], data["rows"][2]
    assert q4["weight_mb"] < fp["weight_mb"]
    assert all(r["runs"] == 3 and r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 for r in data["rows"])
    # peak = weights + what the runs added (the runtime and the other models are not counted)
    assert all(r["weight_mb"] <= r["peak_mb"] < r["weight_mb"] + 500 for r in data["rows"])
    assert "RTN on the fly" in cap.out and "excludes the first" in cap.out
    assert all(("head 8-bit" in r["how"]) == (r["weights"] != "fp32") for r in data["rows"])
    assert (bdir / "bench.md").is_file() and (bdir / "bench.png").stat().st_size > 1000


def test_self_calibration_and_quality_text_are_sampled_in_one_pass(tiny_dir, tmp_path, capsys, monkeypatch):
    """Each decode step reads every weight whatever the batch: the quality text rides along in
    the calibration batch (one sampling pass, not two), and both texts are those of separate runs."""
    import cat_core.calib as calib
    import torch
    from cat_core.config import CalibConfig

    batches: list[list[tuple[int, int]]] = []
    real = calib._sample_batch
    seen: dict[str, torch.Tensor] = {}

    def counting(model, start, groups, bar):
        batches.append([(n, seqlen) for n, seqlen, _ in groups])
        out = real(model, start, groups, bar)
        if len(groups) == 2:
            seen["calib"], seen["quality"] = out
            seen["model"] = model
        return out

    monkeypatch.setattr(calib, "_sample_batch", counting)
    rc = quantize.main([str(tiny_dir), "--bits", "4", "--group-size", "64", "--n-samples", "3", "--seqlen", "16",
                        "--quality-samples", "2", "--quality-seqlen", "8", "--out", str(tmp_path / "q"), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert batches == [[(3, 16), (2, 8)]]
    assert "sampling (calibration and quality text)" in cap.out and "mean KL" in cap.out
    monkeypatch.setattr(calib, "_sample_batch", real)
    from cat_apps._models import load

    loaded = load(str(tiny_dir), quiet=True)
    alone_c = calib.calibration_samples(CalibConfig(source="self", n_samples=3, seqlen=16, seed=0),
                                        loaded.tokenizer, loaded.model)
    alone_q = calib.calibration_samples(CalibConfig(source="self", n_samples=2, seqlen=8, seed=quantize.QUALITY_SEED),
                                        loaded.tokenizer, loaded.model)
    assert torch.equal(seen["calib"], alone_c) and torch.equal(seen["quality"], alone_q)

    # without the quality figure: the calibration alone, one pass
    batches.clear()
    monkeypatch.setattr(calib, "_sample_batch", counting)
    rc = quantize.main([str(tiny_dir), "--bits", "4", "--group-size", "64", "--n-samples", "3", "--seqlen", "16",
                        "--no-quality", "--out", str(tmp_path / "q2"), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert batches == [[(3, 16)]] and "calibration " in cap.out and "quality text" not in cap.out


def test_post_norm_only_model_quantizes_reloads_and_generates(tiny_olmo2_dir, text_file, tmp_path, capsys):
    # OLMo-2: q/k/v and gate/up read the residual stream; they are quantized without input scales
    out = tmp_path / "olmo2-q4"
    cap = _quantize_small(capsys, tiny_olmo2_dir, out, text_file, bits=4)
    line = _summary_line(cap.out, "input scaling")
    assert "4 groups searched (folded into: 4 linear), 4 without input scaling" in line, line
    assert "4 read the residual stream" in line, line
    assert "14 linears" in cap.out  # the unscaled ones are quantized too

    from cat_core.io import load_quantized
    from cat_core.nn import QuantLinear

    model, _ = load_quantized(out)
    assert isinstance(model.model.layers[0].self_attn.q_proj, QuantLinear)
    assert isinstance(model.model.layers[1].mlp.gate_proj, QuantLinear)
    rc = generate.main([str(out), "--prompt", "w5 w6 w7", "--max-new-tokens", "5", "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.out.startswith("w5") and len(cap.out.split()) >= 4

    # --strict-graph: the old behaviour, one line naming the block and the consumers
    rc = quantize.main([str(tiny_olmo2_dir), "--strict-graph", "--n-samples", "2", "--seqlen", "16",
                        "--out", str(tmp_path / "strict"), "--quiet"])
    line = _one_line_error(capsys, rc, 1, "residual stream")
    assert "model.layers.0" in line and "self_attn.q_proj" in line and "GroupSpec" not in line
    assert not (tmp_path / "strict").exists()


def test_gpt2_conv1d_model_quantizes_reloads_and_generates(tiny_gpt2_dir, text_file, tmp_path, capsys):
    # GPT-2's linears are transformers Conv1D (weights [in, out]): all 8 are searched and quantized
    out = tmp_path / "gpt2-q4"
    cap = _quantize_small(capsys, tiny_gpt2_dir, out, text_file, bits=4)
    assert "8 linears" in cap.out
    line = _summary_line(cap.out, "input scaling")
    assert "8 groups searched" in line, line

    from cat_core.io import load_quantized
    from cat_core.nn import QuantLinear

    model, _ = load_quantized(out)
    for blk in model.transformer.h:
        for m in (blk.attn.c_attn, blk.attn.c_proj, blk.mlp.c_fc, blk.mlp.c_proj):
            assert isinstance(m, QuantLinear)
    assert model.transformer.h[0].attn.c_attn.out_features == 3 * 128
    rc = generate.main([str(out), "--prompt", "w5 w6 w7", "--max-new-tokens", "5", "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.out.startswith("w5") and len(cap.out.split()) >= 4


def test_export_gptq_and_eval_reference_flag(tiny_dir, tmp_path, capsys):
    out = tmp_path / "g4"
    rc = quantize.main([str(tiny_dir), "--bits", "4", "--sym", "--n-samples", "2", "--seqlen", "16", "--export", "gptq",
                        "--no-quality", "--out", str(out), "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "gptq" and q["source_model"] == str(tiny_dir.absolute())
    # symmetric 4-bit: GPTQ v1 with the fixed zero point, the form vLLM's gptq/Marlin path takes
    assert q["checkpoint_format"] == "gptq" and q["sym"] is True and q["bits"] == 4
    assert "serves on" in cap.out and "vLLM 'gptq'/'gptq_marlin'" in cap.out
    capsys.readouterr()
    rc = cat_eval.main([str(out), "--kl-samples", "1", "--kl-seqlen", "8", "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "top-1 agreement" in cap.out


def test_gptq_rounding_option(tiny_dir, tmp_path, capsys):
    out = tmp_path / "r3"
    rc = quantize.main([str(tiny_dir), "--bits", "3", "--n-samples", "2", "--seqlen", "16", "--rounding", "gptq",
                        "--no-quality", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "GPTQ rounding" in cap.out and "grams" in cap.out
    out = tmp_path / "learned"
    rc = quantize.main([str(tiny_dir), "--bits", "3", "--n-samples", "2", "--seqlen", "16", "--rounding", "learned",
                        "--no-quality", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "learned rounding" in cap.out and "learned_round" in cap.out and (out / "config.json").exists()
    with pytest.raises(SystemExit) as e:
        quantize.main([str(tiny_dir), "--rounding", "best", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rounding" in err[0]


def test_importance_rounding_options(tiny_dir, tmp_path, capsys):
    out = tmp_path / "imp"
    rc = quantize.main([str(tiny_dir), "--bits", "4", "--sym", "--group-size", "32", "--n-samples", "2", "--seqlen",
                        "16", "--rounding", "importance", "--no-quality", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "importance-weighted rounding" in cap.out and "input scaling    off" in cap.out
    method = _summary_line(cap.out, "quantization")
    assert "AWQ" not in method and "4-bit" in method, method  # no input scaling: not AWQ
    assert (out / "config.json").exists()
    out = tmp_path / "learned-imp"
    rc = quantize.main([str(tiny_dir), "--bits", "3", "--n-samples", "2", "--seqlen", "16", "--learned-start",
                        "importance", "--scale-search", "on", "--no-quality", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "learned rounding" in cap.out and "groups searched" in cap.out
    method = _summary_line(cap.out, "quantization")
    assert "AWQ 3-bit" in method and "learned rounding from importance-weighted rounding's codes" in method, method
    rc = quantize.main([str(tiny_dir), "--rounding", "gptq", "--learned-start", "importance", "--out", str(tmp_path / "x")])
    cap = capsys.readouterr()
    assert rc == 2 and "--learned-start" in cap.err and not (tmp_path / "x").exists()


def test_awq_export_needs_4_bits(tiny_dir, tmp_path, capsys):
    rc = quantize.main([str(tiny_dir), "--bits", "3", "--export", "awq", "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, 2, "4-bit")


def test_export_no_engine_serves_is_refused_before_any_work(tmp_path, capsys):
    # the model path does not exist: the export check must come first
    missing = str(tmp_path / "no-such-model")
    rc = quantize.main([missing, "--bits", "4", "--group-size", "-1", "--export", "awq", "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, 2, "--export awq: the AWQ GEMM format needs groups")
    rc = quantize.main([missing, "--bits", "3", "--export", "awq", "--out", str(tmp_path / "o")])
    _one_line_error(capsys, rc, 2, "--export awq: the AWQ GEMM format holds 4-bit weights only")


def test_quantize_within_a_memory_budget(tiny_dir, text_file, tmp_path, capsys):
    """A budget too small for one block fails before any work, naming the block and the budget;
    a budget that keeps nothing resident writes the same checkpoint as the default budget."""
    rc = quantize.main([str(tiny_dir), "--max-memory", "5MB", "--seqlen", "32", "--quality-seqlen", "16",
                        "--out", str(tmp_path / "none"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "one decoder block needs about" in err and "more than the budget's 0.01 GB" in err
    assert not (tmp_path / "none").exists()
    rc = quantize.main([str(tiny_dir), "--max-memory", "a lot", "--seqlen", "32", "--quality-seqlen", "16",
                        "--out", str(tmp_path / "bad"), "--quiet"])
    assert rc == 2 and "--max-memory: expected a size" in capsys.readouterr().err

    outs = {}
    for budget in (None, "1.01GB"):  # 1.01 GB: the process's share and one block, nothing kept
        out = tmp_path / f"q-{budget}"
        extra = ["--max-memory", budget] if budget else []
        rc = quantize.main([str(tiny_dir), "--bits", "4", "--group-size", "64", "--calib", str(text_file),
                            "--n-samples", "4", "--seqlen", "32", "--no-quality", "--out", str(out), "--quiet",
                            *extra])
        cap = capsys.readouterr()
        assert rc == 0, cap.err
        assert "read by block" in cap.out
        outs[budget] = out
    from safetensors.torch import load_file

    a = load_file(outs[None] / "model.safetensors")
    b = load_file(outs["1.01GB"] / "model.safetensors")
    assert sorted(a) == sorted(b) and all(a[k].equal(b[k]) for k in a)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_peak_rss_is_in_the_units_of_max_memory():
    """The 'peak memory' line is compared with --max-memory (10**6-byte MB): ru_maxrss is KiB on
    Linux, so the peak must equal /proc's high-water mark (also KiB) times 1024 bytes."""
    from cat_apps._cli import peak_rss_mb

    hwm_kib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    assert abs(peak_rss_mb() - hwm_kib * 1024 / 1e6) <= 0.01 * peak_rss_mb()
