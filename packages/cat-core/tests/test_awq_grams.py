"""Grams recorded in the statistics pass, before the fold, and carried into the folded space.

The runner no longer runs each block once more after the fold to capture its linears' input
Grams: it records them while the statistics pass runs the block, and rescales each folded
group's consumers' Grams by the scales (``H <- D H D``, ``D = diag(1/s)``). These tests check that
against a capture after the fold, on every architecture of the tiny-model table.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_models import NAMES, sample_ids, tiny_model  # noqa: E402
from cat_core.awq._capture import capture_block_calls, hidden_of  # noqa: E402
from cat_core.awq._conv1d import conv1d_as_linear  # noqa: E402
from cat_core.awq._grams import (  # noqa: E402
    InputGramRecorder,
    capture_full_grams,
    capture_linear_grams,
    full_means,
    group_means,
    rescale_folded,
    run_block,
)
from cat_core.awq._block import block_linears  # noqa: E402
from cat_core.config import QuantConfig  # noqa: E402
from cat_core.graph import apply_scales, discover  # noqa: E402
from cat_core.moe import unfuse_experts  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


def _block_runs(model, graph, chunks):
    """For each block: its (call, hidden) runs on ``chunks``, the blocks run unquantized."""
    blocks = [bg.module for bg in graph.blocks]
    calls = capture_block_calls(model, blocks, chunks, CPU)
    hiddens = [hidden_of(c) for c in calls[0]]
    out = []
    for b, block in enumerate(blocks):
        runs = list(zip(calls[b], hiddens))
        out.append(runs)
        with torch.no_grad():
            hiddens = [run_block(block, c, h, CPU) for c, h in runs]
    return out


@pytest.mark.parametrize("name", NAMES)
def test_recorded_grams_rescaled_equal_grams_captured_after_the_fold(name):
    """Every block of every architecture: Grams recorded before folding random scales into every
    group, then rescaled, equal the Grams captured after the fold -- full (GPTQ's) and per group
    (the clip search's), every token and a sampled subset."""
    model = tiny_model(name)
    unfuse_experts(model)
    with conv1d_as_linear(model):  # as quantize() sees GPT-2
        _check_recorded_grams(name, model)


def _check_recorded_grams(name, model):
    graph = discover(model, sample_input_ids=sample_ids(1, 12))
    all_runs = _block_runs(model, graph, [sample_ids(2, 13, seed=1), sample_ids(3, 13, seed=2)])
    gen = torch.Generator().manual_seed(5)
    rescaled = 0
    for bg, runs in zip(graph.blocks, all_runs):
        block = bg.module
        linears = block_linears(block, bg.path, QuantConfig())
        cases = [(-1, None), (bg_gs := _group_size(linears), None), (-1, 20)]
        recs = [InputGramRecorder(linears, gs, n, seed=3) for gs, n in cases]
        with torch.no_grad():
            for call, hidden in runs:
                for rec in recs:
                    with rec.recording():
                        run_block(block, call, hidden, CPU)
        parts = [rec.parts() for rec in recs]
        for group in bg.groups:
            s = torch.exp(torch.randn(group.channels, generator=gen) * 0.5)
            apply_scales(block, group, s)
            tied = group.tie(s.float())
            for p in parts:
                assert rescale_folded(p, group.consumers, tied), (name, group.describe())
            rescaled += 1
        with torch.no_grad():
            after = [
                capture_full_grams(block, linears, runs, CPU, None, 3),
                capture_linear_grams(block, linears, runs, CPU, bg_gs, None, 3),
                capture_full_grams(block, linears, runs, CPU, 20, 3),
            ]
        got = [full_means(parts[0]), group_means(parts[1], linears, bg_gs), full_means(parts[2])]
        for want, have in zip(after, got):
            assert set(want) == set(have) and want, name
            for rel in want:
                scale = want[rel].abs().max()
                torch.testing.assert_close(have[rel] / scale, want[rel] / scale, rtol=0, atol=2e-5,
                                           msg=lambda m, r=rel: f"{name} {bg.path}.{r}: {m}")
    assert rescaled > 0, name


def test_every_architecture_has_linears_for_the_runner():
    """GPT-2's Conv1D layers are not nn.Linear: only quantize()'s conv1d_as_linear gives the
    runner linears to record there."""
    for name in NAMES:
        model = tiny_model(name)
        unfuse_experts(model)
        with conv1d_as_linear(model):
            graph = discover(model, sample_input_ids=sample_ids(1, 12))
            assert block_linears(graph.blocks[0].module, graph.blocks[0].path, QuantConfig()), name
        graph = discover(model, sample_input_ids=sample_ids(1, 12))
        has = bool(block_linears(graph.blocks[0].module, graph.blocks[0].path, QuantConfig()))
        assert has == (name != "gpt2"), name


def _group_size(linears) -> int:
    """A group size dividing every linear's input (the tiny models' widths differ)."""
    import math

    k = 0
    for _, _, m in linears:
        k = math.gcd(k, m.in_features)
    return next(g for g in (32, 24, 18, 16, 12, 10, 9, 8, 6, 4, 3, 2, 1) if k % g == 0)


def test_rescale_refuses_what_the_fold_does_not_scale():
    """An input also read by a linear outside the group, or a consumer fed two inputs: no change,
    False (the runner then captures after the fold)."""
    from torch import nn

    a, b, c = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(8, 4)
    linears = [("a", "a", a), ("b", "b", b), ("c", "c", c)]
    rec = InputGramRecorder(linears, -1, None, 0)
    x, y = torch.randn(5, 8), torch.randn(5, 8)
    with torch.no_grad(), rec.recording():
        a(x), b(x), c(y), c(x * 2)
    parts = rec.parts()
    before = {id(p): p.sum.clone() for ps in parts.values() for p in ps}
    s = torch.full((8,), 2.0)
    assert not rescale_folded(parts, ["a"], s)  # b reads a's input too
    assert not rescale_folded(parts, ["c"], s)  # c reads two inputs
    assert not rescale_folded(parts, ["a", "b"], torch.ones(6))  # wrong size
    for ps in parts.values():
        for p in ps:
            assert torch.equal(p.sum, before[id(p)])
    assert rescale_folded(parts, ["a", "b"], s)
    torch.testing.assert_close(parts["a"][0].sum, before[id(parts["a"][0])] / 4)


# -- the runner ------------------------------------------------------------------------------


def _tiny_llama():
    from test_awq import tiny_llama

    return tiny_llama()


def _quantize_recording(monkeypatch, config, samples, *, recapture: bool, user: str = "gptq_quantize",
                        capture: str = "capture_full_grams"):
    """Quantize a tiny Llama with ``config``; returns (the Gram the runner's ``user`` -- GPTQ or
    the clip search -- got for each linear, tensors, calls of the runner's ``capture``).
    ``recapture``: force the capture after the fold (the path before the statistics pass
    recorded the Grams)."""
    import cat_core.awq._stage_clip as clip_stage
    import cat_core.awq._stage_round as round_stage
    import cat_core.awq._stage_stats as stats_stage
    from test_awq import _run

    user_module = round_stage if user == "gptq_quantize" else clip_stage
    real_use, real_capture = getattr(user_module, user), getattr(clip_stage, capture)
    seen: dict[str, torch.Tensor] = {}
    captures: list[int] = []

    def use(weight, gram, cfg, *, name, **kw):
        seen[name] = gram.clone()
        return real_use(weight, gram, cfg, name=name, **kw)

    def count(*a, **k):
        captures.append(1)
        return real_capture(*a, **k)

    monkeypatch.setattr(user_module, user, use)
    monkeypatch.setattr(clip_stage, capture, count)
    if recapture:
        monkeypatch.setattr(stats_stage, "_gram_recorder", lambda *a, **k: None)
    with torch.no_grad():
        tensors, _ = _run(_tiny_llama(), config, samples)
    monkeypatch.undo()
    return seen, tensors, len(captures)


@pytest.mark.parametrize("mode", ["all", "search"])
@pytest.mark.parametrize("n_tokens", [None, 64])
def test_runner_uses_the_statistics_pass_grams(monkeypatch, mode, n_tokens):
    """Block 0's GPTQ Grams (same sampled tokens) are those a capture after the fold gives, with
    no capture pass. Later blocks see the earlier blocks' codes, where float-rounding differences
    of the Grams can flip a GPTQ code at a tie (one in block 0 here): they agree in most codes."""
    from test_awq import CFG, _samples

    config = dataclasses.replace(CFG, rounding="gptq", gram_samples=mode, clip_token_subsample=n_tokens)
    samples = _samples(24, 16, 2)
    fast, t_fast, n_fast = _quantize_recording(monkeypatch, config, samples, recapture=False)
    slow, t_slow, n_slow = _quantize_recording(monkeypatch, config, samples, recapture=True)
    assert n_fast == 0 and n_slow == 2  # one capture per block before
    assert set(fast) == set(slow) == set(t_fast)
    for name in (n for n in fast if n.startswith("model.layers.0.")):
        scale = slow[name].abs().max()
        torch.testing.assert_close(fast[name] / scale, slow[name] / scale, rtol=0, atol=1e-5, msg=name)
    same = sum(int((t_fast[n].codes == t_slow[n].codes).sum()) for n in t_fast)
    total = sum(t_fast[n].codes.numel() for n in t_fast)
    assert same >= 0.98 * total


def test_sequential_still_captures_after_each_stage(monkeypatch):
    """sequential=True needs each stage's Grams after the earlier stages are quantized: captured
    per stage, not recorded."""
    from test_awq import CFG, _samples

    config = dataclasses.replace(CFG, rounding="gptq", sequential=True, gram_samples="all")
    _, tensors, n = _quantize_recording(monkeypatch, config, _samples(8, 16, 4), recapture=False)
    assert n == 2 * 4 and len(tensors) == 14  # 4 stages (q/k/v, o, gate/up, down) per block


def test_nearest_rounding_clips_on_recorded_grams(monkeypatch):
    """rounding="nearest": the clip search's per-group Grams come from the statistics pass too,
    and equal a capture after the fold."""
    from test_awq import CFG, _samples

    config = dataclasses.replace(CFG, rounding="nearest", clip_token_subsample=None)
    kw = dict(user="search_clip", capture="capture_linear_grams")
    fast, t_fast, n_fast = _quantize_recording(monkeypatch, config, _samples(24, 16, 2), recapture=False, **kw)
    slow, t_slow, n_slow = _quantize_recording(monkeypatch, config, _samples(24, 16, 2), recapture=True, **kw)
    assert n_fast == 0 and n_slow == 2
    assert set(fast) == set(slow) and len(fast) == 2 * 5  # v, o, gate, up, down (q, k: skip_clip)
    for name in fast:
        scale = slow[name].abs().max()
        torch.testing.assert_close(fast[name] / scale, slow[name] / scale, rtol=0, atol=1e-5, msg=name)
    for n in t_fast:
        assert torch.equal(t_fast[n].codes, t_slow[n].codes), n


@pytest.mark.parametrize("k", [576, 1000, 2311])
def test_full_gram_symmetric_accumulation(k):
    """A full Gram accumulated from its lower column blocks (mirrored on read) is X^T X over every
    batch, exactly symmetric; merging, reading between batches and rescaling keep it so."""
    from cat_core.awq._clip_search import GramAccumulator

    g = torch.Generator().manual_seed(k)
    xs = [torch.randn(n, k, generator=g) for n in (37, 300, 5)]
    acc, other = GramAccumulator(k, -1), GramAccumulator(k, -1)
    assert acc._edges is not None and len(acc._edges) - 1 == min(8, k // 256)
    acc.add(xs[0])
    _ = acc.sum  # a read between batches mirrors, the next add must still count every block
    acc.add(xs[1])
    other.add(xs[2])
    acc.merge(other)
    x = torch.cat(xs).double()
    want = (x.T @ x).float()
    got = acc.sum[0]
    assert acc.tokens == 342 and torch.equal(got, got.T)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(acc.mean()[0], want / 342, rtol=1e-5, atol=1e-5)
