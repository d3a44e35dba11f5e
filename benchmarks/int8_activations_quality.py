"""What int8 activations cost in quality: perplexity of quantized SmolLM2 models with float and
with int8 activations (``set_int8_activations``; x rounded per 32 values as llama.cpp's Q8_0),
on two held-out texts (WikiText-2 test and the license texts), 10 x 2048 tokens each, float32,
the quality tables' evaluator; the float32 model as the reference. Models: a Caterpillar
checkpoint (``--checkpoint``, e.g. README command 1's AWQ 4-bit) and the embedded model
RTN-quantized on the fly (``--rtn-bits``), both served with the 8-bit head.

    flock /tmp/cat-heavy.lock python benchmarks/int8_activations_quality.py \\
        --checkpoint out/smollm2-awq4 --rtn-bits 3 --out benchmarks/results/int8_activations_quality_<date>.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "probes"))
import _models as M  # noqa: E402

TEXTS = ("wikitext2-test", "licenses")


def ppl_row(model, texts, seqlen, n) -> list[float]:
    with torch.no_grad():
        return [M.window_perplexity(model, ids, seqlen, n).ppl for ids in texts.values()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--rtn-bits", type=int, nargs="*", default=[3])
    p.add_argument("--data-dir", type=Path, default=M.DEFAULT_DATA_DIR)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--windows", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from cat_core.io import load_quantized
    from cat_core.nn import quantize_head, set_int8_activations
    from cat_kernels import _C
    from decode_profile import quantize_body

    ref, tok = M.load_model("smollm2")
    ref.eval()
    texts = {t: M.eval_ids(tok, args.data_dir, t) for t in TEXTS}
    rows = [("float32 model", "-", ppl_row(ref, texts, args.seqlen, args.windows))]
    print(rows[-1], flush=True)
    del ref
    models = []
    if args.checkpoint:
        models.append((f"{args.checkpoint.name} (checkpoint), head 8-bit",
                       lambda: load_quantized(args.checkpoint, dtype=torch.float32)[0]))
    for bits in args.rtn_bits:
        def rtn(bits=bits):
            m, _ = M.load_model("smollm2")
            quantize_body(m, bits, 8)
            return m
        models.append((f"RTN {bits}-bit g64, head 8-bit", rtn))
    for label, build in models:
        model = build()
        model.eval()
        if "checkpoint" in label:
            quantize_head(model, 8)  # as cat-generate serves it
        for on in (False, True):
            set_int8_activations(model, on)
            t = time.perf_counter()
            rows.append((label, "int8" if on else "float", ppl_row(model, texts, args.seqlen, args.windows)))
            print(rows[-1], f"{time.perf_counter() - t:.0f} s", flush=True)
        del model
    mi = M.machine_info()
    lines = [f"# int8 activations: perplexity with and without ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {mi['cpu']}, {M.cpu_isa()}, {args.threads} threads; integer kernel "
             f"{'on (AVX-512 VNNI)' if _C._int8_kernel() else 'off (float kernels on the rounded x)'}. "
             f"Texts: {', '.join(TEXTS)}, {args.windows} x {args.seqlen} tokens each, float32.", "",
             "| model | activations | " + " | ".join(f"{t} ppl" for t in TEXTS) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in TEXTS) + " |"]
    floats = {}
    for label, act, ppls in rows:
        if act == "float":
            floats[label] = ppls
        cells = []
        for i, v in enumerate(ppls):
            base = floats.get(label) if act == "int8" else None
            cells.append(f"{v:.3f}" + (f" ({100 * (v / base[i] - 1):+.2f}%)" if base else ""))
        lines.append(f"| {label} | {act} | " + " | ".join(cells) + " |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
