"""What quantize / rtn_quantize are given is checked before any work: token ids outside the
vocabulary, NaN/inf weights; each error is one line naming the argument or the tensor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import cat_core.awq as awq_mod
from cat_core.awq import AWQError, quantize, rtn_quantize
from cat_core.config import QuantConfig

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_models import VOCAB, sample_ids, tiny_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = QuantConfig(bits=4, group_size=-1)


@pytest.fixture
def no_search(monkeypatch):
    """Make reaching the AWQ search (the expensive part) a test failure."""
    def boom(*a, **k):
        raise AssertionError("the search started")

    monkeypatch.setattr(awq_mod, "run_awq", boom)


@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 1000, -1])
def test_calib_id_outside_vocab_is_one_line_value_error(bad, no_search):
    model = tiny_model("llama")
    ids = sample_ids(3, 16)
    ids[2, 7] = bad
    with pytest.raises(ValueError) as e:
        quantize(model, None, CFG, calib=ids, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("calib:") and f"token id {bad}" in msg and f"vocabulary of {VOCAB}" in msg
    assert "[2, 7]" in msg


def test_calib_ids_in_range_reach_the_search(no_search):
    with pytest.raises(AssertionError, match="the search started"):
        quantize(tiny_model("llama"), None, CFG, calib=sample_ids(2, 16), progress=False)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_quantize_names_the_nonfinite_tensor_before_calibration(value, monkeypatch, no_search):
    import cat_core.calib as calib

    def no_calib(*a, **k):
        raise AssertionError("calibration started")

    monkeypatch.setattr(calib, "calibration_samples", no_calib)
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[4, 2] = value
    with pytest.raises(AWQError) as e:
        quantize(model, None, CFG, calib="self", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "model.layers.1.mlp.up_proj.weight" in msg and "1 non-finite" in msg


def test_quantize_names_a_nonfinite_norm_too(no_search):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[3] = float("nan")
    with pytest.raises(AWQError, match=r"model\.layers\.0\.input_layernorm\.weight holds 1 non-finite"):
        quantize(model, None, CFG, calib=sample_ids(2, 16), progress=False)


def test_rtn_quantize_names_the_nonfinite_weight_and_changes_nothing():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight[0, 0] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AWQError) as e:
        rtn_quantize(model, CFG)
    msg = str(e.value)
    assert "model.layers.0.self_attn.k_proj.weight" in msg and "NaN/inf" in msg and "\n" not in msg
    after = model.state_dict()
    for k, v in before.items():  # nothing was quantized in place before the check
        assert torch.equal(v, after[k]) or (v.isnan() == after[k].isnan()).all() and torch.equal(
            v.nan_to_num(), after[k].nan_to_num()), k


def test_rtn_quantize_of_finite_weights_still_works():
    res = rtn_quantize(tiny_model("llama"), CFG)
    assert res.tensors and all(torch.isfinite(p).all() for p in res.model.parameters())
