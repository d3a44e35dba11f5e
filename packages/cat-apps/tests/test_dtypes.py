"""Which dtype a checkpoint stores its unquantized tensors in (cat-quantize --save-dtype), and
which dtype the commands compute in (--dtype), on a float32 and a bfloat16 tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cat_apps import _cli, _models, generate, quantize
from safetensors import safe_open

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


@pytest.mark.parametrize("arg, device, declared, want", [
    ("auto", CPU, "bfloat16", torch.float32),
    ("auto", CPU, None, torch.float32),
    ("auto", CUDA, "bfloat16", torch.bfloat16),
    ("auto", CUDA, "float16", torch.float16),
    ("auto", CUDA, "float32", torch.float16),
    ("auto", CUDA, None, torch.float16),
    ("bfloat16", CPU, "float32", torch.bfloat16),
    ("float32", CUDA, "bfloat16", torch.float32),
])
def test_compute_dtype(arg, device, declared, want):
    assert _cli.compute_dtype(arg, device, declared) == want


@pytest.mark.parametrize("arg, declared, want", [
    ("auto", "bfloat16", torch.bfloat16), ("auto", "float16", torch.float16),
    ("auto", "float32", torch.float16), ("auto", None, torch.float16),
    ("float32", "bfloat16", torch.float32), ("bfloat16", None, torch.bfloat16),
])
def test_storage_dtype(arg, declared, want):
    assert _cli.storage_dtype(arg, declared) == want


def _stored(ckpt: Path) -> dict[str, str]:
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}


def _quantize(src: Path, out: Path, *extra: str) -> None:
    rc = quantize.main([str(src), "--bits", "4", "--n-samples", "2", "--seqlen", "16", "--no-quality",
                        "--out", str(out), "--quiet", *extra])
    assert rc == 0


@pytest.mark.parametrize("source, extra, want", [
    ("float32", (), "F16"),                              # a float32 source is stored as float16
    ("bfloat16", (), "BF16"),                            # a 16-bit source is kept as it was
    ("float32", ("--save-dtype", "float32"), "F32"),
    ("bfloat16", ("--export", "gptq", "--save-dtype", "float16"), "F16"),
])
def test_quantize_storage_dtype(tiny_dir, tiny_bf16_dir, tmp_path, capsys, source, extra, want):
    src = tiny_dir if source == "float32" else tiny_bf16_dir
    out = tmp_path / "q"
    _quantize(src, out, *extra)
    summary = capsys.readouterr().out
    stored = _stored(out)
    name = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}[want]
    assert f"unquantized tensors in {name}" in summary
    assert json.loads((out / "config.json").read_text())["dtype"] == name
    for key in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                "model.layers.0.input_layernorm.weight"):
        assert stored[key] == want, key
    assert {stored[k] for k in stored if k.endswith(".qweight")} == {"I32"}
    if "--export" not in extra:  # native scales: float16, whatever the storage dtype
        assert {stored[k] for k in stored if k.endswith("proj.scales")} == {"F16"}


def test_commands_compute_in_the_chosen_dtype(tiny_bf16_dir, tmp_path, capsys):
    out = tmp_path / "q"
    _quantize(tiny_bf16_dir, out)
    capsys.readouterr()
    # stored in bfloat16, computed in float32 on a CPU by default; scales stay float16
    m = _models.load(str(out), quiet=True, device=CPU, dtype="auto").model
    assert m.model.embed_tokens.weight.dtype == torch.float32
    assert m.model.layers[0].mlp.down_proj.scales.dtype == torch.float16
    m = _models.load(str(out), quiet=True, device=CPU, dtype="bfloat16").model
    assert m.model.embed_tokens.weight.dtype == torch.bfloat16
    assert m.model.layers[0].mlp.down_proj.scales.dtype == torch.float16
    src = _models.load(str(tiny_bf16_dir), quiet=True, device=CPU, dtype="auto")
    assert src.declared_dtype == "bfloat16" and src.model.model.embed_tokens.weight.dtype == torch.float32
    for dtype in ("auto", "bfloat16"):
        rc = generate.main([str(out), "--prompt", "w5 w6 w7", "--max-new-tokens", "4", "--dtype", dtype, "--quiet"])
        cap = capsys.readouterr()
        assert rc == 0, cap.err
        assert cap.out.startswith("w5") and len(cap.out.split()) >= 4
