"""llama.cpp's own quantizers, scored by the evaluator of the off-domain table (issue #26).

    flock /tmp/cat-heavy.lock bash tools/build_llamacpp.sh        # once: .llamacpp/bin
    flock /tmp/cat-heavy.lock python benchmarks/llamacpp_quality.py --model smollm2 \\
        --calib lee-background --eval-text wikitext2-test licenses

Benchmark tier (needs llama.cpp built from PyPI's llama-cpp-python sdist), not CI. Steps:

1. The embedded GGUF (the "fp" model of every table: its dequantized weights) is written as F32
   by ``llama-quantize --allow-requantize``: the same values, the source of every row below.
2. ``llama-imatrix`` on the calibration text (``--calib``, the file the AWQ rows calibrate on),
   ``--n-samples`` chunks of ``--seqlen`` tokens (llama.cpp takes consecutive chunks from the
   start of the text; Caterpillar samples its windows: same text, same token budget).
3. ``llama-quantize [--imatrix]`` to each of ``--types`` (``TYPE`` or ``TYPE+imatrix``), with the
   token embedding and output head kept F32, as the AWQ rows keep them: only the block linears
   differ from fp.
4. Every file is loaded the way the fp model is (transformers' GGUF reader: llama.cpp's codes
   dequantized by the ``gguf`` package) and scored by ``cat_core.eval.perplexity`` on the first
   ``--windows`` windows of ``--eval-seqlen`` tokens of each evaluation text, float32; RTN
   (asymmetric, ``--rtn-group``) and fp are scored the same way in the same run, for the share of
   the RTN-to-fp gap each row closes.

Bits per weight count the block linears' bytes (codes, scales, offsets) over their weights (the
RTN row: Caterpillar's format, float16 scales and zero points packed at 4 bits).
Rows are appended to ``benchmarks/results/llamacpp_quality_<date>.json``; a Markdown table is
printed (and written with ``--out``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _llamacpp as L  # noqa: E402
import _models as M  # noqa: E402

RESULTS = L.REPO / "benchmarks" / "results"
CALIB_FILES = {"wikitext2-valid": "wikitext2-valid.txt", "lee-background": "lee-background.txt"}


def linear_bits_per_weight(path: Path) -> float:
    """Bits per weight of the block linears (2-D ``blk.*`` weights) of a GGUF file."""
    from gguf import GGUFReader

    nbytes = numel = 0
    for t in GGUFReader(str(path)).tensors:
        if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2:
            nbytes += int(t.n_bytes)
            numel += int(t.n_elements)
    return 8 * nbytes / numel


def perplexities(model, tok, texts: list[str], data_dir: Path, seqlen: int, windows: int) -> dict[str, float]:
    return {name: round(M.window_perplexity(model, M.eval_ids(tok, data_dir, name), seqlen, windows).ppl, 4)
            for name in texts}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(M.MODELS), default="smollm2")
    p.add_argument("--calib", choices=sorted(CALIB_FILES), default="lee-background")
    p.add_argument("--n-samples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--types", nargs="+", default=["Q4_0", "Q4_0+imatrix", "IQ4_XS+imatrix"])
    p.add_argument("--eval-text", nargs="+", default=["wikitext2-test", "licenses"], choices=sorted(M.EVAL_TEXTS))
    p.add_argument("--windows", type=int, default=10)
    p.add_argument("--eval-seqlen", type=int, default=2048)
    p.add_argument("--rtn-group", type=int, default=None, help="group of the RTN reference row (default: the model's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=M.DEFAULT_DATA_DIR)
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = p.parse_args(argv)
    L.require("llama-quantize", "llama-imatrix")
    calib_domain = M.CALIB_DOMAINS[args.calib]
    for name in args.eval_text:
        if M.EVAL_TEXTS[name][1] == calib_domain:
            sys.exit(f"--eval-text {name} is the calibration text's domain ({calib_domain}): never evaluate on it")
    torch.set_num_threads(args.threads)
    from cat_core.awq import rtn_quantize
    from cat_core.config import QuantConfig
    from cat_core.gguf import load_gguf

    spec = M.MODELS[args.model]
    group = args.rtn_group or spec.group_size
    date = dt.date.today().isoformat()
    common = {"model": args.model, "calib": args.calib, "n_samples": args.n_samples, "seqlen": args.seqlen,
              "windows": args.windows, "eval_seqlen": args.eval_seqlen, "isa": M.cpu_isa(),
              "threads": args.threads, "llamacpp": L.version()}
    rows: list[dict] = []

    def add(row: dict) -> None:
        row = {**common, **row, "finished": dt.datetime.now().isoformat(timespec="seconds")}
        rows.append(row)
        print(json.dumps(row), flush=True)

    model, tok = M.load_model(args.model)
    add({"method": "fp", "bits_per_weight": 32.0, "ppl": perplexities(model, tok, args.eval_text, args.data_dir,
                                                                      args.eval_seqlen, args.windows)})
    rtn_quantize(model, QuantConfig(bits=4, group_size=group))
    # Caterpillar's format: float16 scales and zero points packed at the weights' width
    add({"method": f"RTN asym g{group}", "bits_per_weight": round(4 + (16 + 4) / group, 3),
         "ppl": perplexities(model, tok, args.eval_text, args.data_dir, args.eval_seqlen, args.windows)})
    del model

    with tempfile.TemporaryDirectory(prefix="cat-llamacpp-q-") as tmp:
        tmp = Path(tmp)
        f32 = tmp / "f32.gguf"
        L.requantize(M.gguf_path(args.model), f32, "F32", args.threads)
        imatrix = None
        if any(t.endswith("+imatrix") for t in args.types):
            imatrix = tmp / "imatrix.gguf"
            t = time.perf_counter()
            L.run([str(L.BIN / "llama-imatrix"), "-m", str(f32), "-f", str(args.data_dir / CALIB_FILES[args.calib]),
                  "-c", str(args.seqlen), "--chunks", str(args.n_samples), "-t", str(args.threads),
                  "-o", str(imatrix)])
            imatrix_s = time.perf_counter() - t
        for typ in args.types:
            base, use_imatrix = typ.removesuffix("+imatrix"), typ.endswith("+imatrix")
            out = tmp / f"{typ.replace('+', '-')}.gguf"
            t = time.perf_counter()
            L.requantize(f32, out, base, args.threads, "--token-embedding-type", "f32", "--output-tensor-type", "f32",
                         *(["--imatrix", str(imatrix)] if use_imatrix else []))
            quant_s = time.perf_counter() - t + (imatrix_s if use_imatrix else 0.0)
            model, tok = load_gguf(out, cache_dir=tmp / "cache")
            add({"method": f"llama.cpp {typ}", "bits_per_weight": round(linear_bits_per_weight(out), 3),
                 "quant_s": round(quant_s, 1),
                 "ppl": perplexities(model, tok, args.eval_text, args.data_dir, args.eval_seqlen, args.windows)})
            del model

    store = RESULTS / f"llamacpp_quality_{date}.json"
    old = json.loads(store.read_text()) if store.exists() else []
    store.write_text(json.dumps(old + rows, indent=1) + "\n")

    fp, rtn = rows[0]["ppl"], rows[1]["ppl"]
    head = " | ".join(f"{n} ppl (gap closed)" for n in args.eval_text)
    md = [f"llama.cpp quantizers on {args.model}, calibration {args.calib} {args.n_samples} x {args.seqlen}, "
          f"{args.windows} x {args.eval_seqlen} tokens a text, float32 evaluation, {M.cpu_isa()}, {date}", "",
          f"| method | bits/w | {head} | time |", "| --- | ---: |" + " ---: |" * len(args.eval_text) + " ---: |"]
    for r in rows:
        cells = []
        for n in args.eval_text:
            gap = rtn[n] - fp[n]
            share = f" ({100 * (rtn[n] - r['ppl'][n]) / gap:.1f}%)" if gap > 0 else ""
            cells.append(f"{r['ppl'][n]:.3f}{share}")
        md.append(f"| {r['method']} | {r['bits_per_weight']:.3f} | {' | '.join(cells)} | "
                  f"{r.get('quant_s', '-')} |")
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
