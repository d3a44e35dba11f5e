"""Native checkpoints: save/load round trips (also in a fresh process), sharding, atomic writes
and the errors a damaged or foreign checkpoint must produce."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("cat_kernels")
sys.path.insert(0, str(Path(__file__).parent))
from _quantized_models import llama, rtn_all, word_tokenizer  # noqa: E402
from _tiny_models import sample_ids, tiny_model  # noqa: E402
from cat_core.io import (  # noqa: E402
    CheckpointError,
    _shards,  # noqa: E402
    load_quantized,
    save_quantized,
)
from cat_core.nn import QuantLinear, replace_linears  # noqa: E402

EAGER = {"attn_implementation": "eager"}


@pytest.fixture(scope="module")
def qmodel():
    model = llama()
    return replace_linears(model, rtn_all(model, bits=3, group_size=32))


def _logits(model, ids=None):
    ids = sample_ids(2, 10) if ids is None else ids
    with torch.no_grad():
        return model(ids).logits


def test_fresh_process_reload_generates_the_same_tokens(qmodel, tmp_path):
    tok = word_tokenizer()
    prompt = "w5 w17 w33 w9"
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        before = qmodel.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)[0].tolist()
    out = save_quantized(qmodel, tmp_path / "ckpt", tok, progress=False)
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "caterpillar" and cfg["format_version"] == 2
    assert (cfg["bits"], cfg["group_size"], cfg["sym"], cfg["scale_dtype"]) == (3, 32, False, "float16")
    assert len(cfg["modules"]) == 14 and cfg["modules_not_converted"] == ["lm_head"]
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))  # no pickle
    script = f"""
import json, torch
from cat_core.io import load_quantized
model, tok = load_quantized({str(out)!r}, model_kwargs={{"attn_implementation": "eager"}})
ids = tok({prompt!r}, return_tensors="pt").input_ids
with torch.no_grad():
    print(json.dumps(model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0)[0].tolist()))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == before


def test_sharded_round_trip_is_exact(qmodel, tmp_path):
    out = save_quantized(qmodel, tmp_path / "sh", max_shard_size="60KB", progress=False)
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 2 and (out / "model.safetensors.index.json").is_file()
    model, tok = load_quantized(out, model_kwargs=EAGER)
    assert tok is None
    assert torch.equal(_logits(model), _logits(qmodel))
    assert all(isinstance(model.get_submodule(n), QuantLinear) for n, _ in qmodel.named_modules()
               if isinstance(_, QuantLinear))


def test_load_dtype_keeps_scales(qmodel, tmp_path):
    out = save_quantized(qmodel, tmp_path / "c", progress=False)
    model, _ = load_quantized(out, dtype=torch.bfloat16, model_kwargs=EAGER)
    lin = model.model.layers[0].mlp.down_proj
    assert lin.scales.dtype == torch.float16 and model.model.embed_tokens.weight.dtype == torch.bfloat16
    ref = _logits(qmodel)
    assert (_logits(model).float() - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_storage_dtype_converts_unquantized_tensors_only(tmp_path, dtype):
    import copy

    from safetensors import safe_open

    model = llama(3)
    replace_linears(model, rtn_all(model, bits=4, group_size=32, scale_dtype="float32"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = save_quantized(model, tmp_path / "d", progress=False, dtype=dtype)
    assert all(torch.equal(v, before[k]) and v.dtype == before[k].dtype for k, v in model.state_dict().items())
    assert json.loads((out / "config.json").read_text())["dtype"] == str(dtype).removeprefix("torch.")
    quantized = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    st = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "I32": torch.int32}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        stored = {k: st[f.get_slice(k).get_dtype()] for k in f.keys()}
    assert stored["lm_head.weight"] == stored["model.embed_tokens.weight"] == stored["model.norm.weight"] == dtype
    for k, dt in stored.items():
        owner, _, attr = k.rpartition(".")
        if owner in quantized:
            assert dt == {"scales": torch.float32}.get(attr, torch.int32), k  # scales keep their dtype
        else:
            assert dt == dtype, k
    # loaded back in float32: the stored model is the original with its unquantized tensors
    # rounded once to ``dtype``
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n.rpartition(".")[0] not in quantized:
                p.copy_(p.to(dtype).float())
    loaded, _ = load_quantized(out, dtype=torch.float32, model_kwargs=EAGER)
    assert loaded.model.layers[0].mlp.down_proj.scales.dtype == torch.float32
    assert torch.equal(_logits(loaded), _logits(ref))


def test_storage_dtype_must_be_a_float_dtype(qmodel, tmp_path):
    with pytest.raises(ValueError, match="dtype must be"):
        save_quantized(qmodel, tmp_path / "x", progress=False, dtype=torch.int8)
    assert not (tmp_path / "x").exists()


def test_gpt2_conv1d_tied_embeddings_scaled_activation_and_mixed_groups(tmp_path):
    from cat_core.graph import ScaledActivation

    model = tiny_model("gpt2")
    mlp = model.transformer.h[0].mlp
    mlp.act = ScaledActivation(mlp.act, 0.5 + torch.rand(100))
    replace_linears(model, rtn_all(model, bits=4, group_size=32))  # K=72/100: one group per row
    out = save_quantized(model, tmp_path / "g", progress=False)
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["activation_scales"] == ["transformer.h.0.mlp.act"]
    loaded, _ = load_quantized(out, model_kwargs=EAGER)
    assert isinstance(loaded.transformer.h[0].mlp.act, ScaledActivation)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # re-tied
    assert torch.equal(_logits(loaded), _logits(model))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_file_follows_the_umask(qmodel, tmp_path, umask):
    # safetensors alone would create the weight files 0600: unreadable to the other users of a
    # shared server while config.json beside them is readable
    from cat_core.io import export_gptq

    old = os.umask(umask)
    try:
        dirs = [save_quantized(qmodel, tmp_path / "one", word_tokenizer(), progress=False),
                save_quantized(qmodel, tmp_path / "sharded", max_shard_size="60KB", progress=False),
                export_gptq(qmodel, tmp_path / "gptq", checkpoint_format="gptq_v2", progress=False)]
    finally:
        os.umask(old)
    files = [f for d in dirs for f in d.iterdir()]
    assert any(f.name.startswith("model-00002") for f in files)
    assert {str(f): oct(f.stat().st_mode & 0o777) for f in files} == {str(f): oct(0o666 & ~umask) for f in files}


def test_existing_directory_and_overwrite(qmodel, tmp_path):
    target = tmp_path / "x"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_quantized(qmodel, target, progress=False)
    assert (target / "keep.txt").is_file()
    save_quantized(qmodel, target, overwrite=True, progress=False)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no temp or old dirs left


def test_disk_full_mid_save_leaves_nothing(qmodel, tmp_path, monkeypatch):
    real = _shards._write_shard
    calls = []

    def writer(tensors, path, metadata):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(tensors, path, metadata)

    monkeypatch.setattr(_shards, "_write_shard", writer)
    with pytest.raises(OSError) as e:
        save_quantized(qmodel, tmp_path / "full", max_shard_size="60KB", progress=False)
    assert e.value.errno == errno.ENOSPC and len(calls) == 2
    assert list(tmp_path.iterdir()) == []  # neither out_dir nor the temporary directory


# --------------------------------------------------------------------------- damaged checkpoints


@pytest.fixture()
def saved(qmodel, tmp_path):
    return save_quantized(qmodel, tmp_path / "ok", max_shard_size="150KB", progress=False)


def _rewrite(path: Path, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _shard_of(ckpt: Path, name: str) -> Path:
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    return ckpt / index["weight_map"][name]


Q = "model.layers.1.mlp.down_proj"


def test_missing_shard(saved):
    shard = _shard_of(saved, f"{Q}.qweight")
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard.name}: shard listed in .* is missing"):
        load_quantized(saved)


def test_truncated_shard(saved):
    shard = _shard_of(saved, f"{Q}.qweight")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{shard.name}: truncated or corrupt"):
        load_quantized(saved)


def test_garbage_header(saved):
    shard = _shard_of(saved, f"{Q}.qweight")
    shard.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match=f"{shard.name}: truncated or corrupt"):
        load_quantized(saved)


def test_unexpected_tensor(saved):
    shard = _shard_of(saved, f"{Q}.qweight")
    _rewrite(shard, lambda t: t.update({"model.layers.1.mlp.extra": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=f"{shard.name}: unexpected tensor 'model.layers.1.mlp.extra'"):
        load_quantized(saved)


def test_missing_tensor(saved):
    shard = _shard_of(saved, f"{Q}.scales")
    _rewrite(shard, lambda t: t.pop(f"{Q}.scales"))
    with pytest.raises(CheckpointError, match=f"{shard.name}: tensor '{Q}.scales' listed in .* is not in that file"):
        load_quantized(saved)
    # same without the index entry
    index = saved / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    del data["weight_map"][f"{Q}.scales"]
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=f"missing tensor '{Q}.scales'"):
        load_quantized(saved)


def test_shape_mismatch(saved):
    shard = _shard_of(saved, f"{Q}.scales")
    _rewrite(shard, lambda t: t.update({f"{Q}.scales": t[f"{Q}.scales"][:, :2].contiguous()}))
    with pytest.raises(CheckpointError, match=rf"{shard.name}: tensor '{Q}.scales' has shape \[128, 2\], expected \[128, 8\]"):
        load_quantized(saved)


def test_dtype_mismatch(saved):
    shard = _shard_of(saved, f"{Q}.scales")
    _rewrite(shard, lambda t: t.update({f"{Q}.scales": t[f"{Q}.scales"].float()}))
    with pytest.raises(CheckpointError, match=f"tensor '{Q}.scales' has dtype torch.float32, expected torch.float16"):
        load_quantized(saved)


def _edit_config(ckpt: Path, **changes):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["quantization_config"].update(changes)
    (ckpt / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes, message", [
    ({"bits": 4}, r"has shape \[.*\], expected \[.*\] \(quantization_config: bits=4"),
    ({"group_size": 64}, r"has shape \[.*\], expected \[.*\] \(quantization_config: bits=3, group_size=64"),
    ({"bits": 5}, "unsupported bits=5"),
    ({"group_size": 48}, "invalid group_size=48"),
    ({"quant_method": "awq"}, "quant_method is 'awq', not 'caterpillar': not a native Caterpillar checkpoint.*import_awq"),
    ({"format_version": 1}, "format_version 1 is not supported.*quantize the model again"),
    ({"format_version": 3}, "format_version 3 is not supported"),
    ({"modules": ["model.layers.0.nope"]}, "names module 'model.layers.0.nope'"),
])
def test_bad_quantization_config(saved, changes, message):
    _edit_config(saved, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_quantized(saved)


def test_missing_config_and_directory(saved, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_quantized(tmp_path / "nowhere")
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing config.json"):
        load_quantized(saved)


def test_unquantized_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no QuantLinear"):
        save_quantized(llama(), tmp_path / "plain", progress=False)
    assert list(tmp_path.iterdir()) == []
