from __future__ import annotations

import re

import pytest
import torch

from cat_core.config import CalibConfig, ClipSearch, QuantConfig, matches_any


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
    assert c.clip.skip == ("*q_proj",)
    assert QuantConfig(scale_dtype="fp32").scale_dtype == "float32"
    with pytest.raises(Exception):
        c.bits = 4  # frozen


def test_patterns():
    assert matches_any("model.layers.0.self_attn.q_proj", ClipSearch().skip)
    assert not matches_any("model.layers.0.self_attn.v_proj", ClipSearch().skip)
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


def test_stage_settings_are_nested_and_the_top_level_is_small():
    import dataclasses

    from cat_core.config import GPTQ, ClipSearch, Grams, Importance, Learned, Nearest, ScaleSearch

    c = QuantConfig()
    assert len(dataclasses.fields(c)) <= 12
    assert isinstance(c.scales, ScaleSearch) and isinstance(c.clip, ClipSearch) and isinstance(c.grams, Grams)
    assert c.rounding == Learned(init=GPTQ())
    c = QuantConfig(rounding=Learned(init=Importance()))  # the "auto" searches are off with it
    assert c.scales is None and c.clip is None
    assert QuantConfig(rounding="nearest").rounding == Nearest()
    assert QuantConfig(clip=False).clip is None and QuantConfig(clip=None).clip is None
    # flat keywords of earlier releases map onto the nested settings, on top of given ones
    c = QuantConfig(scales=ScaleSearch(n_grid=7), screen_keep=2, clip_refine=False, gram_samples="search",
                    rounding="learned", learned_round_iters=3, learned_round_init="nearest")
    assert c.scales == ScaleSearch(n_grid=7, screen_keep=2) and c.clip == ClipSearch(refine=False)
    assert c.grams == Grams(samples="search") and c.rounding == Learned(iters=3, init=Nearest())
    assert dataclasses.replace(c, n_grid=3).scales.n_grid == 3


@pytest.mark.parametrize("old, new", [("n_grid", "scales=ScaleSearch(n_grid=...)"),
                                      ("gptq_damp", "rounding=GPTQ(damp=...)"),
                                      ("learned_round_lr", "rounding=Learned(lr=...)"),
                                      ("skip_clip", "clip=ClipSearch(skip=...)"),
                                      ("gram_samples", "Grams(samples=...)")])
def test_reading_a_moved_field_names_its_new_spelling(old, new):
    with pytest.raises(AttributeError, match=re.escape(new)):
        getattr(QuantConfig(), old)


@pytest.mark.parametrize("make, match", [
    (lambda c: c.ScaleSearch(n_grid=0), r"scales\.n_grid must be an int >= 1"),
    (lambda c: c.ScaleSearch(loss_scope="model"), r"scales\.loss_scope must be one of"),
    (lambda c: c.ClipSearch(max_shrink=1.5), r"clip\.max_shrink must be a float in \(0, 1\)"),
    (lambda c: c.Grams(samples="some"), r"grams\.samples must be one of"),
    (lambda c: c.GPTQ(damp=0), r"GPTQ\.damp must be a float in \(0, 1\)"),
    (lambda c: c.Learned(init="rtn"), r"Learned\.init must be GPTQ\(...\), Nearest\(\) or Importance\(\)"),
    (lambda c: c.QuantConfig(rounding=3), r"rounding must be Nearest\(\), GPTQ\(...\), Importance\(\), Learned\(...\)"),
    (lambda c: c.QuantConfig(clip="yes"), r"clip must be a ClipSearch"),
    (lambda c: c.QuantConfig(gptq_damp=2.0, rounding="gptq"), r"gptq_damp must be a float .*GPTQ\(damp=\.\.\.\)"),
])
def test_nested_settings_errors_name_the_field(make, match):
    import cat_core.config as c

    with pytest.raises(ValueError, match=match):
        make(c)


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="n_grids"):
        QuantConfig(n_grids=3)


def test_auto_rounding_follows_the_format():
    """rounding="auto" (the default): learned rounding from importance codes, searches off, at
    Q4_0's format (4-bit symmetric g32); from GPTQ codes, searches on, elsewhere; an explicit start
    or min/max tuning keeps GPTQ's default start."""
    from cat_core.config import GPTQ, Importance, Learned

    q4_0 = QuantConfig(bits=4, group_size=32, sym=True)
    assert q4_0.rounding == Learned(init=Importance())
    assert q4_0.scales is None and q4_0.clip is None
    for other in (QuantConfig(bits=4, group_size=32), QuantConfig(bits=4, group_size=64, sym=True),
                  QuantConfig(bits=3, group_size=32, sym=True), QuantConfig()):
        assert other.rounding == Learned(init=GPTQ())
        assert other.scales is not None and other.clip is not None
    assert QuantConfig(bits=4, group_size=32, sym=True, learned_round_init="gptq").rounding.init == GPTQ()
    assert QuantConfig(bits=4, group_size=32, sym=True, learned_round_minmax=True).rounding.minmax
    assert QuantConfig(bits=4, group_size=32, sym=True, rounding="learned").rounding == Learned()
