"""AWQ quality benchmark: WikiText-2 perplexity of unquantized, RTN and AWQ models.

    nice -n 19 python benchmarks/awq_quality.py --model smollm2 --bits 3 4
    nice -n 19 python benchmarks/awq_quality.py --model gemma3 --bits 3 4
    nice -n 19 python benchmarks/awq_quality.py --model smollm2 --bits 3 --methods awq \\
        --calib wikitext2-valid lee-background self --n-samples 32      # calibration sources

Evaluation (the issue's protocol): ``wikitext2-raw-test.txt`` rows joined with "\\n\\n",
tokenized once, the first ``--windows`` non-overlapping windows of ``--eval-seqlen`` tokens; every
position but the first of each window is scored (the token count is reported). The "unquantized"
model is the dequantized GGUF the test packages ship (Q4_1 SmolLM2, Q4_K_M Gemma).

Calibration is never the test file: ``wikitext2-valid``, ``lee-background`` (files of the data dir)
or ``self`` (text sampled from the model). Each row is appended to
``benchmarks/results/awq_quality_<date>.json`` and the Markdown table next to it is regenerated
from all rows of that date, with the issue's bars evaluated where fp, RTN and AWQ rows of the same
setting exist.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
from pathlib import Path

import torch
from cat_core import eval as cat_eval

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models as M  # noqa: E402

CALIB_FILES = {"wikitext2-valid": "wikitext2-valid.txt", "lee-background": "lee-background.txt"}
# The bars: fraction of the RTN-to-fp gap AWQ must close, per bit width; and where RTN
# collapses, AWQ within this factor of fp.
GAP_BAR = {3: 0.50, 4: 0.40}
COLLAPSE_FACTOR = 2.5


def calib_source(name: str, data_dir: Path):
    if name == "self":
        return "self"
    if name not in CALIB_FILES:
        raise SystemExit(f"unknown calibration source {name!r}: {sorted(CALIB_FILES) + ['self']}")
    if name == "wikitext2-raw-test":
        raise SystemExit("never calibrate on the test file")
    return str(Path(data_dir) / CALIB_FILES[name])


def run_row(args, method: str, bits: int | None, calib: str | None, ids: torch.Tensor) -> dict:
    from cat_core.awq import quantize, rtn_quantize
    from cat_core.calib import calibration_samples
    from cat_core.config import CalibConfig, QuantConfig

    spec = M.MODELS[args.model]
    group = args.group_size or spec.group_size
    load0 = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    model, tok = M.load_model(args.model)
    if args.blocks:
        M.truncate_blocks(model, args.blocks)
    row: dict = {"model": args.model, "method": method, "bits": bits, "group_size": group if bits else None,
                 "blocks": args.blocks or None, "threads": torch.get_num_threads(), "load_s": round(time.perf_counter() - t0, 2)}
    qcfg = None
    if method != "fp":
        qcfg = QuantConfig(bits=bits, group_size=group, **json.loads(args.quant_overrides or "{}"))
        row["overrides"] = json.loads(args.quant_overrides or "{}")
        row["quant_config"] = {k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in qcfg.__dict__.items()}
    if method == "rtn":
        t = time.perf_counter()
        rtn_quantize(model, qcfg)
        row["quant_s"] = round(time.perf_counter() - t, 2)
    elif method == "awq":
        t = time.perf_counter()
        ccfg = CalibConfig(source=calib_source(calib, args.data_dir), n_samples=args.n_samples,
                           seqlen=args.seqlen, seed=args.seed)
        samples = calibration_samples(ccfg, tok, model)
        row.update(calib=calib, n_samples=args.n_samples, seqlen=args.seqlen,
                   calib_s=round(time.perf_counter() - t, 2))
        t, c = time.perf_counter(), time.process_time()
        res = quantize(model, tok, qcfg, calib=samples, progress=not args.quiet)
        row["quant_s"] = round(time.perf_counter() - t, 2)
        row["quant_cpu_s"] = round(time.process_time() - c, 2)
        row["timings"] = {k: round(v, 2) for k, v in res.timings.items()}
        alphas = [r.alpha for r in res.report]
        row["identity_groups"] = sum(a is None for a in alphas)
        row["groups"] = len(alphas)
        print(json.dumps({"quantized": row}), flush=True)  # before the (long) evaluation
    t = time.perf_counter()
    wins = M.windows(ids, args.eval_seqlen, args.windows)
    res = cat_eval.perplexity(model, wins.reshape(-1), args.eval_seqlen, wins.shape[0])
    ppl, n_tok = res.ppl, res.tokens
    row.update(ppl=round(ppl, 4), tokens_scored=n_tok, windows=args.windows, eval_seqlen=args.eval_seqlen,
               eval_s=round(time.perf_counter() - t, 2), wall_s=round(time.perf_counter() - t0, 2),
               cpu_s=round(time.process_time() - c0, 2),
               peak_rss_mib=round(M.peak_rss_mib(), 1), loadavg_before=load0, loadavg_after=os.getloadavg(),
               finished=dt.datetime.now().isoformat(timespec="seconds"))
    return row


def _threads(r: dict) -> int:
    """torch threads of a row (rows before the field existed: from their command line, else 2)."""
    if "threads" in r:
        return r["threads"]
    m = re.search(r"--threads[ =](\d+)", r.get("command", ""))
    return int(m.group(1)) if m else 2


def _key(r: dict) -> tuple:
    return (r["model"], r.get("blocks"), r["windows"], r["eval_seqlen"])


def _setting(r: dict) -> str:
    """The AWQ settings that tell rows of one model and bit width apart."""
    qc = r.get("quant_config", {})
    parts = [f"{k}={v}" for k, v in (r.get("overrides") or {}).items()
             if k not in ("clip_refine", "clip_token_subsample", "rounding", "gptq_damp")]
    # From the stored config, not the overrides: the default rounding changed (rows without the
    # key predate GPTQ rounding and rounded to nearest).
    rounding = qc.get("rounding", "nearest")
    parts.append(f"rounding={rounding}" + (f" (damp {qc.get('gptq_damp', 0.01)})" if rounding == "gptq" else ""))
    parts.append("refine" if qc.get("clip_refine") else "no refine")
    parts.append("clip: all tokens" if qc.get("clip_token_subsample", 512) is None
                 else f"clip: {qc.get('clip_token_subsample', 512)} tokens")
    return ", ".join(parts)


def evaluate_bars(rows: list[dict]) -> list[dict]:
    """One verdict per AWQ row for which the same setting has an fp and an RTN row."""
    out = []
    for a in rows:
        if a["method"] != "awq":
            continue
        fp = [r for r in rows if r["method"] == "fp" and _key(r) == _key(a)]
        rtn = [r for r in rows if r["method"] == "rtn" and _key(r) == _key(a) and r["bits"] == a["bits"]
               and r["group_size"] == a["group_size"]]
        if not fp or not rtn:
            continue
        f, r, q = fp[-1]["ppl"], rtn[-1]["ppl"], a["ppl"]
        closed = (r - q) / (r - f) if r > f else float("nan")
        bar = GAP_BAR.get(a["bits"])
        verdict = {"model": a["model"], "bits": a["bits"], "calib": a.get("calib"),
                   "n_samples": a.get("n_samples"), "seqlen": a.get("seqlen"), "blocks": a.get("blocks"),
                   "fp": f, "rtn": r, "awq": q, "gap_closed": round(closed, 4), "bar": bar,
                   "awq_over_fp": round(q / f, 4), "setting": _setting(a),
                   "rtn_collapsed": r > COLLAPSE_FACTOR * f}
        ok = bar is not None and closed >= bar
        if verdict["rtn_collapsed"]:
            ok = ok and q <= COLLAPSE_FACTOR * f
        full = a.get("n_samples") == 128 and a.get("seqlen") == 512 and not a.get("blocks") and a["windows"] == 10
        verdict["pass"] = bool(ok)
        verdict["issue_setting"] = bool(full)
        out.append(verdict)
    return out


def write_results(path_json: Path, rows: list[dict], meta: dict) -> None:
    data = {"meta": meta, "rows": rows, "bars": evaluate_bars(rows)}
    path_json.write_text(json.dumps(data, indent=1))
    md = [f"# AWQ quality, {meta['date']}", "",
          f"Machine: {meta['machine'].get('cpu')}, {meta['machine'].get('cores')} cores, torch "
          f"{meta['machine'].get('torch')}, 2 torch threads unless the quant column says otherwise, on a CPU shared with other "
          "jobs (wall times depend on the load averages listed; rows without clip_refine predate that option; "
          "rows without clip_all_tokens searched clips on 512 sampled tokens, the default before 2026-11-22 "
          "session 3, which could miss the massive-activation first tokens).", "",
          "Perplexity: WikiText-2 raw test, rows joined with \"\\n\\n\", first N windows of the eval "
          "length, non-overlapping. \"fp\" = the dequantized GGUF of the test package (Q4_1 SmolLM2, "
          "Q4_K_M Gemma-3), float32.", "",
          "| model | blocks | method | bits | group | calib | samples x len | windows x len (tokens) | ppl "
          "| quant s (cpu s) | wall s | peak RSS MiB | load avg (1/5/15) before -> after |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        la = "/".join(f"{x:.1f}" for x in r["loadavg_before"]) + " -> " + "/".join(
            f"{x:.1f}" for x in r["loadavg_after"])
        cal = f"{r.get('n_samples')}x{r.get('seqlen')}" if r["method"] == "awq" else ""
        md.append(f"| {r['model']} | {r.get('blocks') or 'all'} | {r['method']} | {r.get('bits') or ''} | "
                  f"{r.get('group_size') or ''} | {r.get('calib') or ''} | {cal}{' ' + json.dumps(r['overrides']) if r.get('overrides') else ''}"
                  f"{' clip_refine' if r['method'] == 'awq' and r.get('quant_config', {}).get('clip_refine') else ''}"
                  f"{' clip_all_tokens' if r['method'] == 'awq' and r.get('quant_config', {}).get('clip_token_subsample', 512) is None else ''} | "
                  f"{r['windows']}x{r['eval_seqlen']} ({r['tokens_scored']}) | {r['ppl']:.3f} | "
                  f"{r.get('quant_s', '')}{' (' + str(r['quant_cpu_s']) + ')' if 'quant_cpu_s' in r else ''}"
                  f"{'' if _threads(r) == 2 else f' [{_threads(r)} thread(s)]'} | {r['wall_s']} | {r['peak_rss_mib']} | {la} |")
    bars = data["bars"]
    if bars:
        md += ["", "## Bars (gap closed = (RTN - AWQ) / (RTN - fp))", "",
               "| model | bits | calib | samples x len | AWQ settings | fp | RTN | AWQ | gap closed | bar | AWQ/fp | issue setting | pass |",
               "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for b in bars:
            md.append(f"| {b['model']}{'' if not b['blocks'] else ' (' + str(b['blocks']) + ' blocks)'} | "
                      f"{b['bits']} | {b['calib']} | {b['n_samples']}x{b['seqlen']} | {b.get('setting', '')} | {b['fp']:.3f} | "
                      f"{b['rtn']:.3f} | {b['awq']:.3f} | {b['gap_closed']:.1%} | {b['bar']:.0%} | "
                      f"{b['awq_over_fp']:.2f} | {'yes' if b['issue_setting'] else 'no (reduced)'} | "
                      f"{'PASS' if b['pass'] else 'FAIL'} |")
    md += ["", "Rows missing from the table were not run (partial results are labelled by what is "
           "present; nothing is extrapolated)."]
    path_json.with_suffix(".md").write_text("\n".join(md) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(M.MODELS), default="smollm2")
    p.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    p.add_argument("--methods", nargs="+", default=["fp", "rtn", "awq"], choices=["fp", "rtn", "awq"])
    p.add_argument("--calib", nargs="+", default=["wikitext2-valid"],
                   help="wikitext2-valid, lee-background, self (one AWQ row per source)")
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--group-size", type=int, default=None, help="default: 64 SmolLM2, 128 Gemma-3")
    p.add_argument("--quant-overrides", default=None, help='JSON of QuantConfig fields, e.g. \'{"n_grid": 10}\'')
    p.add_argument("--windows", type=int, default=10)
    p.add_argument("--eval-seqlen", type=int, default=2048)
    p.add_argument("--blocks", type=int, default=0, help="truncate to the first N blocks (quick checks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=M.DEFAULT_DATA_DIR)
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--date", default=dt.date.today().isoformat())
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"awq_quality_{args.date}.json"
    _, tok = M.load_model(args.model)
    ids = M.test_ids(tok, args.data_dir)

    plan: list[tuple[str, int | None, str | None]] = []
    if "fp" in args.methods:
        plan.append(("fp", None, None))
    for b in args.bits:
        if "rtn" in args.methods:
            plan.append(("rtn", b, None))
        if "awq" in args.methods:
            plan += [("awq", b, c) for c in args.calib]
    for method, bits, calib in plan:
        row = run_row(args, method, bits, calib, ids)
        row["command"] = " ".join(sys.argv)
        print(json.dumps(row), flush=True)
        # re-read so concurrent or earlier invocations of the same date accumulate
        rows = json.loads(path.read_text())["rows"] if path.exists() else []
        rows.append(row)
        meta = {"date": args.date, "machine": M.machine_info(), "note": "rows accumulate across invocations"}
        write_results(path, rows, meta)
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
