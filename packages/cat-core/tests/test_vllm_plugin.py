"""The vLLM plugin's pure parts (no vLLM needed): the checkpoint settings it reads and the
tensor-parallel slicing of the packed arrays. The plugin inside real vLLM is checked by the
engine tier (tests/engines/test_vllm_engine.py)."""

from __future__ import annotations

import subprocess
import sys

import cat_kernels as ck
import pytest
import torch
from cat_core.vllm import _packed
from cat_core.vllm._settings import FORMAT_VERSION, QUANT_METHOD, LinearSettings, for_layer, parse


def _qcfg(**kw):
    base = {"quant_method": "caterpillar", "format_version": 2, "bits": 3, "group_size": 64, "sym": False,
            "scale_dtype": "float16", "modules": ["m.layers.0.q_proj", "m.layers.0.k_proj", "m.layers.0.v_proj",
                                                   "m.layers.0.o_proj"],
            "module_overrides": {}, "activation_scales": [], "modules_not_converted": ["lm_head"]}
    base.update(kw)
    return base


def test_identity_matches_the_native_writer():
    from cat_core.io import _native

    assert (QUANT_METHOD, FORMAT_VERSION) == (_native.QUANT_METHOD, _native.FORMAT_VERSION)


def test_importing_cat_core_and_the_plugin_module_does_not_import_vllm():
    code = "import sys, cat_core, cat_core.nn, cat_core.io, cat_core.vllm; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_settings_per_layer_and_fused_layers():
    st = parse(_qcfg(module_overrides={"m.layers.0.o_proj": {"group_size": -1, "bits": 4}}))
    fused = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    assert for_layer(st, "m.layers.0.qkv_proj", fused) == LinearSettings(3, 64, False, torch.float16)
    assert for_layer(st, "m.layers.0.o_proj", fused) == LinearSettings(4, -1, False, torch.float16)
    assert for_layer(st, "m.layers.0.mlp.down_proj", fused) is None
    half = parse(_qcfg(modules=["m.layers.0.q_proj", "m.layers.0.k_proj"]))
    with pytest.raises(ValueError, match="half quantized"):
        for_layer(half, "m.layers.0.qkv_proj", fused)
    mixed = parse(_qcfg(module_overrides={"m.layers.0.v_proj": {"bits": 4}}))
    with pytest.raises(ValueError, match="quantized differently"):
        for_layer(mixed, "m.layers.0.qkv_proj", fused)


@pytest.mark.parametrize(("change", "match"), [
    ({"quant_method": "awq"}, "quant_method"),
    ({"format_version": 1}, "format_version"),
    ({"activation_scales": ["m.layers.0.mlp.act"]}, "activation_scales"),
    ({"unfused_experts": {"m.layers.0.mlp.experts": "x"}}, "unfused_experts"),
    ({"bits": 5}, "bits=5"),
    ({"group_size": 48}, "group_size=48"),
    ({"scale_dtype": "float64"}, "scale_dtype"),
    ({"modules": []}, "modules"),
])
def test_settings_refuse_what_the_plugin_cannot_serve(change, match):
    with pytest.raises(ValueError, match=match):
        parse(_qcfg(**change))


def _random_packed(n, k, bits, group_size, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (n, k), generator=g, dtype=torch.uint8)
    ng = 1 if group_size == -1 else k // group_size
    zeros = torch.randint(0, 1 << bits, (n, ng), generator=g, dtype=torch.uint8)
    scales = torch.rand(n, ng, generator=g).half()
    return codes, zeros, scales, {"qweight": ck.pack(codes, bits), "qzeros": ck.pack_zeros(zeros, bits),
                                  "scales": scales}


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_row_slices_are_the_rows(bits):
    n, k, g = 83, 96, 32  # N not a multiple of 16: the last slice ends in the padded tile
    codes, zeros, scales, p = _random_packed(n, k, bits, g, bits)
    for start, rows in [(0, 16), (16, 48), (64, 19), (32, 51)]:
        qw = _packed.rows("qweight", p["qweight"], start, rows, n)
        qz = _packed.rows("qzeros", p["qzeros"], start, rows, n)
        sc = _packed.rows("scales", p["scales"], start, rows, n)
        assert torch.equal(ck.unpack(qw.contiguous(), rows, k), codes[start:start + rows])
        assert torch.equal(ck.unpack_zeros(qz.contiguous(), rows, k // g, bits), zeros[start:start + rows])
        assert torch.equal(sc, scales[start:start + rows])


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 64, -1])
def test_column_slices_are_the_columns(bits, group_size):
    # 3-bit zero points of group 11 straddle two words: slices starting there must be repacked
    n, k = 37, 704
    codes, zeros, scales, p = _random_packed(n, k, bits, group_size, 7 * bits)
    step = 64 if group_size == -1 else group_size
    for start in range(0, k, 11 * step if group_size == 32 else 2 * step):
        for width in (step, 3 * step, k - start):
            if start + width > k:
                continue
            qw = _packed.cols("qweight", p["qweight"], start, width, k, bits=bits, group_size=group_size)
            qz = _packed.cols("qzeros", p["qzeros"], start, width, k, bits=bits, group_size=group_size)
            sc = _packed.cols("scales", p["scales"], start, width, k, bits=bits, group_size=group_size)
            assert torch.equal(ck.unpack(qw.contiguous(), n, width), codes[:, start:start + width])
            if group_size == -1:
                assert torch.equal(sc, scales) and torch.equal(ck.unpack_zeros(qz, n, 1, bits), zeros)
                continue
            g0, ng = start // group_size, width // group_size
            assert torch.equal(ck.unpack_zeros(qz, n, ng, bits), zeros[:, g0:g0 + ng])
            assert torch.equal(sc, scales[:, g0:g0 + ng])


def test_a_sliced_shard_computes_its_part_of_the_product():
    # row-parallel: y = sum over shards of x_shard @ W_shard.T, each shard through the kernels
    n, k, g, bits = 48, 256, 64, 3
    codes, zeros, scales, p = _random_packed(n, k, bits, g, 3)
    x = torch.randn(5, k)
    full = ck.gemm(x, p["qweight"], p["scales"], p["qzeros"], g)
    parts = []
    for r in range(2):
        kw = dict(bits=bits, group_size=g)
        qw, sc, qz = (_packed.cols(kind, p[kind], r * 128, 128, k, **kw) for kind in ("qweight", "scales", "qzeros"))
        parts.append(ck.gemm(x[:, r * 128:(r + 1) * 128].contiguous(), qw.contiguous(), sc.contiguous(), qz, g))
    torch.testing.assert_close(parts[0] + parts[1], full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("start", "k", "group_size", "match"), [
    (64, 64, 128, "quantization group"),   # a shard inside a group
    (48, 48, -1, "packing block"),         # one group, but a shard inside a 32-column block
    (0, 96, 64, "quantization group"),
    (0, 300, 64, "outside"),
])
def test_column_slices_that_cut_a_group_or_a_block_are_refused(start, k, group_size, match):
    with pytest.raises(ValueError, match=match):
        _packed.cols("qweight", torch.zeros(2, 8, 4, 16, dtype=torch.int32), start, k, 256, bits=4,
                     group_size=group_size)


@pytest.mark.parametrize(("start", "n", "match"), [(8, 16, "packing tile"), (0, 24, "inside a 16-row"),
                                                   (0, 90, "outside")])
def test_row_slices_that_cut_a_tile_are_refused(start, n, match):
    with pytest.raises(ValueError, match=match):
        _packed.rows("qweight", torch.zeros(6, 2, 4, 16, dtype=torch.int32), start, n, 83)


# ----------------------------------------------------------------------------- AWQ-GEMM checkpoints


def test_awq_configs_the_plugin_serves_and_those_it_refuses():
    from cat_core.vllm._settings import awq_problem, parse_awq

    # cat-quantize --export awq writes these keys; AutoAWQ writes w_bit/q_group_size and "GEMM"
    ours = parse_awq({"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm",
                      "modules_to_not_convert": ["lm_head"]})
    assert (ours.group_size, ours.modules_to_not_convert) == (64, ("lm_head",))
    autoawq = parse_awq({"quant_method": "awq", "w_bit": 4, "q_group_size": 128, "zero_point": True, "version": "GEMM"})
    assert (autoawq.group_size, autoawq.modules_to_not_convert) == (128, ())
    base = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}
    for change, match in [({"version": "gemv"}, "version 'gemv'"), ({"bits": 3}, "bits=3"),
                          ({"zero_point": False}, "without zero points"), ({"group_size": 48}, "group_size=48")]:
        assert match in awq_problem({**base, **change})
        with pytest.raises(ValueError, match=match):
            parse_awq({**base, **change})
    with pytest.raises(ValueError, match="quant_method must be 'awq'"):
        parse_awq({**base, "quant_method": "gptq"})


@pytest.mark.parametrize("group_size", [32, -1])
def test_each_rank_of_an_awq_layer_converts_to_its_part_of_the_matrix(group_size):
    """vLLM slices the AWQ arrays per rank (rows of qweight = input columns; words = 8 output
    columns); the plugin converts each rank's piece: it must be that piece of the whole matrix."""
    from cat_core.io._export_awq import _pack_rows
    from cat_core.vllm._packed import awq_to_native

    g = torch.Generator().manual_seed(3)
    n, k = 40, 96
    gs = k if group_size == -1 else group_size
    codes = torch.randint(0, 16, (n, k), generator=g)
    zeros = torch.randint(0, 16, (n, k // gs), generator=g)
    scales = (torch.rand(n, k // gs, generator=g) * 0.1 + 0.01).half()
    qweight, qzeros, s_awq = _pack_rows(codes.T.contiguous()), _pack_rows(zeros.T.contiguous()), scales.T.contiguous()

    whole = awq_to_native(qweight, qzeros, s_awq, group_size)
    assert torch.equal(whole.codes.long(), codes) and torch.equal(whole.zeros.long(), zeros)
    assert torch.equal(whole.scales, scales) and whole.group_size == group_size
    # column-parallel: output rows [8, 24) are words 1..2 and scale columns 8..23
    part = awq_to_native(qweight[:, 1:3], qzeros[:, 1:3], s_awq[:, 8:24], group_size)
    assert torch.equal(part.codes.long(), codes[8:24]) and torch.equal(part.zeros.long(), zeros[8:24])
    assert torch.equal(part.scales, scales[8:24])
    if group_size != -1:  # row-parallel: input columns [32, 96) are groups 1..2
        part = awq_to_native(qweight[32:], qzeros[1:], s_awq[1:], group_size)
        assert torch.equal(part.codes.long(), codes[:, 32:]) and torch.equal(part.zeros.long(), zeros[:, 1:])
        assert torch.equal(part.scales, scales[:, 1:])
