from __future__ import annotations

import pytest
import torch

from cat_core.config import CalibConfig, QuantConfig, matches_any


@pytest.mark.parametrize("kwargs,field", [
    ({"bits": 5}, "bits"),
    ({"bits": True}, "bits"),
    ({"group_size": 100}, "group_size"),
    ({"group_size": 0}, "group_size"),
    ({"group_size": -2}, "group_size"),
    ({"scale_dtype": "int8"}, "scale_dtype"),
    ({"search_dtype": torch.float16}, "search_dtype"),
    ({"n_grid": 0}, "n_grid"),
    ({"n_clip_grid": 1.5}, "n_clip_grid"),
    ({"max_shrink": 1.0}, "max_shrink"),
    ({"skip_clip": [""]}, "skip_clip"),
    ({"modules_to_not_convert": 3}, "modules_to_not_convert"),
    ({"loss_token_subsample": 0}, "loss_token_subsample"),
    ({"sym": "yes"}, "sym"),
    ({"seed": 1.0}, "seed"),
    ({"loss_scope": "layer"}, "loss_scope"),
    ({"clip_token_subsample": 0}, "clip_token_subsample"),
])
def test_quant_config_rejects(kwargs, field):
    with pytest.raises(ValueError, match=field):
        QuantConfig(**kwargs)


def test_quant_config_normalizes():
    c = QuantConfig(bits=3, group_size=-1, scale_dtype=torch.bfloat16, skip_clip="*q_proj")
    assert c.scale_dtype == "bfloat16" and c.scale_torch_dtype is torch.bfloat16
    assert c.skip_clip == ("*q_proj",)
    assert QuantConfig(scale_dtype="fp32").scale_dtype == "float32"
    with pytest.raises(Exception):
        c.bits = 4  # frozen


def test_patterns():
    assert matches_any("model.layers.0.self_attn.q_proj", QuantConfig().skip_clip)
    assert not matches_any("model.layers.0.self_attn.v_proj", QuantConfig().skip_clip)
    assert matches_any("lm_head", ("lm_head",)) and matches_any("model.lm_head", ("lm_head",))
    assert matches_any("model.embed_tokens", QuantConfig().modules_to_not_convert)


@pytest.mark.parametrize("kwargs,field", [
    ({"n_samples": 0}, "n_samples"), ({"seqlen": -1}, "seqlen"), ({"source": []}, "empty"),
    ({"source": ["a", 3]}, "strings"), ({"text_column": ""}, "text_column"), ({"source": ""}, "source"),
])
def test_calib_config_rejects(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CalibConfig(**kwargs)


def test_auto_search_dtype():
    from pathlib import Path

    from cat_core.config import auto_search_dtype

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    want = "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"
    assert auto_search_dtype("cpu") == want
    assert QuantConfig(search_dtype=auto_search_dtype("cpu")).search_dtype == want
    if torch.cuda.is_available():
        assert auto_search_dtype("cuda") == ("bfloat16" if torch.cuda.is_bf16_supported() else "float32")
