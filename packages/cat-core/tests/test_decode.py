"""cached_forward: stepping with the KV cache gives the logits of the full forward pass."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _quantized_models import llama  # noqa: E402
from cat_core.decode import cached_forward  # noqa: E402


def test_cached_steps_match_the_full_pass():
    model = llama(5)
    ids = torch.randint(0, 128, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no deprecation warning from the cache argument's name
            logits, cache = cached_forward(model, ids[:, :5])
            steps = [logits]
            for t in range(5, 9):
                logits, cache = cached_forward(model, ids[:, t:t + 1], cache)
                steps.append(logits)
    assert cache is not None
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


def test_last_only_gives_the_last_positions_logits():
    model = llama(5)
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = cached_forward(model, ids)
        last, cache = cached_forward(model, ids, last_only=True)
        nxt, _ = cached_forward(model, ids[:, -1:], cache, last_only=True)
    assert last.shape == (2, 1, full.shape[-1]) and nxt.shape == (2, 1, full.shape[-1])
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)
