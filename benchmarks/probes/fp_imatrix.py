"""Issue #26 ablation: importance statistics from the unquantized model instead of the quantized path.

    FP_IMATRIX=fp|path python benchmarks/probes/fp_imatrix.py <awq_quality.py arguments>

Importance-weighted rounding (``rounding="importance"``, or learned rounding's importance start)
weights each weight by its input column's mean square. The product takes that mean square from
the block's inputs on the quantized path (the blocks before it already rounded), which is what
the rest of the pipeline sees. llama.cpp's ``llama-imatrix`` takes it from the unquantized model
on the calibration text. Session 20 found the product's port landing about 2 points of the gap
short of llama.cpp's own file at the same rounding (E1 against Q4_0 + imatrix).

``FP_IMATRIX=fp`` runs the unquantized model over every calibration sequence once before the AWQ
driver, with a hook on every linear of the decoder blocks summing each input column's square over
all tokens, and hands those means to the importance rounding in place of the quantized path's;
``path`` leaves the product as it is (the control). (The session-23 rows ran an equivalent
copy of the product's ``_Importance._codes`` with the means swapped in; this version hands them
to the product's own.) Only meaningful with the scale search off
(``"scales": null``): a folded scale would change the linear's input columns.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import cat_core.awq as _awq  # noqa: E402
from cat_core.awq import _stage_round  # noqa: E402

MODE = os.environ.get("FP_IMATRIX", "fp")
assert MODE in ("fp", "path"), MODE
_FP_MS: dict[str, torch.Tensor] = {}


@torch.no_grad()
def _fp_column_ms(model: torch.nn.Module, graph, samples: torch.Tensor, batch: int = 4) -> dict[str, torch.Tensor]:
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for bg in graph.blocks:
        for rel, mod in bg.module.named_modules():
            if isinstance(mod, torch.nn.Linear):
                full = f"{bg.path}.{rel}"

                def hook(m, args, full=full):
                    x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                    sq = (x * x).sum(0)
                    sums[full] = sums[full] + sq if full in sums else sq
                    counts[full] = counts.get(full, 0) + x.shape[0]

                hooks.append(mod.register_forward_pre_hook(hook))
    try:
        for i in range(0, samples.shape[0], batch):
            model(samples[i:i + batch])
    finally:
        for h in hooks:
            h.remove()
    return {k: v / counts[k] for k, v in sums.items()}


_run_awq = _awq.run_awq


def run_awq(model, samples, graph, config, **kw):
    if MODE == "fp":
        _FP_MS.clear()
        _FP_MS.update(_fp_column_ms(model, graph, samples))
        print(f"fp_imatrix: column mean squares of {len(_FP_MS)} linears from the unquantized model", flush=True)
    return _run_awq(model, samples, graph, config, **kw)


_awq.run_awq = run_awq
_codes = _stage_round._Importance._codes


def codes(self, work, rel, name, mod, w, part, clips):
    """The product's importance codes, given the unquantized model's statistics for this linear."""
    if name in _FP_MS:
        part.column_ms[rel] = _FP_MS[name]
    return _codes(self, work, rel, name, mod, w, part, clips)


_stage_round._Importance._codes = codes

if __name__ == "__main__":
    import awq_quality

    awq_quality.main()
