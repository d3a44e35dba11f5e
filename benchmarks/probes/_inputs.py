"""Shared by the probes: the calibration-text inputs of chosen linears of a test model."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _models as M  # noqa: E402
from cat_core.calib import calibration_samples  # noqa: E402
from cat_core.config import CalibConfig  # noqa: E402


def linear_inputs(key: str, n_samples: int, blocks: list[int], keep: Callable[[str], bool] = lambda name: True):
    """(model, {linear name: [tokens, K] float32 inputs}) for the linears of ``blocks`` that ``keep``
    accepts, over ``n_samples`` x 512 tokens of wikitext2-valid, run two sequences at a time."""
    model, tok = M.load_model(key)
    samples = calibration_samples(CalibConfig(source=str(M.DEFAULT_DATA_DIR / "wikitext2-valid.txt"),
                                              n_samples=n_samples, seqlen=512), tok, model)
    got: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, m in model.named_modules():
        if (isinstance(m, torch.nn.Linear) and ".layers." in name and keep(name)
                and int(name.split(".layers.")[1].split(".")[0]) in blocks):
            def record(mod, args, n=name):
                got.setdefault(n, []).append(args[0].detach().reshape(-1, args[0].shape[-1]).float())
            hooks.append(m.register_forward_pre_hook(record))
    with torch.no_grad():
        for i in range(0, n_samples, 2):
            model(input_ids=samples[i:i + 2])
    for h in hooks:
        h.remove()
    return model, {name: torch.cat(xs) for name, xs in got.items()}
