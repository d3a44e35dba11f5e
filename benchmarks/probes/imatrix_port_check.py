"""Checks importance-weighted rounding (``cat_core.awq._importance``, the torch port of llama.cpp's
Q4_0 + imatrix rounding; first written as ``imatrix_round.py``'s own copy, which this log checked)
against llama.cpp itself, tensor by tensor: the embedded SmolLM2 written as F32, ``llama-imatrix``
on the Lee text (64 x 512), ``llama-quantize Q4_0 --imatrix``; then every ``blk.*`` Q4_0 tensor is
dequantized by the ``gguf`` package and compared with the port run on the F32 tensor and the
imatrix's per-column mean squares.

    python benchmarks/probes/imatrix_port_check.py [--work DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _llamacpp as L  # noqa: E402
import _models as M  # noqa: E402

from cat_core.awq._importance import importance_round  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, default=Path("/tmp/imatrix_port_check"))
    p.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    args = p.parse_args()
    from gguf import GGUFReader
    from gguf.quants import dequantize

    args.work.mkdir(parents=True, exist_ok=True)
    f32, imx, q40 = args.work / "f32.gguf", args.work / "imatrix.gguf", args.work / "q4_0_imatrix.gguf"
    if not q40.exists():
        L.requantize(M.gguf_path("smollm2"), f32, "F32", 2)
        L.run([str(L.BIN / "llama-imatrix"), "-m", str(f32), "-f", str(args.data_dir / "lee-background.txt"),
               "-c", "512", "--chunks", "64", "-t", "2", "-o", str(imx)])
        L.requantize(f32, q40, "Q4_0", 2, "--token-embedding-type", "f32", "--output-tensor-type", "f32",
                     "--imatrix", str(imx))
    src = {t.name: t for t in GGUFReader(f32).tensors}
    mat = {t.name: t for t in GGUFReader(imx).tensors}
    worst, same, total = 0.0, 0, 0
    for t in GGUFReader(q40).tensors:
        if not t.name.startswith("blk.") or t.tensor_type.name != "Q4_0":
            continue
        theirs = dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0]))
        w = torch.from_numpy(np.array(src[t.name].data, dtype=np.float32).reshape(theirs.shape))
        sums = np.array(mat[t.name + ".in_sum2"].data, dtype=np.float32).reshape(-1)
        counts = np.array(mat[t.name + ".counts"].data, dtype=np.float32).reshape(-1)
        qw = torch.from_numpy(sums / counts[0])
        qt = importance_round(w, qw, 4, 32, True, torch.float16)
        ours = ((qt.codes.float() - 8).reshape(w.shape[0], -1, 32) * qt.scales.float().unsqueeze(-1)).reshape(w.shape)
        ours = ours.numpy()
        eq = np.isclose(ours, theirs, rtol=0, atol=0)
        same += int(eq.sum())
        total += eq.size
        rel = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        worst = max(worst, rel)
        if t.name.startswith("blk.0.") or t.name.startswith("blk.29."):
            print(f"{t.name}: {eq.mean():.5f} of values equal, max |diff| / max|w| {rel:.2e}")
    print(f"all blk tensors: {same} of {total} dequantized values equal ({same / total:.5f}); worst max|diff|/max|w| {worst:.2e}")


if __name__ == "__main__":
    main()
