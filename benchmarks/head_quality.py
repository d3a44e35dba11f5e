"""What quantizing the output head costs in quality: perplexity and KL per head bit width.

    nice -n 19 python benchmarks/head_quality.py --model smollm2            # fp body and RTN 4-bit body
    nice -n 19 python benchmarks/head_quality.py --model gemma3 --windows 5
    nice -n 19 python benchmarks/head_quality.py --model smollm2 --checkpoint out/smollm2-awq4

For each body (the unquantized model, the same with every block linear RTN-quantized to
``--body-bits``, and a native checkpoint when given) the head is kept (16: as loaded, float32)
or quantized with ``cat_core.nn.quantize_head`` to 8 and 4 bits (a tied embedding then looks up
the same quantized rows). Each variant is scored on held-out texts none of them was tuned on:
perplexity on the first ``--windows`` windows of ``--eval-seqlen`` tokens (the awq_quality
protocol), and mean KL(head 16 || head b) with top-1 agreement over the first ``--kl-windows``
windows of ``--kl-seqlen`` tokens of each text, i.e. what the head alone changes on that body.
Rows go to ``benchmarks/results/head_quality_<date>.json`` (appended) and a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch
from cat_core import eval as cat_eval

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models as M  # noqa: E402

RESULTS = M.REPO_ROOT / "benchmarks" / "results"


def _bodies(args):
    """Yield (label, model, tokenizer) for each body; each is freed by the caller before the next."""
    from cat_core.awq import prepare, rtn_quantize
    from cat_core.config import QuantConfig
    from cat_core.nn import replace_linears

    model, tok = M.load_model(args.model)
    yield "fp", model, tok
    spec = M.MODELS[args.model]
    names = {n for n, _ in prepare(model).layers}
    q = copy.deepcopy(model)
    res = rtn_quantize(q, QuantConfig(bits=args.body_bits, group_size=spec.group_size))
    replace_linears(q, {k: v for k, v in res.tensors.items() if k in names})
    del model
    yield f"RTN {args.body_bits}-bit g{spec.group_size}", q, tok
    if args.checkpoint:
        from cat_core.io import load_quantized

        ck, ck_tok = load_quantized(args.checkpoint, dtype=torch.float32)
        yield f"checkpoint {Path(args.checkpoint).name}", ck, ck_tok or tok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(M.MODELS), default="smollm2")
    p.add_argument("--checkpoint", default=None, help="a native checkpoint of the same model to add as a body")
    p.add_argument("--body-bits", type=int, default=4)
    p.add_argument("--texts", nargs="+", default=["wikitext2-test", "licenses", "lee-background"])
    p.add_argument("--windows", type=int, default=10)
    p.add_argument("--eval-seqlen", type=int, default=2048)
    p.add_argument("--kl-windows", type=int, default=2)
    p.add_argument("--kl-seqlen", type=int, default=512)
    p.add_argument("--data-dir", type=Path, default=M.DEFAULT_DATA_DIR)
    args = p.parse_args()
    from cat_core.nn import quantize_head

    date = dt.date.today().isoformat()
    rows = []
    t_start = time.perf_counter()
    for body, model, tok in _bodies(args):
        ids = {t: M.eval_ids(tok, args.data_dir, t) for t in args.texts}
        kl_ids = {t: M.windows(ids[t], args.kl_seqlen, args.kl_windows) for t in args.texts}
        with torch.no_grad():
            ref = {t: cat_eval.reference_logprobs(model, kl_ids[t]) for t in args.texts}
        for bits in (16, 8, 4):
            m = model if bits == 16 else copy.deepcopy(model)
            quantize_head(m, bits)
            row = {"date": date, "model": args.model, "body": body, "head_bits": bits, "weight_mb": _mb(m),
                   "isa": M.machine_info()["isa"], "threads": torch.get_num_threads()}
            with torch.no_grad():
                for t in args.texts:
                    r = cat_eval.perplexity(m, ids[t], args.eval_seqlen, args.windows)
                    a = cat_eval.agreement(m, kl_ids[t], ref[t])
                    row[t] = {"ppl": round(r.ppl, 4), "tokens": r.tokens, "kl": a.kl, "top1": a.top1,
                              "kl_positions": a.positions}
            print(json.dumps(row), flush=True)
            rows.append(row)
            if m is not model:
                del m
        del model, ref
    out = RESULTS / f"head_quality_{date}.json"
    old = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(old + rows, indent=1) + "\n")
    _table(old + rows, RESULTS / f"head_quality_{date}.md", args)
    print(f"wrote {out} ({time.perf_counter() - t_start:.0f} s)")


def _mb(model) -> float:
    """Bytes of the parameters and buffers, each storage once (a tied table counts once)."""
    seen = {t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}
    return round(sum(seen.values()) / 1e6, 1)


def _table(rows, path: Path, args) -> None:
    texts = [t for t in args.texts]
    lines = ["| model | body | head | weight MB | " + " | ".join(f"{t} ppl | KL | top-1" for t in texts) + " |",
             "|---|---|---:|---:|" + "---:|---:|---:|" * len(texts)]
    for r in rows:
        cells = []
        for t in texts:
            v = r.get(t)
            cells += [f"{v['ppl']:.3f}", f"{v['kl']:.5f}", f"{100 * v['top1']:.1f}%"] if v else ["", "", ""]
        lines.append(f"| {r['model']} | {r['body']} | {r['head_bits']} | {r['weight_mb']} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
