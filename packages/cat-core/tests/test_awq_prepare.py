"""prepare(): what quantize() settles before calibration, for front-ends that want it first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_models import sample_ids, tiny_model  # noqa: E402
from cat_core import AWQError, QuantConfig, quantize  # noqa: E402
from cat_core.awq import prepare  # noqa: E402
from cat_core.moe import UnfusedExperts  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_prepare_unfuses_discovers_and_lists_the_layers_quantize_quantizes():
    model = tiny_model("qwen2_moe")
    prepared = prepare(model)
    assert any(isinstance(m, UnfusedExperts) for m in model.modules())
    assert [bg.module for bg in prepared.graph.blocks] == list(model.model.layers)
    res = quantize(model, None, QuantConfig(bits=4, group_size=-1, rounding="nearest", n_grid=3),
                   calib=sample_ids(4, 16, seed=1), graph=prepared.graph, progress=False)
    assert sorted(res.tensors) == sorted(name for name, _ in prepared.layers)
    assert all(res.tensors[name].shape[1] == k for name, k in prepared.layers)


def test_prepare_lists_gpt2_conv1d_layers_with_their_in_features():
    model = tiny_model("gpt2")
    layers = dict(prepare(model).layers)
    fc = model.transformer.h[0].mlp.c_fc
    assert layers["transformer.h.0.mlp.c_fc"] == fc.weight.shape[0]  # Conv1D stores [in, out]


def test_prepare_refuses_a_model_with_nothing_to_quantize():
    with pytest.raises(AWQError, match=r"none of the 2 decoder blocks .* has an nn\.Linear"):
        prepare(tiny_model("llama"), QuantConfig(modules_to_not_convert=("*",)))


def test_quantize_checks_group_size_on_every_layer_before_calibration():
    with pytest.raises(ValueError, match=r"group_size=64 does not divide K=72 of layer 'model\.layers\.0\."):
        quantize(tiny_model("llama"), None, QuantConfig(group_size=64), calib=torch.zeros(1, 1, dtype=torch.long),
                 progress=False)
