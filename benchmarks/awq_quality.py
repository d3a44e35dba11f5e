"""AWQ quality benchmark: perplexity of unquantized, RTN and AWQ models, off-domain first.

    nice -n 19 python benchmarks/awq_quality.py --model smollm2 --bits 3 4 --calib lee-background \\
        --n-samples 64                                    # the headline: calibrate on Lee news, eval WikiText-2
    nice -n 19 python benchmarks/awq_quality.py --model smollm2 --bits 4 --methods awq \\
        --calib wikitext2-valid --eval-text lee-background # the other direction
    nice -n 19 python benchmarks/awq_quality.py --model smollm2 --bits 4 --methods awq --calib self

Every row states its calibration text and its evaluation text. A row is *off-domain* when the two
come from different corpora (WikiText-2 valid and test are one corpus; ``self``, text sampled from
the model, is off-domain for every evaluation text) and *in-domain* otherwise; the Markdown table
lists the off-domain rows first and evaluates the issue's bars on them. Calibrating and evaluating
on the same file is refused.

Evaluation: the text's non-empty lines (WikiText-2 test rows, Lee articles) joined with "\\n\\n",
tokenized once, the first ``--windows`` non-overlapping windows of ``--eval-seqlen`` tokens; every
position but the first of each window is scored (the token count is reported). The "unquantized"
model is the dequantized GGUF the test packages ship (Q4_1 SmolLM2, Q4_K_M Gemma).

fp and RTN rows depend on neither the calibration nor the AWQ settings: one already in the date's
results (same model, bits, group, eval text and windows) is reused, not recomputed
(``--recompute`` forces it). Each row is appended to ``benchmarks/results/awq_quality_<date>.json``
and the Markdown table next to it is regenerated from all rows of that date.
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
from _options import add_awq_run_options  # noqa: E402

CALIB_FILES = {"wikitext2-valid": "wikitext2-valid.txt", "lee-background": "lee-background.txt"}
# Issue #18's bars, on off-domain rows: fraction of the RTN-to-fp gap AWQ must close, per bit
# width; self-calibrated rows within SELF_TOLERANCE of it (i.e. at least 90% of the bar); where RTN
# collapses, AWQ within COLLAPSE_FACTOR of fp; SmolLM2 at 128 x 512 quantized within
# TIME_BAR_S (on a quiet machine: the row's load average is shown next to the verdict).
GAP_BAR = {3: 0.70, 4: 0.60}
SELF_TOLERANCE = 0.10
COLLAPSE_FACTOR = 2.5
TIME_BAR_S = 15 * 60


def calib_source(name: str, data_dir: Path, eval_text: str):
    if name not in M.CALIB_DOMAINS:
        raise SystemExit(f"unknown calibration source {name!r}: {sorted(M.CALIB_DOMAINS)}")
    if name == eval_text or (name in CALIB_FILES and CALIB_FILES[name] == M.EVAL_TEXTS[eval_text][0]):
        raise SystemExit(f"never evaluate on the calibration text: --calib {name} with --eval-text {eval_text}")
    if name == "self":
        return "self"
    return str(Path(data_dir) / CALIB_FILES[name])


def flat_config(qcfg) -> dict:
    """The config as the flat keys of the rows recorded before the stage settings were nested (the
    settings column reads them): format fields as they are, every stage field under its old name."""
    import dataclasses

    from cat_core.awq._gptq import gptq_settings
    from cat_core.config import Learned
    from cat_core.config._quant import _MOVED

    out = {f.name: getattr(qcfg, f.name) for f in dataclasses.fields(qcfg)
           if f.name not in ("scales", "clip", "grams", "rounding")}
    out["clip"] = qcfg.clip is not None
    out["rounding"] = qcfg.rounding.name
    for old, (field, new) in _MOVED.items():
        if field == "rounding":
            source = gptq_settings(qcfg) if old.startswith("gptq_") else qcfg.rounding
            if not old.startswith("gptq_") and not isinstance(source, Learned):
                continue
            value = getattr(source, new)
            out[old] = value.name if new == "init" else value
        elif getattr(qcfg, field) is not None:
            out[old] = getattr(getattr(qcfg, field), new)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}


def eval_text_of(r: dict) -> str:
    """Rows before the field existed were all evaluated on WikiText-2 test."""
    return r.get("eval_text", "wikitext2-test")


def off_domain(r: dict) -> bool:
    return M.CALIB_DOMAINS.get(r.get("calib")) != M.EVAL_TEXTS[eval_text_of(r)][1]


def run_row(args, method: str, bits: int | None, calib: str | None, texts: dict[str, torch.Tensor]) -> list[dict]:
    """Quantize once (``method``), then one row per evaluation text of ``texts`` (name -> ids)."""
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
    import cat_core

    row: dict = {"cat_core": str(Path(cat_core.__file__).resolve().parent), "model": args.model, "method": method, "bits": bits, "group_size": group if bits else None,
                 "blocks": args.blocks or None, "threads": torch.get_num_threads(), "isa": M.machine_info()["isa"], "load_s": round(time.perf_counter() - t0, 2)}
    qcfg = None
    if method != "fp":
        qcfg = QuantConfig(bits=bits, group_size=group, **json.loads(args.quant_overrides or "{}"))
        row["overrides"] = json.loads(args.quant_overrides or "{}")
        row["quant_config"] = flat_config(qcfg)
    if method == "rtn":
        t = time.perf_counter()
        rtn_quantize(model, qcfg)
        row["quant_s"] = round(time.perf_counter() - t, 2)
    elif method == "awq":
        t = time.perf_counter()
        ccfg = CalibConfig(source=calib_source(calib, args.data_dir, next(iter(texts))), n_samples=args.n_samples,
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
    out = []
    for eval_text, ids in texts.items():
        t = time.perf_counter()
        res = M.window_perplexity(model, ids, args.eval_seqlen, args.windows)
        ppl, n_tok = res.ppl, res.tokens
        out.append({**row, "ppl": round(ppl, 4), "tokens_scored": n_tok, "windows": args.windows,
                    "eval_seqlen": args.eval_seqlen, "eval_text": eval_text,
                    "eval_s": round(time.perf_counter() - t, 2), "wall_s": round(time.perf_counter() - t0, 2),
                    "cpu_s": round(time.process_time() - c0, 2), "peak_rss_mib": round(M.peak_rss_mib(), 1),
                    "loadavg_before": load0, "loadavg_after": os.getloadavg(),
                    "finished": dt.datetime.now().isoformat(timespec="seconds")})
    return out


def _threads(r: dict) -> int:
    """torch threads of a row (rows before the field existed: from their command line, else 2)."""
    if "threads" in r:
        return r["threads"]
    m = re.search(r"--threads[ =](\d+)", r.get("command", ""))
    return int(m.group(1)) if m else 2


def _key(r: dict) -> tuple:
    return (r["model"], r.get("blocks"), r["windows"], r["eval_seqlen"], eval_text_of(r))


def _code_version() -> str:
    """The commit the packages were run from, "+dirty" when they differ from it, "+installed" when
    cat_core was imported from an installed copy rather than this checkout's packages/ (rows of one
    day can come from different code: the settings column alone does not tell them apart)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "packages"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    # An installed (non-editable) cat_core need not be the checkout's source at all.
    src = Path(cat_eval.__file__).resolve()
    installed = not src.is_relative_to(root / "packages")
    return head + ("+dirty" if dirty else "") + ("+installed" if installed else "")


def _baseline(rows: list[dict], method: str, key: tuple, bits: int | None, group: int | None) -> dict | None:
    """The latest fp (or RTN at ``bits``/``group``, default settings) row of ``key``, if any."""
    hits = [r for r in rows if r["method"] == method and _key(r) == key
            and (method == "fp" or (r["bits"] == bits and r["group_size"] == group and not r.get("overrides")))]
    return hits[-1] if hits else None


def _setting(r: dict) -> str:
    """The AWQ settings that tell rows of one model and bit width apart."""
    qc = r.get("quant_config", {})
    parts = [f"{k}={v}" for k, v in (r.get("overrides") or {}).items()
             if k not in ("clip_refine", "clip_token_subsample", "rounding", "gptq_damp", "search_dtype",
                          "gram_samples") and not k.startswith("learned_round_")]
    # From the stored config, not the overrides: the default rounding changed (rows without the
    # key predate GPTQ rounding and rounded to nearest).
    rounding = qc.get("rounding", "nearest")
    if rounding == "learned":  # the settings that set its cost and what it starts from
        init = qc.get("learned_round_init")
        parts.append(
            f"rounding=learned (from {init}" + (f", damp {qc.get('gptq_damp')}" if init == "gptq" else "")
            + f"; {qc.get('learned_round_iters')} it x {qc.get('learned_round_batch')} seq"
            + (f" x {qc['learned_round_seqlen']} tok" if qc.get("learned_round_seqlen") else "")
            + f", pool {qc.get('learned_round_samples') or 'all'}"
            + f", lr {qc.get('learned_round_lr') or '1/iters'}"
            + (f", target {qc['learned_round_target']}" if qc.get("learned_round_target", "block") != "block" else "")
            + (", min/max" if qc.get("learned_round_minmax") else "") + ")")
    else:
        parts.append(f"rounding={rounding}" + (f" (damp {qc.get('gptq_damp', 0.01)})" if rounding == "gptq" else ""))
    parts.append("refine" if qc.get("clip_refine") else "no refine")
    # where the clip search's (and GPTQ's) Grams come from: the scale search's batch
    # (loss_token_subsample tokens, rows before gram_samples existed) or every calibration token
    src = ("Grams: all calib tokens" if qc.get("gram_samples") == "all"
           else f"Grams: search batch ({qc.get('loss_token_subsample')} tok)")
    if qc.get("clip_token_subsample", 512) is not None:
        src += f", {qc.get('clip_token_subsample', 512)} sampled"
    parts.append(src)
    if r.get("code"):
        parts.append(f"code {r['code']}")
    return ", ".join(parts)


def evaluate_bars(rows: list[dict]) -> list[dict]:
    """One verdict per AWQ row for which fp and RTN rows of the same model, eval text and windows
    exist. The bars apply to off-domain rows (in-domain verdicts are informative only)."""
    out = []
    for a in rows:
        if a["method"] != "awq":
            continue
        fp = _baseline(rows, "fp", _key(a), None, None)
        rtn = _baseline(rows, "rtn", _key(a), a["bits"], a["group_size"])
        if fp is None or rtn is None:
            continue
        f, r, q = fp["ppl"], rtn["ppl"], a["ppl"]
        closed = (r - q) / (r - f) if r > f else float("nan")
        bar = GAP_BAR.get(a["bits"])
        if bar is not None and a.get("calib") == "self":
            bar = bar * (1 - SELF_TOLERANCE)
        verdict = {"model": a["model"], "bits": a["bits"], "group_size": a["group_size"], "calib": a.get("calib"),
                   "eval_text": eval_text_of(a), "off_domain": off_domain(a),
                   "n_samples": a.get("n_samples"), "seqlen": a.get("seqlen"), "blocks": a.get("blocks"),
                   "windows": a["windows"], "eval_seqlen": a["eval_seqlen"],
                   "fp": f, "rtn": r, "awq": q, "gap_closed": round(closed, 4), "bar": bar,
                   "awq_over_fp": round(q / f, 4), "setting": _setting(a),
                   "quant_s": a.get("quant_s"), "loadavg_before": a.get("loadavg_before"), "isa": a.get("isa"),
                   "rtn_collapsed": r > COLLAPSE_FACTOR * f}
        ok = bar is not None and closed >= bar
        if verdict["rtn_collapsed"]:
            ok = ok and q <= COLLAPSE_FACTOR * f
        full = (a.get("n_samples") == 64 and a.get("seqlen") == 512 and not a.get("blocks")
                and a["windows"] == 10 and a["eval_seqlen"] == 2048 and eval_text_of(a) == "wikitext2-test")
        verdict["pass"] = bool(ok)
        verdict["issue_setting"] = bool(full and verdict["off_domain"])
        out.append(verdict)
    return out


def time_verdicts(rows: list[dict]) -> list[dict]:
    """The issue's time bar: SmolLM2, 128 x 512 calibration, whole model."""
    return [{"bits": r["bits"], "calib": r.get("calib"), "setting": _setting(r), "quant_s": r["quant_s"], "isa": r.get("isa"),
             "quant_cpu_s": r.get("quant_cpu_s"), "loadavg_before": r["loadavg_before"],
             "pass": r["quant_s"] <= TIME_BAR_S}
            for r in rows if r["method"] == "awq" and r["model"] == "smollm2" and r.get("n_samples") == 128
            and r.get("seqlen") == 512 and not r.get("blocks")]


def _la(x: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in x)


def _bar_table(bars: list[dict]) -> list[str]:
    md = ["| model | bits | calib -> eval | samples x len | eval windows | AWQ settings | fp | RTN | AWQ | gap closed "
          "| bar | AWQ/fp | quant s (load before; ISA) | issue setting | pass |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in bars:
        md.append(f"| {b['model']}{'' if not b['blocks'] else ' (' + str(b['blocks']) + ' blocks)'} | "
                  f"{b['bits']} (g{b['group_size']}) | {b['calib']} -> {b['eval_text']} | {b['n_samples']}x{b['seqlen']} | "
                  f"{b['windows']}x{b['eval_seqlen']} | {b.get('setting', '')} | {b['fp']:.3f} | "
                  f"{b['rtn']:.3f} | {b['awq']:.3f} | **{b['gap_closed']:.1%}** | {b['bar']:.0%} | "
                  f"{b['awq_over_fp']:.2f} | {b.get('quant_s')} ({_la(b['loadavg_before']) if b.get('loadavg_before') else '?'}; {b.get('isa') or '?'}) | "
                  f"{'yes' if b['issue_setting'] else 'no'} | {'PASS' if b['pass'] else 'FAIL'} |")
    return md


def write_results(path_json: Path, rows: list[dict], meta: dict) -> None:
    bars = evaluate_bars(rows)
    times = time_verdicts(rows)
    data = {"meta": meta, "rows": rows, "bars": bars, "time_bar": times}
    path_json.write_text(json.dumps(data, indent=1))
    md = [f"# AWQ quality, {meta['date']}", "",
          f"Machine: {meta['machine'].get('cpu')}, {meta['machine'].get('cores')} cores (ISA per row: the machines of this kind differ), torch "
          f"{meta['machine'].get('torch')}, 2 torch threads unless the row says otherwise, on a CPU shared with other "
          "jobs: wall times depend on the load averages listed.", "",
          "Perplexity: the evaluation text's non-empty lines (WikiText-2 raw test rows; Lee articles; license paragraphs, see _heldout_licenses.py) joined with "
          "\"\\n\\n\", first N non-overlapping windows of the eval length. \"fp\" = the dequantized GGUF of the "
          "test package (Q4_1 SmolLM2, Q4_K_M Gemma-3), float32. Gap closed = (RTN - AWQ) / (RTN - fp).", "",
          f"Bars (issue #18), on off-domain rows: at least {GAP_BAR[4]:.0%} of the gap closed at 4 bits and "
          f"{GAP_BAR[3]:.0%} at 3 bits; self-calibrated rows at least {1 - SELF_TOLERANCE:.0%} of those "
          f"({GAP_BAR[4] * (1 - SELF_TOLERANCE):.0%} / {GAP_BAR[3] * (1 - SELF_TOLERANCE):.0%}); "
          f"the issue setting is 64 x 512 calibration tokens, WikiText-2 test 10 x 2048.", ""]
    off = [b for b in bars if b["off_domain"]]
    ins = [b for b in bars if not b["off_domain"]]
    md += ["## Off-domain: calibration text from another corpus than the evaluation text (headline)", ""]
    md += _bar_table(off) if off else ["(no off-domain row yet)"]
    md += ["", "## In-domain (secondary: calibration and evaluation from one corpus; bars not applicable)", ""]
    md += _bar_table(ins) if ins else ["(no in-domain row)"]
    if times:
        md += ["", f"## Time bar: SmolLM2, 128 x 512 calibration, within {TIME_BAR_S // 60} min on a quiet machine", "",
               "| bits | calib | AWQ settings | quant s (cpu s) | ISA | load avg before | pass |", "|---|---|---|---|---|---|---|"]
        md += [f"| {t['bits']} | {t['calib']} | {t['setting']} | {t['quant_s']} ({t['quant_cpu_s']}) | "
               f"{t.get('isa') or '?'} | {_la(t['loadavg_before'])} | {'PASS' if t['pass'] else 'FAIL'} |" for t in times]
    md += ["", "## All rows", "",
           "| model | blocks | method | bits | group | calib -> eval | samples x len | windows x len (tokens) | ppl "
           "| quant s (cpu s) | eval s | wall s | peak RSS MiB | load avg (1/5/15) before -> after |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        la = _la(r["loadavg_before"]) + " -> " + _la(r["loadavg_after"])
        cal = f"{r.get('n_samples')}x{r.get('seqlen')}" if r["method"] == "awq" else ""
        md.append(f"| {r['model']} | {r.get('blocks') or 'all'} | {r['method']} | {r.get('bits') or ''} | "
                  f"{r.get('group_size') or ''} | {r.get('calib') or '-'} -> {eval_text_of(r)} | "
                  f"{cal}{' ' + json.dumps(r['overrides']) if r.get('overrides') else ''} | "
                  f"{r['windows']}x{r['eval_seqlen']} ({r['tokens_scored']}) | {r['ppl']:.3f} | "
                  f"{r.get('quant_s', '')}{' (' + str(r['quant_cpu_s']) + ')' if 'quant_cpu_s' in r else ''}"
                  f"{'' if _threads(r) == 2 else f' [{_threads(r)} thread(s)]'} | {r.get('eval_s', '')} | {r['wall_s']} | "
                  f"{r['peak_rss_mib']} | {la} |")
    md += ["", "Rows missing from the table were not run (partial results are labelled by what is "
           "present; nothing is extrapolated)."]
    path_json.with_suffix(".md").write_text("\n".join(md) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_awq_run_options(p)
    p.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    p.add_argument("--methods", nargs="+", default=["fp", "rtn", "awq"], choices=["fp", "rtn", "awq"])
    p.add_argument("--calib", nargs="+", default=["lee-background"],
                   help="wikitext2-valid, lee-background, self (one AWQ row per source)")
    p.add_argument("--eval-text", nargs="+", choices=sorted(M.EVAL_TEXTS), default=["wikitext2-test"],
                   help="evaluation texts (each model is quantized once and scored on every one)")
    p.add_argument("--recompute", action="store_true", help="recompute fp/RTN rows already in the results")
    p.add_argument("--windows", type=int, default=10)
    p.add_argument("--eval-seqlen", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"awq_quality_{args.date}.json"
    _, tok = M.load_model(args.model)
    all_texts = {name: M.eval_ids(tok, args.data_dir, name) for name in args.eval_text}
    for c in args.calib if "awq" in args.methods else ():
        for name in all_texts:
            calib_source(c, args.data_dir, name)  # refuse calib == eval before any work

    plan: list[tuple[str, int | None, str | None]] = []
    if "fp" in args.methods:
        plan.append(("fp", None, None))
    for b in args.bits:
        if "rtn" in args.methods:
            plan.append(("rtn", b, None))
        if "awq" in args.methods:
            plan += [("awq", b, c) for c in args.calib]
    for method, bits, calib in plan:
        texts = dict(all_texts)
        if method in ("fp", "rtn") and not args.recompute and path.exists():
            for name in list(texts):
                key = (args.model, args.blocks or None, args.windows, args.eval_seqlen, name)
                old = _baseline(json.loads(path.read_text())["rows"], method, key, bits,
                                (args.group_size or M.MODELS[args.model].group_size) if bits else None)
                if old is not None:
                    print(f"reusing {method} {bits or ''} row on {name}: ppl {old['ppl']}", flush=True)
                    del texts[name]
        if not texts:
            continue
        new_rows = run_row(args, method, bits, calib, texts)
        for row in new_rows:
            row["command"] = " ".join(sys.argv)
            row["code"] = _code_version()
            print(json.dumps(row), flush=True)
        # re-read so concurrent or earlier invocations of the same date accumulate
        rows = json.loads(path.read_text())["rows"] if path.exists() else []
        rows.extend(new_rows)
        meta = {"date": args.date, "machine": M.machine_info(), "note": "rows accumulate across invocations"}
        write_results(path, rows, meta)
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
