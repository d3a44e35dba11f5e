"""AWQ-GEMM and GPTQ exports, checked by unpackers written here from the public format
description only (plain numpy / Python ints, no code shared with the exporters), and
export -> import round trips."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("cat_kernels")
sys.path.insert(0, str(Path(__file__).parent))
from _quantized_models import llama, rtn_all  # noqa: E402
from cat_core.io import (  # noqa: E402
    CheckpointError,
    export_awq,
    export_gptq,
    import_awq,
    import_gptq,
    load_quantized,
    save_quantized,
)
from cat_core.nn import QuantLinear, replace_linears  # noqa: E402
from cat_core.quant import QuantizedTensor  # noqa: E402

EAGER = {"attn_implementation": "eager"}
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def _read(ckpt: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for f in ckpt.glob("*.safetensors"):
        out.update(load_file(str(f)))
    return out


def _u32(a: np.ndarray) -> np.ndarray:
    assert a.dtype == np.int32
    return a.view(np.uint32).astype(np.uint64)


def awq_unpack(words: np.ndarray) -> np.ndarray:
    """[R, N/8] int32 -> [R, N]: column 8j+ORDER[i] at bits 4i..4i+3 of word j."""
    w = _u32(words)
    r, nw = w.shape
    out = np.zeros((r, nw * 8), dtype=np.int64)
    for j in range(nw):
        for i in range(8):
            out[:, 8 * j + AWQ_ORDER[i]] = (w[:, j] >> np.uint64(4 * i)) & np.uint64(15)
    return out


def stream_unpack(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """[W, C] int32 packed along axis 0 -> [count, C]: per column, one little-endian bit stream
    (word 0 = stream bits 0..31, ...); value i at stream bits bits*i .. bits*i+bits-1."""
    w = _u32(words)
    cols = w.shape[1]
    out = np.zeros((count, cols), dtype=np.int64)
    for c in range(cols):
        stream = 0
        for idx, word in enumerate(w[:, c].tolist()):
            stream |= int(word) << (32 * idx)
        for i in range(count):
            out[i, c] = (stream >> (bits * i)) & ((1 << bits) - 1)
    return out


def _qmodel(bits, group_size, sym=False, seed=0):
    model = llama(seed)
    q = rtn_all(model, bits=bits, group_size=group_size, sym=sym)
    return replace_linears(model, q), q


def _logits(model):
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(ids).logits


def _zeros(qt: QuantizedTensor) -> np.ndarray:
    if qt.zeros is None:
        return np.full(tuple(qt.scales.shape), 2 ** (qt.bits - 1))
    return qt.zeros.numpy().astype(np.int64)


@pytest.mark.parametrize("sym", [False, True])
def test_awq_layout(tmp_path, sym):
    model, q = _qmodel(4, 32, sym=sym)
    out = export_awq(model, tmp_path / "awq", progress=False)
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "awq" and cfg["version"] == "gemm" and cfg["zero_point"] is True
    assert cfg["w_bit"] == 4 and cfg["q_group_size"] == 32
    t = _read(out)
    for name, qt in q.items():
        n, k = qt.shape
        qw, qz, s = t[f"{name}.qweight"], t[f"{name}.qzeros"], t[f"{name}.scales"]
        assert qw.shape == (k, n // 8) and qz.shape == (k // 32, n // 8) and s.shape == (k // 32, n)
        assert qw.dtype == np.int32 and qz.dtype == np.int32 and s.dtype == np.float16
        assert np.array_equal(awq_unpack(qw).T, qt.codes.numpy())
        assert np.array_equal(awq_unpack(qz).T, _zeros(qt))  # symmetric: zero point 8
        assert np.array_equal(s.T, qt.scales.numpy())
        # the dequantization of the format, (q - z) * s, is the model's weight
        w = (awq_unpack(qw) - np.repeat(awq_unpack(qz), 32, axis=0)) * np.repeat(s.astype(np.float32), 32, axis=0)
        ref = model.get_submodule(name).dequantize_weight().numpy()
        assert np.array_equal(w.T.astype(np.float32), ref)


@pytest.mark.parametrize("bits, group_size, sym, fmt", [
    (4, 32, False, "gptq"), (4, 64, True, "gptq"), (3, 32, False, "gptq"), (3, -1, True, "gptq"),
    (3, 32, False, "gptq_v2"), (4, 32, False, "gptq_v2"),
])
def test_gptq_layout(tmp_path, bits, group_size, sym, fmt):
    model, q = _qmodel(bits, group_size, sym=sym)
    # v1 cannot hold a zero point of 0: keep this test about the layout
    if fmt == "gptq" and any(qt.zeros is not None and (qt.zeros == 0).any() for qt in q.values()):
        pytest.skip("random weights produced a zero point 0")
    out = export_gptq(model, tmp_path / "gptq", checkpoint_format=fmt, progress=False)
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert {k: cfg[k] for k in ("quant_method", "bits", "group_size", "desc_act", "sym", "checkpoint_format")} == {
        "quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": False, "sym": sym,
        "checkpoint_format": fmt}
    shift = 1 if fmt == "gptq" else 0
    t = _read(out)
    for name, qt in q.items():
        n, k = qt.shape
        g = k if group_size == -1 else group_size
        qw, qz, s, gi = (t[f"{name}.{x}"] for x in ("qweight", "qzeros", "scales", "g_idx"))
        assert qw.shape == (k * bits // 32, n) and qz.shape == (k // g, n * bits // 32)
        assert s.shape == (k // g, n) and s.dtype == np.float16 and gi.dtype == np.int32
        assert np.array_equal(gi, np.arange(k) // g)
        assert np.array_equal(stream_unpack(qw, bits, k).T, qt.codes.numpy())
        assert np.array_equal(stream_unpack(qz.T.copy(), bits, n) + shift, _zeros(qt))
        assert np.array_equal(s.T, qt.scales.numpy())


def test_gptq_4bit_word_layout_by_hand(tmp_path):
    """value k at bits 4*(k%8) of word k//8; 3-bit: 32 values in 3 words, value i at bits 3i."""
    from cat_core.io._export_gptq import _converter

    k, n = 64, 32
    codes = (torch.arange(k).view(1, k) + torch.arange(n).view(n, 1)) % 8
    qt = QuantizedTensor(codes.to(torch.uint8), torch.ones(n, 2, dtype=torch.float16),
                         torch.full((n, 2), 3, dtype=torch.uint8), bits=4, group_size=32)
    got = _converter("gptq")("x", QuantLinear.from_quantized_tensor(qt))["qweight"].numpy()
    word = sum(int(codes[5, i]) << (4 * i) for i in range(8))
    assert int(_u32(got)[0, 5]) == word
    qt3 = QuantizedTensor(codes.to(torch.uint8), qt.scales, qt.zeros, bits=3, group_size=32)
    got3 = _u32(_converter("gptq")("x", QuantLinear.from_quantized_tensor(qt3))["qweight"].numpy())
    stream = sum(int(codes[7, i]) << (3 * i) for i in range(32))
    assert [int(got3[j, 7]) for j in range(3)] == [(stream >> (32 * j)) & 0xFFFFFFFF for j in range(3)]


def _with_zero_point_zero():
    model, q = _qmodel(4, 32)
    name = "model.layers.0.mlp.up_proj"
    qt = q[name]
    qt.zeros[3, 1] = 0
    model.model.layers[0].mlp.up_proj = QuantLinear.from_quantized_tensor(qt)
    return model, name


def test_gptq_v1_refuses_zero_point_zero_and_v2_keeps_it(tmp_path):
    model, name = _with_zero_point_zero()
    with pytest.raises(ValueError, match=f"{name}: 1 group.* zero point 0.*checkpoint_format='gptq_v2'"):
        export_gptq(model, tmp_path / "v1", progress=False)
    assert not (tmp_path / "v1").exists()
    out = export_gptq(model, tmp_path / "v2", checkpoint_format="gptq_v2", progress=False)
    zeros = stream_unpack(_read(out)[f"{name}.qzeros"].T.copy(), 4, 256)
    assert zeros[3, 1] == 0
    back, _ = import_gptq(out, model_kwargs=EAGER)
    assert torch.equal(_logits(back), _logits(model))


def test_format_errors(tmp_path):
    model3, _ = _qmodel(3, 32)
    with pytest.raises(ValueError, match="AWQ GEMM format cannot hold 3-bit.*export_gptq"):
        export_awq(model3, tmp_path / "a", progress=False)
    odd = QuantLinear.from_quantized_tensor(QuantizedTensor(
        torch.zeros(32, 48, dtype=torch.uint8), torch.ones(32, 1, dtype=torch.float16), None, 3, -1))
    model3.model.layers[0].mlp.up_proj = odd  # K = 48
    from cat_core.io._export_gptq import _converter

    with pytest.raises(ValueError, match="in_features=48 must be a multiple of 32"):
        _converter("gptq")("model.layers.0.mlp.up_proj", odd)
    with pytest.raises(ValueError, match="checkpoint_format"):
        export_gptq(model3, tmp_path / "g", checkpoint_format="marlin", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["awq", "gptq3", "gptq4_sym"])
def test_export_import_same_logits(tmp_path, kind):
    bits, sym = {"awq": (4, False), "gptq3": (3, False), "gptq4_sym": (4, True)}[kind]
    model, q = _qmodel(bits, 32, sym=sym, seed=1)
    if kind == "awq":
        back, _ = import_awq(export_awq(model, tmp_path / kind, progress=False), model_kwargs=EAGER)
    else:
        back, _ = import_gptq(export_gptq(model, tmp_path / kind, checkpoint_format="gptq_v2", progress=False),
                              model_kwargs=EAGER)
    assert torch.equal(_logits(back), _logits(model))
    for name, qt in q.items():
        got = back.get_submodule(name).to_quantized_tensor()
        assert torch.equal(got.codes, qt.codes) and torch.equal(got.scales, qt.scales)
    if kind == "gptq4_sym":  # all zero points 2**(bits-1): loads as a symmetric layer
        assert all(back.get_submodule(n).qzeros is None for n in q)


@pytest.mark.parametrize("kind", ["awq", "gptq"])
def test_export_storage_dtype(tmp_path, kind):
    model, q = _qmodel(4, 32, seed=2)
    if kind == "awq":
        out = export_awq(model, tmp_path / kind, progress=False, dtype=torch.float16)
        back, _ = import_awq(out, dtype=torch.float32, model_kwargs=EAGER)
    else:
        out = export_gptq(model, tmp_path / kind, checkpoint_format="gptq_v2", progress=False, dtype=torch.bfloat16)
        back, _ = import_gptq(out, dtype=torch.float32, model_kwargs=EAGER)
    want = torch.float16 if kind == "awq" else torch.bfloat16
    t = _read(out) if kind == "awq" else None
    if t is not None:
        assert t["model.embed_tokens.weight"].dtype == np.float16 and t["lm_head.weight"].dtype == np.float16
    assert json.loads((out / "config.json").read_text())["dtype"] == str(want).removeprefix("torch.")
    for name, qt in q.items():  # the quantized layers are untouched by the storage dtype
        got = back.get_submodule(name).to_quantized_tensor()
        assert torch.equal(got.codes, qt.codes) and torch.equal(got.scales, qt.scales)
    assert torch.equal(back.model.embed_tokens.weight, model.model.embed_tokens.weight.to(want).float())


def test_native_and_foreign_readers_refuse_each_other(tmp_path):
    model, _ = _qmodel(4, 32)
    native = save_quantized(model, tmp_path / "n", progress=False)
    awq = export_awq(model, tmp_path / "a", progress=False)
    with pytest.raises(CheckpointError, match="not a native Caterpillar checkpoint.*import_awq"):
        load_quantized(awq)
    with pytest.raises(CheckpointError, match="not an AWQ checkpoint"):
        import_awq(native)
    with pytest.raises(CheckpointError, match="not a GPTQ checkpoint"):
        import_gptq(awq)


def test_scale_dtype_conversion(tmp_path, recwarn):
    # bfloat16 -> float16 is exact in range: no warning, same logits after import
    model = llama()
    replace_linears(model, rtn_all(model, bits=4, group_size=32, scale_dtype="bfloat16"))
    back, _ = import_awq(export_awq(model, tmp_path / "b", progress=False), model_kwargs=EAGER)
    assert not [w for w in recwarn if "scales are" in str(w.message)]
    assert torch.equal(_logits(back), _logits(model))
    # float32 scales lose bits: warned, with the size of the change
    model = llama()
    replace_linears(model, rtn_all(model, bits=4, group_size=32, scale_dtype="float32"))
    with pytest.warns(UserWarning, match="scales are torch.float32.*float16.*relative"):
        export_awq(model, tmp_path / "f", progress=False)
