"""AWQ on a tiny random Llama with outlier activation channels, on hand-built scale groups.

The groups are written out here (not discovered) so the search is tested independently of the
graph discovery; the fold is the graph's own fold rule plus the consumer-side multiply.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from cat_core.awq import AWQError, quantize, rtn_quantize
from cat_core.awq._pipeline import run_awq
from cat_core.config import QuantConfig
from cat_core.quant import dequantize

types = pytest.importorskip("cat_core.graph._types")

HIDDEN, INTER, HEADS, KV, HEAD_DIM, VOCAB = 96, 160, 3, 1, 32, 101


def tiny_llama(seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=2,
                      num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HEAD_DIM,
                      max_position_embeddings=128, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.model.layers:
            # A few input channels with large activations: where AWQ earns its keep.
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                idx = torch.randperm(HIDDEN, generator=g)[:4]
                norm.weight[idx] = 20.0 + 10 * torch.rand(4, generator=g)
            up_idx = torch.randperm(INTER, generator=g)[:4]
            layer.mlp.up_proj.weight[up_idx] *= 15.0
    return model


def hand_groups(model: nn.Module):
    rep = HEADS // KV
    v_rows = tuple(((c // HEAD_DIM) // rep) * HEAD_DIM + c % HEAD_DIM for c in range(HEADS * HEAD_DIM))
    groups = [
        types.ScaleGroup("input_layernorm", types.NormFold("input_layernorm", "input_layernorm.weight"),
                         ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn",
                         channels=HIDDEN),
        types.ScaleGroup("self_attn.v_proj",
                         types.LinearFold("self_attn.v_proj", "self_attn.v_proj.weight", v_rows, 0, via="attention"),
                         ("self_attn.o_proj",), "self_attn.o_proj", channels=HEADS * HEAD_DIM),
        types.ScaleGroup("post_attention_layernorm",
                         types.NormFold("post_attention_layernorm", "post_attention_layernorm.weight"),
                         ("mlp.gate_proj", "mlp.up_proj"), "mlp", channels=HIDDEN),
        types.ScaleGroup("mlp.up_proj",
                         types.LinearFold("mlp.up_proj", "mlp.up_proj.weight", tuple(range(INTER)), 0, via="gate"),
                         ("mlp.down_proj",), "mlp.down_proj", channels=INTER),
    ]
    blocks = [types.BlockGraph(i, f"model.layers.{i}", layer, list(groups))
              for i, layer in enumerate(model.model.layers)]
    return types.LayerGraph("model.layers", blocks)


def fold(block: nn.Module, group, scales: torch.Tensor) -> None:
    s = group.tie(scales.float())
    group.fold.apply(block, s)
    for p in group.consumers:
        w = block.get_submodule(p).weight
        w.data.copy_((w.data.float() * s).to(w.dtype))


def _run(model, config, samples, **kw):
    graph = hand_groups(model)
    return run_awq(model, samples, graph, config, device=None, fold=fold, progress=False, **kw)


def _samples(n, t, seed):
    return torch.randint(3, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


# GPTQ rounding: what most tests here check (learned rounding has test_learned_round.py)
CFG = QuantConfig(bits=3, group_size=32, n_grid=10, n_clip_grid=8, loss_token_subsample=128,
                  clip_token_subsample=128, rounding="gptq")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fp_model():
    return tiny_llama()


def test_fold_preserves_function(fp_model):
    m = copy.deepcopy(fp_model)
    x = _samples(2, 16, 9)
    ref = m(x).logits
    for bg in hand_groups(m).blocks:
        for g in bg.groups:
            fold(bg.module, g, torch.rand(g.channels, generator=torch.Generator().manual_seed(1)) + 0.5)
    assert torch.allclose(m(x).logits, ref, atol=1e-4, rtol=1e-4)


def test_awq_runs_deterministic_and_model_matches_codes(fp_model):
    samples = _samples(8, 32, 0)
    a = copy.deepcopy(fp_model)
    with torch.no_grad():
        ta, rep = _run(a, CFG, samples)
    b = copy.deepcopy(fp_model)
    with torch.no_grad():
        tb, _ = _run(b, CFG, samples)
    names = {f"model.layers.{i}.{p}" for i in range(2) for p in
             ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert set(ta) == names
    assert len(rep) == 8 and all(r.best_loss <= r.rtn_loss for r in rep)
    assert any(r.alpha is not None for r in rep)
    for n in names:
        assert torch.equal(ta[n].codes, tb[n].codes) and torch.equal(ta[n].scales, tb[n].scales)
        assert torch.equal(ta[n].zeros, tb[n].zeros)
        assert int(ta[n].codes.max()) < 8
        w = a.get_submodule(n).weight
        assert torch.equal(w.data, dequantize(ta[n], w.dtype))  # the model is what gets packed
    assert a.lm_head.weight.equal(fp_model.lm_head.weight)  # never quantized


def _err(model, ref_model, x):
    with torch.no_grad():
        return float((model(x).logits - ref_model(x).logits).pow(2).mean())


@pytest.mark.parametrize("sym", [False, True])
def test_awq_beats_rtn_on_held_out_input(fp_model, sym):
    cfg = QuantConfig(bits=3, group_size=32, sym=sym, n_grid=10, n_clip_grid=8,
                      loss_token_subsample=128, clip_token_subsample=128)
    held_out = _samples(4, 32, 123)
    awq = copy.deepcopy(fp_model)
    with torch.no_grad():
        _run(awq, cfg, _samples(8, 32, 0))
    rtn = rtn_quantize(copy.deepcopy(fp_model), cfg).model
    e_awq, e_rtn = _err(awq, fp_model, held_out), _err(rtn, fp_model, held_out)
    print(f"sym={sym} awq={e_awq:.4g} rtn={e_rtn:.4g}")
    assert e_awq < 0.8 * e_rtn, (e_awq, e_rtn)


def test_nan_in_block_raises_naming_block(fp_model):
    m = copy.deepcopy(fp_model)
    with torch.no_grad():
        m.model.layers[1].self_attn.q_proj.weight[3, 5] = float("nan")
        with pytest.raises(AWQError, match=r"block 1 .*model\.layers\.1.*loss history"):
            _run(m, CFG, _samples(8, 32, 0))


def test_nan_in_loss_names_group_and_history(fp_model, monkeypatch):
    import cat_core.awq._scale_search as ss

    real = ss.fake_quantize
    calls = {"n": 0}

    def poisoned(w, config):
        calls["n"] += 1
        out = real(w, config)
        if calls["n"] > 6:  # after a few finite grid points
            out = out.clone()
            out[0, 0] = float("inf")
        return out

    monkeypatch.setattr(ss, "fake_quantize", poisoned)
    m = copy.deepcopy(fp_model)
    with torch.no_grad(), pytest.raises(AWQError) as e:
        _run(m, CFG, _samples(8, 32, 0))
    msg = str(e.value)
    assert "block 0" in msg and "self_attn.q_proj" in msg and "rtn:" in msg


def test_group_size_checked_before_calibration(fp_model, monkeypatch):
    import cat_core.calib

    def never(*a, **k):
        raise AssertionError("calibration data was prepared before the group size was checked")

    monkeypatch.setattr(cat_core.calib, "calibration_samples", never)
    with pytest.raises(ValueError, match=r"group_size=96 does not divide K=.* of layer 'model\.layers\.0\."):
        quantize(copy.deepcopy(fp_model), None, QuantConfig(bits=4, group_size=96), calib="self", progress=False)


def test_public_quantize_with_token_ids(fp_model, monkeypatch):
    import cat_core.graph

    if not hasattr(cat_core.graph, "apply_scales"):  # the graph package is written concurrently
        monkeypatch.setattr(cat_core.graph, "apply_scales", fold, raising=False)
    m = copy.deepcopy(fp_model)
    res = quantize(m, None, CFG, calib=_samples(8, 32, 0), graph=hand_groups(m), progress=False)
    assert res.model is m and len(res.tensors) == 14 and len(res.report) == 8
    assert {"capture", "stats", "scale_search", "clip_search", "propagate"} <= set(res.timings)


def test_bf16_search_dtype_still_beats_rtn(fp_model):
    cfg = QuantConfig(bits=3, group_size=32, n_grid=10, n_clip_grid=8, loss_token_subsample=128,
                      clip_token_subsample=128, search_dtype="bfloat16")
    awq = copy.deepcopy(fp_model)
    with torch.no_grad():
        tensors, rep = _run(awq, cfg, _samples(8, 32, 0))
    assert all(t.scales.dtype == torch.float16 for t in tensors.values())
    rtn = rtn_quantize(copy.deepcopy(fp_model), cfg).model
    held_out = _samples(4, 32, 123)
    assert _err(awq, fp_model, held_out) < 0.8 * _err(rtn, fp_model, held_out)


def test_quantize_on_discovered_graph(fp_model):
    """The one-call API end to end, with the layer graph discovered by cat_core.graph."""
    m = copy.deepcopy(fp_model)
    res = quantize(m, None, CFG, calib=_samples(8, 32, 0), progress=False)
    assert len(res.tensors) == 14 and res.report
    rtn = rtn_quantize(copy.deepcopy(fp_model), CFG).model
    held_out = _samples(4, 32, 123)
    assert _err(m, fp_model, held_out) < _err(rtn, fp_model, held_out)


def test_clip_refine_never_worse_and_moves_ends_independently():
    from cat_core.awq._clip_search import GramAccumulator, search_clip

    g = torch.Generator().manual_seed(3)
    w = torch.randn(24, 128, generator=g)
    w[:, 5] = 6.0  # one far outlier at the top of every row's first group: only hi should shrink
    acc = GramAccumulator(128, 64)
    acc.add(torch.randn(256, 128, generator=g))
    x = acc.mean()
    base = QuantConfig(bits=3, group_size=64, clip_refine=False)
    lo0, hi0, e0 = search_clip(w, x, base)
    lo1, hi1, e1 = search_clip(w, x, dataclasses.replace(base, clip_refine=True))
    assert (e1 <= e0).all() and (e1 < e0).any()
    assert (hi1 / hi0 != lo1 / lo0).any()  # some ends moved by different factors
    # symmetric quantization has one bound: refine is a no-op there
    sym = QuantConfig(bits=3, group_size=64, sym=True, clip=True)
    a, b = search_clip(w, x, sym), search_clip(w, x, dataclasses.replace(sym, clip_refine=False))
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_clip_scored_by_the_gram_diagonal():
    """``ClipSearch(gram="diagonal")`` is the full search on a Gram with its off-diagonal terms
    removed: with strongly correlated inputs it picks other bounds than the full objective."""
    from cat_core.awq._clip_search import GramAccumulator, search_clip
    from cat_core.config import ClipSearch

    g = torch.Generator().manual_seed(7)
    w = torch.randn(19, 96, generator=g)
    acc = GramAccumulator(96, 32)
    base = torch.randn(300, 96, generator=g)
    acc.add(base + 3 * base[:, :1] * torch.randn(96, generator=g))  # every channel shares one component
    h = acc.mean()
    full = QuantConfig(bits=3, group_size=32, clip=True)
    diag = dataclasses.replace(full, clip=ClipSearch(gram="diagonal"))
    only_diag = torch.diag_embed(torch.diagonal(h, dim1=-2, dim2=-1))
    a, b = search_clip(w, h, diag), search_clip(w, only_diag, full)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    lo_full, hi_full, _ = search_clip(w, h, full)
    assert not (torch.equal(a[0], lo_full) and torch.equal(a[1], hi_full))
    with pytest.raises(ValueError, match="clip.gram"):
        ClipSearch(gram="block")


def test_gram_accumulates_in_batches_and_checks_shapes():
    from cat_core.awq._clip_search import GramAccumulator, search_clip

    g = torch.Generator().manual_seed(5)
    x = torch.randn(77, 96, generator=g)
    acc = GramAccumulator(96, 32)
    for part in (x[:30], x[30:31], x[31:]):
        acc.add(part)
    xg = x.reshape(77, 3, 32)
    want = torch.stack([xg[:, i].T @ xg[:, i] for i in range(3)]) / 77
    assert acc.tokens == 77
    torch.testing.assert_close(acc.mean(), want, rtol=1e-5, atol=1e-5)
    merged, part = GramAccumulator(96, 32), GramAccumulator(96, 32)
    merged.merge(part)  # an empty accumulator adds nothing
    part.add(x[:30])
    merged.merge(part)
    part.add(x[30:])
    merged.merge(part)  # merged has x[:30] twice, then x[30:]
    assert merged.tokens == 30 + 77
    xx = torch.cat([x[:30], x]).reshape(-1, 3, 32)
    torch.testing.assert_close(merged.mean(), torch.stack([xx[:, i].T @ xx[:, i] for i in range(3)]) / 107,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no input"):
        GramAccumulator(96, 32).mean()
    with pytest.raises(ValueError, match=r"gram of w must have shape \(3, 32, 32\)"):
        search_clip(torch.randn(5, 96), acc.mean()[:2], QuantConfig(bits=4, group_size=32), name="w")


def test_clip_grams_cover_every_token_of_the_search_batch(fp_model):
    """By default the clip search sees every token (a subsample can miss the rare massive-activation
    tokens and pick clips that ruin them); q, k and v share one Gram of their common input."""
    from cat_core.awq._capture import capture_block_calls, hidden_of
    from cat_core.awq._grams import capture_linear_grams
    from cat_core.awq._block import block_linears

    assert QuantConfig().grams.token_subsample is None
    model = copy.deepcopy(fp_model)
    block = model.model.layers[0]
    samples = _samples(3, 17, 7)
    call = capture_block_calls(model, list(model.model.layers), [samples], torch.device("cpu"))[0][0]
    linears = block_linears(block, "model.layers.0", QuantConfig())
    seen: dict[str, torch.Tensor] = {}

    def keep(rel):
        def hook(mod, args):
            seen.setdefault(rel, args[0].reshape(-1, args[0].shape[-1]))
        return hook

    hooks = [m.register_forward_pre_hook(keep(rel)) for rel, _, m in linears]
    with torch.no_grad():
        block(*call.args, **call.kwargs)
    for h in hooks:
        h.remove()
    grams = capture_linear_grams(block, linears, [(call, hidden_of(call))], torch.device("cpu"), 32, None, 0)
    assert set(grams) == {rel for rel, _, _ in linears}
    for rel, x in seen.items():
        assert x.shape[0] == 3 * 17
        xg = x.float().reshape(x.shape[0], -1, 32)
        want = torch.stack([xg[:, i].T @ xg[:, i] for i in range(xg.shape[1])]) / x.shape[0]
        torch.testing.assert_close(grams[rel], want, rtol=1e-4, atol=1e-5)
    assert torch.equal(grams["self_attn.q_proj"], grams["self_attn.v_proj"])
    sub = capture_linear_grams(block, linears, [(call, hidden_of(call))], torch.device("cpu"), 32, 10, 0)
    assert not torch.allclose(sub["mlp.down_proj"], grams["mlp.down_proj"])


def test_loss_scope_block_scores_the_block_output(fp_model):
    """With loss_scope="block" every group's losses are MSEs of the decoder block's output (so the
    identity's loss differs from the per-module one), and the result still beats RTN."""
    cfg = dataclasses.replace(CFG, loss_scope="block")
    samples = _samples(8, 32, 0)
    m_block, m_mod = copy.deepcopy(fp_model), copy.deepcopy(fp_model)
    _, rep_block = _run(m_block, cfg, samples)
    _, rep_mod = _run(m_mod, CFG, samples)
    assert len(rep_block) == len(rep_mod) == 8
    # block 0 sees the same inputs in both runs: the first group's RTN loss differs only by scope
    assert rep_block[0].rtn_loss != rep_mod[0].rtn_loss
    assert all(r.best_loss <= r.rtn_loss for r in rep_block)
    rtn = rtn_quantize(copy.deepcopy(fp_model), CFG).model
    held_out = _samples(4, 32, 123)
    assert _err(m_block, fp_model, held_out) < _err(rtn, fp_model, held_out)


def test_full_grams_are_shared_and_hold_the_clip_grams(fp_model):
    """rounding="gptq" captures one full Gram per distinct input (q, k, v share the tensor, not
    copies); their diagonal blocks are the clip search's per-group Grams."""
    from cat_core.awq._capture import capture_block_calls, hidden_of
    from cat_core.awq._grams import capture_full_grams, capture_linear_grams, diagonal_blocks
    from cat_core.awq._block import block_linears

    model = copy.deepcopy(fp_model)
    block = model.model.layers[0]
    call = capture_block_calls(model, list(model.model.layers), [_samples(3, 17, 7)], torch.device("cpu"))[0][0]
    linears = block_linears(block, "model.layers.0", QuantConfig())
    cpu = torch.device("cpu")
    for n_tokens in (None, 20):
        full = capture_full_grams(block, linears, [(call, hidden_of(call))], cpu, n_tokens, 0)
        assert set(full) == {rel for rel, _, _ in linears}
        assert full["self_attn.q_proj"] is full["self_attn.k_proj"] is full["self_attn.v_proj"]
        assert full["mlp.gate_proj"] is full["mlp.up_proj"]
        assert full["mlp.down_proj"].shape == (INTER, INTER)
        for gs in (32, -1):
            per_group = capture_linear_grams(block, linears, [(call, hidden_of(call))], cpu, gs, n_tokens, 0)
            for rel, g in per_group.items():
                torch.testing.assert_close(diagonal_blocks(full[rel], gs), g, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bits,sym", [(3, False), (4, True)])
def test_gptq_rounding_end_to_end_beats_nearest(fp_model, bits, sym):
    """Same scales search, same clips; GPTQ's codes reproduce the model better on held-out tokens
    (measured KL ratio to rounding="nearest": about 0.35-0.55 here)."""
    base = dataclasses.replace(CFG, bits=bits, sym=sym)
    samples, held_out = _samples(8, 32, 0), _samples(8, 32, 123)
    runs = {}
    for rounding in ("nearest", "gptq", "gptq"):
        m = copy.deepcopy(fp_model)
        timings: dict[str, float] = {}
        with torch.no_grad():
            tensors, rep = _run(m, dataclasses.replace(base, rounding=rounding), samples, timings=timings)
        if rounding in runs:  # deterministic
            assert all(torch.equal(tensors[n].codes, runs[rounding][0][n].codes) for n in tensors)
        runs[rounding] = (tensors, m, timings)
    (t_n, m_n, _), (t_g, m_g, timings) = runs["nearest"], runs["gptq"]
    assert "grams" in timings and set(t_g) == set(t_n) and len(t_g) == 14
    assert any(not torch.equal(t_g[n].codes, t_n[n].codes) for n in t_g)
    for n, qt in t_g.items():
        assert int(qt.codes.max()) <= base.qmax and (qt.zeros is None) == sym
        w = m_g.get_submodule(n).weight
        assert bool(torch.isfinite(w).all())
        assert torch.equal(w.data, dequantize(qt, w.dtype))  # the model is what gets packed

    def kl(model):
        with torch.no_grad():
            p, q = fp_model(held_out).logits.log_softmax(-1), model(held_out).logits.log_softmax(-1)
        return float((p.exp() * (p - q)).sum(-1).mean())

    k_n, k_g = kl(m_n), kl(m_g)
    print(f"bits={bits} sym={sym} kl nearest={k_n:.4g} gptq={k_g:.4g}")
    assert k_g < 0.8 * k_n, (k_g, k_n)


def test_gptq_wiring_shares_grams_covers_unclipped_and_falls_back(fp_model, monkeypatch):
    """Every linear is GPTQ-rounded with its input's full Gram -- q and k too, which skip the clip;
    q, k, v get one Gram object -- and a linear without a Gram (no token reached it) is rounded to
    nearest."""
    import cat_core.awq._stage_clip as clip_stage
    import cat_core.awq._stage_round as round_stage

    real_means, real_gptq = clip_stage.full_means, round_stage.gptq_quantize
    seen: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    blocks_done: list[int] = []

    def means(parts):
        out = real_means(parts)
        blocks_done.append(1)
        if len(blocks_done) == 2:  # block 1
            del out["mlp.down_proj"]  # as if no token had reached it
        return out

    def gptq(grid, gram, config, *, name, target, **kw):
        seen[name] = (gram, grid.clone(), target.clone())
        return real_gptq(grid, gram, config, name=name, target=target, **kw)

    monkeypatch.setattr(clip_stage, "full_means", means)
    monkeypatch.setattr(round_stage, "gptq_quantize", gptq)
    fp_copy = copy.deepcopy(fp_model)
    with torch.no_grad():
        tensors, _ = _run(fp_copy, dataclasses.replace(CFG, rounding="gptq"), _samples(8, 32, 0))
    assert set(seen) == set(tensors) - {"model.layers.1.mlp.down_proj"}
    for i in range(2):
        p = f"model.layers.{i}.self_attn."
        assert seen[p + "q_proj"][0] is seen[p + "k_proj"][0] is seen[p + "v_proj"][0]
        for rel in ("q_proj", "k_proj"):  # skip_clip: the grid is the weight itself
            assert torch.equal(seen[p + rel][1], seen[p + rel][2])
        grid, target = seen[p + "v_proj"][1:]  # clipped: the grid is the clipped target
        assert not torch.equal(grid, target) and (grid.abs() <= target.abs()).all()
    w = fp_copy.model.layers[1].mlp.down_proj.weight
    assert torch.equal(w.data, dequantize(tensors["model.layers.1.mlp.down_proj"], w.dtype))


def _linear_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(64, 48, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 64, generator=g))
    x = torch.randn(256, 64, generator=g)
    x[:, :3] *= 30.0  # outlier channels: the grid points differ
    return lin, x


def test_scale_screening_keeps_the_best_and_reruns_only_them():
    """Screened on the very batch it searches, the ranking is the full search's own: the winner,
    its scales and its loss are the full search's, from the identity plus screen_keep reruns."""
    from cat_core.awq._capture import BlockCall
    from cat_core.awq._scale_search import search_scales

    lin, x = _linear_case()
    cfg = QuantConfig(bits=3, group_size=32, n_grid=10, screen_keep=2)
    calls = {"n": 0}
    lin.register_forward_pre_hook(lambda m, a: calls.__setitem__("n", calls["n"] + 1))

    def boom(what, losses):
        raise AssertionError(what)

    call = BlockCall((x,), {})
    full = search_scales([lin], lin, call, x.abs().mean(0), cfg, on_nonfinite=boom)
    assert calls["n"] == 1 + 11 and full.screened == []
    calls["n"] = 0
    w0 = lin.weight.detach().clone()
    scr = search_scales([lin], lin, call, x.abs().mean(0), cfg, on_nonfinite=boom, screen=call)
    assert calls["n"] == 1 + 1 + 10 + 3  # reference, screening reference, grid, identity + 2 kept
    assert torch.equal(lin.weight, w0)  # restored
    assert [a for a, _ in scr.screened] == [i / 10 for i in range(10)]
    assert dict(scr.screened) == {a: loss for a, loss in full.losses if a is not None}  # same data, same numbers
    kept = sorted(scr.screened, key=lambda t: t[1])[:2]
    assert [a for a, _ in scr.losses] == [None, *sorted(a for a, _ in kept)]  # search order
    full_losses = dict(full.losses)
    assert all(full_losses[a] == loss for a, loss in scr.losses)
    assert scr.alpha == full.alpha is not None and torch.equal(scr.scales, full.scales)
    assert scr.rtn_loss == full.rtn_loss and scr.best_loss == full.best_loss

    # screened on a subsample: still only the kept grid points rerun on the whole batch
    calls["n"] = 0
    sub = search_scales([lin], lin, call, x.abs().mean(0), cfg, on_nonfinite=boom, screen=BlockCall((x[:64],), {}))
    assert calls["n"] == 15 and len(sub.losses) == 3 and sub.best_loss <= sub.rtn_loss
    assert all(full_losses[a] == loss for a, loss in sub.losses)


def test_screen_sequences():
    from cat_core.awq._batches import _screen_sequences

    cfg = QuantConfig(scales=True).scales
    assert (cfg.screen_tokens, cfg.screen_keep) == (1024, 3)
    assert _screen_sequences(cfg, 16, 256) == 4  # README command 1: 16 x 256, screened on 4
    assert _screen_sequences(cfg, 8, 256) == 0  # 2048 tokens: not worth it
    assert _screen_sequences(cfg, 2, 2048) == 1
    assert _screen_sequences(dataclasses.replace(cfg, screen_tokens=None), 16, 256) == 0
    assert _screen_sequences(dataclasses.replace(cfg, screen_tokens=100), 4, 64) == 2
    assert _screen_sequences(dataclasses.replace(cfg, screen_tokens=100), 3, 64) == 0
    for bad in ({"screen_keep": 0}, {"screen_tokens": 0}, {"screen_keep": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            QuantConfig(**bad)


def test_awq_with_screening_reruns_fewer_grid_points_on_the_same_losses(fp_model, monkeypatch):
    """run_awq screens on the search batch's first sequences, with calls of their own (masks and
    positions sized for them): with all but one grid point kept it finds what the full search
    finds, bit for bit; with two kept, the losses it computes are the full search's numbers."""
    import cat_core.awq._stage_scales as runner

    seen: list = []
    real = runner.search_scales

    def recording(*a, **kw):
        seen.append(res := real(*a, **kw))
        return res

    monkeypatch.setattr(runner, "search_scales", recording)
    samples = _samples(8, 32, 0)
    base = dataclasses.replace(CFG, loss_token_subsample=None, screen_tokens=None)
    t_full, rep_full = _run(copy.deepcopy(fp_model), base, samples)
    full = list(seen)
    assert all(r.screened == [] and len(r.losses) == 11 for r in full)

    seen.clear()
    t_9, rep_9 = _run(copy.deepcopy(fp_model), dataclasses.replace(base, screen_tokens=64, screen_keep=9), samples)
    assert all(len(r.screened) == 10 and len(r.losses) == 10 for r in seen) and len(seen) == 8
    assert [r.alpha for r in rep_9] == [r.alpha for r in rep_full]
    for n in t_full:
        assert torch.equal(t_9[n].codes, t_full[n].codes) and torch.equal(t_9[n].scales, t_full[n].scales)

    seen.clear()
    _, rep_2 = _run(copy.deepcopy(fp_model), dataclasses.replace(base, screen_tokens=64, screen_keep=2), samples)
    assert all(len(r.screened) == 10 and len(r.losses) == 3 for r in seen)
    # block 0 sees the same inputs as in the full run until its first fold: its first group's
    # reruns give the full search's numbers
    assert all(dict(full[0].losses)[a] == loss for a, loss in seen[0].losses)
    assert all(r.best_loss <= r.rtn_loss for r in rep_2)

def _input_grams(block, call_hidden_pairs, rels):
    """Reference: full input Gram of each of ``rels`` over every token of every run (hooks)."""
    from cat_core.awq._capture import replace_hidden

    xs: dict[str, list[torch.Tensor]] = {r: [] for r in rels}
    hooks = [block.get_submodule(r).register_forward_pre_hook(
        lambda mod, args, r=r: xs[r].append(args[0].reshape(-1, args[0].shape[-1]).float())) for r in rels]
    try:
        with torch.no_grad():
            for call, hidden in call_hidden_pairs:
                c = replace_hidden(call, hidden)
                block(*c.args, **c.kwargs)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for r, parts in xs.items():
        x = torch.cat(parts)
        out[r] = x.T @ x / x.shape[0]
    return out


def test_grams_accumulate_over_every_run(fp_model):
    """Grams captured over several runs (calibration chunks) are the token-weighted Gram over all
    their tokens, not the first run's; shared inputs still share one tensor."""
    from cat_core.awq._capture import capture_block_calls, hidden_of
    from cat_core.awq._grams import capture_full_grams, capture_linear_grams, diagonal_blocks
    from cat_core.awq._block import block_linears

    model = copy.deepcopy(fp_model)
    block = model.model.layers[0]
    chunks = [_samples(2, 17, 7), _samples(5, 17, 8)]  # unequal sizes: weights must be by token
    calls = capture_block_calls(model, list(model.model.layers), chunks, torch.device("cpu"))[0]
    runs = [(c, hidden_of(c)) for c in calls]
    linears = block_linears(block, "model.layers.0", QuantConfig())
    rels = [rel for rel, _, _ in linears]
    want = _input_grams(block, runs, rels)
    cpu = torch.device("cpu")
    full = capture_full_grams(block, linears, runs, cpu, None, 0)
    first = capture_full_grams(block, linears, runs[:1], cpu, None, 0)
    assert full["self_attn.q_proj"] is full["self_attn.v_proj"]
    for rel in rels:
        torch.testing.assert_close(full[rel], want[rel], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(first[rel], want[rel], rtol=1e-3, atol=1e-4)
    per_group = capture_linear_grams(block, linears, runs, cpu, 32, None, 0)
    for rel in rels:
        torch.testing.assert_close(per_group[rel], diagonal_blocks(want[rel], 32), rtol=1e-4, atol=1e-5)


def _recorded_grams(monkeypatch, model, config, samples):
    """Run AWQ on ``model`` recording the Gram GPTQ gets for each linear."""
    import cat_core.awq._stage_round as runner

    real = runner.gptq_quantize
    seen: dict[str, torch.Tensor] = {}

    def gptq(grid, gram, cfg, *, name, target, **kw):
        seen[name] = gram.clone()
        return real(grid, gram, cfg, name=name, target=target, **kw)

    monkeypatch.setattr(runner, "gptq_quantize", gptq)
    timings: dict[str, float] = {}
    with torch.no_grad():
        tensors, _ = _run(model, config, samples, timings=timings)
    return seen, tensors, timings


def _block_input_runs(model, samples, config, block_index):
    """(call, hidden) pairs of ``block_index``'s input over ``samples`` (in AWQ's seeded order and
    chunks) in ``model`` as it is now."""
    import math

    from cat_core.awq._capture import capture_block_calls, hidden_of
    from cat_core.awq._batches import _chunks

    n = samples.shape[0]
    perm = samples[torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))]
    n_search = max(1, min(n, math.ceil(config.scales.token_subsample / samples.shape[1])))
    calls = capture_block_calls(model, list(model.model.layers), [perm[s] for s in _chunks(n, n_search, samples.shape[1])],
                                torch.device("cpu"))[block_index]
    return [(c, hidden_of(c)) for c in calls]


def test_gram_samples_all_gives_gptq_every_calibration_token(fp_model, monkeypatch):
    """gram_samples="all": block 0's GPTQ Grams hold every calibration sequence (the statistics
    pass keeps every chunk); "search": only the scale search's batch."""
    samples = _samples(40, 8, 3)  # loss_token_subsample=128 -> 16 sequences searched, 3 chunks
    base = dataclasses.replace(CFG, rounding="gptq", clip_token_subsample=None)
    runs = _block_input_runs(fp_model, samples, base, 0)
    assert len(runs) == 3
    grams_all = {}
    for mode in ("search", "all"):
        m = copy.deepcopy(fp_model)
        seen, tensors, timings = _recorded_grams(monkeypatch, m, dataclasses.replace(base, gram_samples=mode), samples)
        # q/k/v read the block input, which quantization of earlier linears does not change
        x = _input_grams(fp_model.model.layers[0], runs if mode == "all" else runs[:1], ["self_attn.q_proj"])
        # the fold scaled the input of q by 1/s: undo it through the recorded Gram's diagonal ratio
        got = seen["model.layers.0.self_attn.q_proj"]
        ratio = torch.sqrt(got.diagonal() / x["self_attn.q_proj"].diagonal())
        torch.testing.assert_close(got / ratio[:, None] / ratio[None, :], x["self_attn.q_proj"], rtol=1e-3, atol=1e-5)
        grams_all[mode] = (seen, tensors)
        if mode == "all":
            assert timings["stats_samples_used"] == 40
    assert any(not torch.equal(grams_all["all"][1][n].codes, grams_all["search"][1][n].codes)
               for n in grams_all["all"][1])


def test_sequential_grams_see_the_quantized_upstream_linears(fp_model, monkeypatch):
    """sequential=True: each linear's Gram is its input in the block as finally quantized (o_proj
    after q/k/v, gate/up after the attention, down after gate/up); without it, the Grams of the
    linears after the first stage are those of the unquantized block (after the folds)."""
    samples = _samples(8, 16, 4)
    base = dataclasses.replace(CFG, rounding="gptq", clip_token_subsample=None, gram_samples="all")
    rels = ["self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"]
    results = {}
    for seq in (False, True):
        m = copy.deepcopy(fp_model)
        seen, tensors, _ = _recorded_grams(monkeypatch, m, dataclasses.replace(base, sequential=seq), samples)
        # block 0's input is the embeddings: the same in the quantized model
        final = _input_grams(m.model.layers[0], _block_input_runs(m, samples, base, 0), rels)
        results[seq] = {r: (seen[f"model.layers.0.{r}"], final[r]) for r in rels}
        assert len(tensors) == 14
    for r in rels:
        got, final = results[True][r]
        torch.testing.assert_close(got, final, rtol=1e-4, atol=1e-5)
    for r in rels[1:]:  # the one-capture Grams miss the upstream quantization error
        got, final = results[False][r]
        assert not torch.allclose(got, final, rtol=1e-3, atol=1e-4), r
    got, final = results[False]["self_attn.q_proj"]
    torch.testing.assert_close(got, final, rtol=1e-4, atol=1e-5)


def test_sequential_nearest_rounding_clips_on_quantized_inputs(fp_model):
    """rounding="nearest" with sequential=True: the per-group clip Grams follow the stages too
    (results differ from one capture), and every linear is still quantized once."""
    samples = _samples(8, 16, 4)
    out = {}
    for seq in (False, True):
        m = copy.deepcopy(fp_model)
        with torch.no_grad():
            out[seq], _ = _run(m, dataclasses.replace(CFG, rounding="nearest", sequential=seq), samples)
        for n, qt in out[seq].items():
            w = m.get_submodule(n).weight
            assert torch.equal(w.data, dequantize(qt, w.dtype))
    assert set(out[True]) == set(out[False]) and len(out[True]) == 14
    assert any(not torch.equal(out[True][n].codes, out[False][n].codes) for n in out[True])
