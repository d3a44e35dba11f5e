"""rounding="learned": AutoRound-style signed-gradient rounding of each decoder block, on the tiny
Llama of test_awq (hand-built scale groups) and, for the checkpoint round trip, a discovered graph.

The block-output losses are recomputed here from the stored tensors, not taken from the
implementation's own bookkeeping.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_awq import CFG, _run, _samples, tiny_llama  # noqa: E402

import cat_core.awq._pipeline as pipeline  # noqa: E402
import cat_core.awq._stage_round as runner  # noqa: E402
from cat_core.awq._capture import first_output, replace_hidden  # noqa: E402
from cat_core.awq._learned_round import LinearStart, _Learned  # noqa: E402
from cat_core.config import QuantConfig  # noqa: E402
from cat_core.quant import dequantize, quantize_tensor  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# from GPTQ's codes, spelled out (the default start too; importance rounding's start is covered by test_importance_round.py)
LEARN = dataclasses.replace(CFG, rounding="learned", learned_round_iters=24, learned_round_batch=2, learned_round_lr=0.01,
                            learned_round_samples=8, learned_round_init="gptq")


@pytest.fixture(scope="module")
def fp_model():
    return tiny_llama()


@torch.no_grad()
def _pool_mse(block, call, inputs, targets, batch):
    total = 0.0
    for i in range(0, inputs.shape[0], batch):
        c = replace_hidden(call, inputs[i:i + batch])
        out = first_output(block(*c.args, **c.kwargs))
        total += float(((out.float() - targets[i:i + batch].float()) ** 2).sum())
    return total / targets.numel()


def _recording(monkeypatch):
    """Wraps the runner's learn_rounding: per block, the pool loss of the start (the weights the
    block holds when it is called) and of the tensors it returns, both recomputed here."""
    seen = []
    real = runner.learn_rounding

    def wrapper(block, starts, call, inputs, targets, config, *, batch, seed, progress=None):
        before = _pool_mse(block, call, inputs, targets, batch)
        start_codes = {s.name: s.start.codes.clone() for s in starts}
        res = real(block, starts, call, inputs, targets, config, batch=batch, seed=seed, progress=progress)
        trial = copy.deepcopy(block)
        for s in starts:
            w = trial.get_submodule(s.rel).weight
            w.data.copy_(dequantize(res.tensors[s.name], w.dtype))
        after = _pool_mse(trial, call, inputs, targets, batch)
        with torch.no_grad():
            outs = torch.cat([first_output(trial(*replace_hidden(call, inputs[i:i + batch]).args,
                                                 **replace_hidden(call, inputs[i:i + batch]).kwargs))
                              for i in range(0, inputs.shape[0], batch)])
        seen.append(dict(before=before, after=after, res=res, start_codes=start_codes, batch=batch,
                         pool=inputs.shape[0], tokens=inputs.shape[1], inputs=inputs.clone(), outputs=outs,
                         block=trial, call=call))
        return res

    monkeypatch.setattr(runner, "learn_rounding", wrapper)
    return seen


@pytest.mark.parametrize("bits,sym,init,minmax", [(3, False, "gptq", False), (3, False, "nearest", False),
                                                  (4, True, "gptq", False), (3, False, "nearest", True)])
def test_block_loss_never_above_the_start_and_codes_in_range(fp_model, monkeypatch, bits, sym, init, minmax):
    cfg = dataclasses.replace(LEARN, bits=bits, sym=sym, learned_round_init=init, learned_round_minmax=minmax)
    seen = _recording(monkeypatch)
    m = copy.deepcopy(fp_model)
    timings: dict[str, float] = {}
    with torch.no_grad():
        tensors, _ = _run(m, cfg, _samples(8, 32, 0), timings=timings)
    assert len(seen) == 2 and all(s["pool"] == 8 and s["batch"] == 2 and s["tokens"] == 32 for s in seen)
    for s in seen:
        # the reported losses are the block's real pool losses, and the kept one is never worse
        assert s["res"].start_loss == pytest.approx(s["before"], rel=1e-4)
        assert s["res"].best_loss == pytest.approx(s["after"], rel=1e-4)
        assert s["after"] <= s["before"] * (1 + 1e-6)
    # learning did something: some block got strictly better, with other codes than its start
    assert any(s["after"] < 0.97 * s["before"] for s in seen), [(s["before"], s["after"]) for s in seen]
    assert any(not torch.equal(s["res"].tensors[n].codes, c) for s in seen for n, c in s["start_codes"].items())
    assert timings["learned_round"] > 0 and timings["learned_round_best_loss"] <= timings["learned_round_start_loss"]
    for n, qt in tensors.items():
        assert qt.codes.dtype == torch.uint8 and int(qt.codes.max()) <= cfg.qmax
        assert qt.scales.dtype == torch.float16 and bool((qt.scales > 0).all())
        assert (qt.zeros is None) == sym
        if qt.zeros is not None:
            assert int(qt.zeros.max()) <= cfg.qmax
        w = m.get_submodule(n).weight
        assert torch.equal(w.data, dequantize(qt, w.dtype))  # the model is what gets packed
    if not minmax:  # the grid is the start's: only codes move
        for s in seen:
            for n, qt in s["res"].tensors.items():
                assert int((qt.codes.int() - s["start_codes"][n].int()).abs().max()) <= 1


def _pool_targets(fp_model, monkeypatch, target: str):
    """Runs learned rounding with ``target`` on 8 sequences (a pool of 4): each block's
    (inputs, targets), the pool's token ids, and the recorded losses."""
    cfg = dataclasses.replace(LEARN, learned_round_target=target, learned_round_samples=4)
    seen = _recording(monkeypatch)
    targets = []
    real = runner.learn_rounding

    def keep(block, starts, call, inputs, tgt, *a, **k):
        targets.append((inputs.clone(), tgt.clone()))
        return real(block, starts, call, inputs, tgt, *a, **k)

    monkeypatch.setattr(runner, "learn_rounding", keep)
    samples = _samples(8, 32, 0)
    m = copy.deepcopy(fp_model)
    with torch.no_grad():
        _run(m, cfg, samples)
    # the pool is the first 4 sequences after the runner's seeded shuffle
    order = torch.randperm(8, generator=torch.Generator().manual_seed(cfg.seed))
    return targets, samples[order][:4], seen


@pytest.mark.parametrize("n,pool", [(8, 8), (12, 8), (8, 6)])
def test_pool_outputs_are_the_kept_tensors_and_feed_the_next_block(fp_model, monkeypatch, n, pool):
    """learn_rounding returns the pool's outputs with the tensors it keeps, and the runner feeds
    them to the next block in place of running the chunks the pool covers: block 1's pool inputs
    are the final block 0's outputs (chunks: the 4-sequence search batch, then up to 16: the pool
    covers both, or the first and part of the second, which is then run)."""
    cfg = dataclasses.replace(LEARN, learned_round_samples=pool)
    seen = _recording(monkeypatch)
    calls = []
    real_pool_chunks = pipeline._pool_chunks

    def pool_chunks(hiddens, outputs):
        got = real_pool_chunks(hiddens, outputs)
        calls.append(sorted(got))
        return got

    monkeypatch.setattr(pipeline, "_pool_chunks", pool_chunks)
    m = copy.deepcopy(fp_model)
    with torch.no_grad():
        _run(m, cfg, _samples(n, 32, 0))
    assert calls[0] == ([0, 1] if n == pool else [0])
    for s in seen:
        torch.testing.assert_close(s["res"].outputs, s["outputs"], rtol=1e-5, atol=1e-5)
    # block 0 as finally quantized, on its pool inputs, gives block 1's pool inputs
    block0 = m.model.layers[0]
    with torch.no_grad():
        want = torch.cat([first_output(block0(*replace_hidden(seen[0]["call"], seen[0]["inputs"][i:i + 2]).args,
                                              **replace_hidden(seen[0]["call"], seen[0]["inputs"][i:i + 2]).kwargs))
                          for i in range(0, seen[0]["pool"], 2)])
    torch.testing.assert_close(seen[1]["inputs"], want, rtol=1e-5, atol=1e-5)


def test_model_target_follows_the_unquantized_path(fp_model, monkeypatch):
    """learned_round_target="model": block 1's targets are the unquantized model's outputs of
    block 1 (on the unquantized block 0's outputs), not block 1's outputs on its quantized inputs."""
    targets, ids, seen = _pool_targets(fp_model, monkeypatch, "model")
    with torch.no_grad():
        hs = fp_model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(targets[0][1], hs[1], rtol=1e-4, atol=1e-4)
    # the unquantized model's block-1 output: the final norm's input (hidden_states[2] is normed)
    got = {}
    h = fp_model.model.layers[1].register_forward_hook(lambda mod, a, out: got.setdefault("y", out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            fp_model(ids)
    finally:
        h.remove()
    torch.testing.assert_close(targets[1][1], got["y"], rtol=1e-3, atol=1e-3)
    assert not torch.allclose(targets[1][0], hs[1], rtol=1e-3, atol=1e-3)  # its inputs are the quantized path's
    assert len(seen) == 2 and all(s["after"] <= s["before"] * (1 + 1e-6) for s in seen)


def test_block_target_is_the_block_on_its_quantized_inputs(fp_model, monkeypatch):
    """learned_round_target="block": block 1's targets are the unquantized block 1's output on the
    inputs the quantized block 0 produces (computed here by feeding those inputs to the
    unquantized model's block 1); the default, "model", is the other target."""
    assert QuantConfig().rounding.target == "model"
    targets, ids, seen = _pool_targets(fp_model, monkeypatch, "block")
    quantized_in = targets[1][0]
    layer = fp_model.model.layers[1]

    def swap_input(mod, args, kwargs):
        if args:
            return (quantized_in.to(args[0].dtype),) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": quantized_in.to(kwargs["hidden_states"].dtype)}

    got = {}
    hooks = [layer.register_forward_pre_hook(swap_input, with_kwargs=True),
             layer.register_forward_hook(lambda mod, a, out: got.setdefault("y", out[0] if isinstance(out, tuple) else out))]
    try:
        with torch.no_grad():
            fp_model(ids)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(targets[1][1], got["y"], rtol=1e-3, atol=1e-3)
    assert len(seen) == 2 and all(s["after"] <= s["before"] * (1 + 1e-6) for s in seen)


def test_a_step_too_large_keeps_the_start(fp_model, monkeypatch):
    """Steps of half a quantization step flip codes wholesale: every later iterate is worse, and
    the start (its codes, bit for bit) is what gets kept."""
    cfg = dataclasses.replace(LEARN, learned_round_lr=0.5, learned_round_iters=2)
    seen = _recording(monkeypatch)
    m = copy.deepcopy(fp_model)
    with torch.no_grad():
        _run(m, cfg, _samples(8, 32, 0))
    for s in seen:
        assert s["res"].best_iter == 0 and s["after"] == pytest.approx(s["before"], rel=1e-6)
        assert all(torch.equal(s["res"].tensors[n].codes, c) for n, c in s["start_codes"].items())


def test_learned_is_deterministic_and_prefix_tokens(fp_model, monkeypatch):
    cfg = dataclasses.replace(LEARN, learned_round_seqlen=16, learned_round_samples=5, learned_round_batch=2)
    seen = _recording(monkeypatch)
    out = []
    for _ in range(2):
        m = copy.deepcopy(fp_model)
        with torch.no_grad():
            out.append(_run(m, cfg, _samples(8, 32, 0))[0])
    # 5 sequences round down to a multiple of the batch; only their first 16 tokens
    assert all(s["pool"] == 4 and s["tokens"] == 16 for s in seen)
    assert out[0].keys() == out[1].keys()
    for n in out[0]:
        assert torch.equal(out[0][n].codes, out[1][n].codes)
        assert torch.equal(out[0][n].scales, out[1][n].scales)


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("minmax", [False, True])
def test_zero_offsets_reproduce_the_start_exactly(sym, minmax):
    """V = 0 (and factors 1) is the start: nearest codes of the clipped weight, or GPTQ's codes of
    its corrected weight -- the same codes, scales and zeros, not approximately."""
    from cat_core.awq._gptq import gptq_quantize

    g = torch.Generator().manual_seed(3)
    cfg = QuantConfig(bits=3, group_size=32, sym=sym, learned_round_minmax=minmax, rounding="learned",
                      learned_round_init="gptq")
    w = torch.randn(24, 96, generator=g)
    w[:, 5] *= 8.0
    x = torch.randn(200, 96, generator=g)
    gram = x.T @ x / 200
    rtn = quantize_tensor(w, cfg)
    gq, corrected = gptq_quantize(w, gram, cfg, return_corrected=True)
    assert torch.equal(gq.codes, gptq_quantize(w, gram, cfg).codes)
    for base, start in ((w, rtn), (corrected, gq)):
        ls = runner._start("l", "l", torch.nn.Linear(96, 24), base.clone(), start, w, cfg)
        st = _Learned(ls, cfg, torch.device("cpu"))
        qt = st.export()
        assert torch.equal(qt.codes, start.codes)
        assert torch.equal(qt.scales, start.scales)
        assert (qt.zeros is None and start.zeros is None) or torch.equal(qt.zeros, start.zeros)
        assert torch.equal(st.weight(torch.float32).detach(), dequantize(start, torch.float32))


def test_offsets_and_factors_stay_in_their_ranges():
    g = torch.Generator().manual_seed(0)
    cfg = QuantConfig(bits=3, group_size=32, learned_round_minmax=True, rounding="learned", learned_round_init="gptq")
    w = torch.randn(8, 64, generator=g)
    qt = quantize_tensor(w, cfg)
    lo, hi = torch.aminmax(w.reshape(8, 2, 32), dim=-1)
    st = _Learned(LinearStart("l", "l", torch.nn.Linear(64, 8), w.clone(), qt, lo, hi), cfg, torch.device("cpu"))
    for _ in range(40):  # a loss that pushes every weight up: offsets and the upper factor saturate
        (-st.weight(torch.float32).sum()).backward()
        st.step(0.1)
    v = st.v.detach()
    assert float(v.max()) == 0.5 and float(v.min()) >= -0.5
    a, b = st.a.detach(), st.b.detach()
    assert float(a.min()) >= 0.5 and float(a.max()) <= 1.0
    assert float(b.min()) >= 0.5 and float(b.max()) <= 1.0
    out = st.export()
    assert int(out.codes.max()) <= cfg.qmax and int(out.zeros.max()) <= cfg.qmax


def test_learned_checkpoint_reloads_with_the_same_logits(tmp_path):
    pytest.importorskip("cat_kernels")
    from _quantized_models import llama
    from cat_core.awq import quantize
    from cat_core.io import load_quantized, save_quantized
    from cat_core.nn import replace_linears

    model = llama()
    cfg = QuantConfig(bits=4, group_size=32, n_grid=4, n_clip_grid=4, rounding="learned", learned_round_iters=6,
                      learned_round_batch=2, learned_round_samples=4)
    ids = torch.randint(3, 128, (6, 24), generator=torch.Generator().manual_seed(1))
    res = quantize(model, None, cfg, calib=ids, progress=False)
    assert "learned_round" in res.timings
    probe = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fake = model(probe).logits
    packed = replace_linears(model, res.tensors)
    out = save_quantized(packed, tmp_path / "ckpt", progress=False)
    loaded, _ = load_quantized(out, model_kwargs={"attn_implementation": "eager"})
    with torch.no_grad():
        a, b = packed(probe).logits, loaded(probe).logits
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    torch.testing.assert_close(a, fake, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("field,value", [
    ("rounding", "autoround"), ("learned_round_iters", 0), ("learned_round_iters", 2.5),
    ("learned_round_batch", 0), ("learned_round_seqlen", 0), ("learned_round_samples", -1),
    ("learned_round_lr", 0.0), ("learned_round_lr", 0.9), ("learned_round_lr", True),
    ("learned_round_minmax", 1), ("learned_round_init", "rtn"), ("learned_round_target", "fp"),
])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        QuantConfig(**{field: value})
