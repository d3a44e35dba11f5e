"""AWQ speed benchmark: wall time per phase and peak memory of ``cat_core.awq.quantize``.

    nice -n 19 python benchmarks/awq_speed.py --model smollm2 --n-samples 128 --seqlen 512
    nice -n 19 python benchmarks/awq_speed.py --blocks 3 --n-samples 32 --profile   # cProfile top

The issue's bar: SmolLM2-135M, 128 x 512 calibration samples, at most 15 minutes on the 2-core CPU
(a peer implementation needs ~33 minutes for 64 x 512). Calibration tokenization is timed apart
from the search. Rows are appended to ``benchmarks/results/awq_speed_<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _models as M  # noqa: E402
from _options import add_awq_run_options  # noqa: E402
from awq_quality import calib_source  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_awq_run_options(p)
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--calib", default="wikitext2-valid")
    p.add_argument("--profile", action="store_true", help="print the cProfile top 30 (cumulative)")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)

    from cat_core.awq import quantize
    from cat_core.calib import calibration_samples
    from cat_core.config import CalibConfig, QuantConfig

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    model, tok = M.load_model(args.model)
    if args.blocks:
        M.truncate_blocks(model, args.blocks)
    group = args.group_size or M.MODELS[args.model].group_size
    qcfg = QuantConfig(bits=args.bits, group_size=group, **json.loads(args.quant_overrides or "{}"))
    t = time.perf_counter()
    samples = calibration_samples(CalibConfig(source=calib_source(args.calib, args.data_dir),
                                              n_samples=args.n_samples, seqlen=args.seqlen), tok, model)
    calib_s = time.perf_counter() - t
    rss_before = M.peak_rss_mib()
    prof = cProfile.Profile() if args.profile else None
    t, c = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    res = quantize(model, tok, qcfg, calib=samples, progress=False)
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    row = {"model": args.model, "blocks": args.blocks or None, "bits": args.bits, "group_size": group,
           "calib": args.calib, "n_samples": args.n_samples, "seqlen": args.seqlen,
           "overrides": json.loads(args.quant_overrides or "{}"), "calib_s": round(calib_s, 2),
           "quantize_s": round(wall, 2), "quantize_cpu_s": round(cpu, 2), "timings": {k: round(v, 2) for k, v in res.timings.items()},
           "peak_rss_mib": round(M.peak_rss_mib(), 1), "peak_rss_before_quantize_mib": round(rss_before, 1),
           "profiled": bool(prof), "loadavg_before": load0, "loadavg_after": os.getloadavg(),
           "threads": args.threads, "command": " ".join(sys.argv),
           "finished": dt.datetime.now().isoformat(timespec="seconds")}
    print(json.dumps(row), flush=True)
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(30)
        print(s.getvalue())
    if args.no_save:
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"awq_speed_{args.date}.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    rows.append(row)
    path.write_text(json.dumps({"meta": {"date": args.date, "machine": M.machine_info()}, "rows": rows}, indent=1))
    md = [f"# AWQ speed, {args.date}", "",
          "Wall seconds of `quantize` (calibration tokenization apart), per phase; peak RSS of the "
          "process (includes the model and the evaluation-free setup). Run under nice 19 on a 2-core "
          "CPU shared with other jobs: compare rows only with their load averages in mind.", "",
          "| model | blocks | bits | samples x len | overrides | quantize s (cpu s) | phases (s) | peak RSS MiB | profiled | load avg before -> after |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ph = ", ".join(f"{k} {v}" for k, v in r["timings"].items())
        la = "/".join(f"{x:.1f}" for x in r["loadavg_before"]) + " -> " + "/".join(
            f"{x:.1f}" for x in r["loadavg_after"])
        md.append(f"| {r['model']} | {r['blocks'] or 'all'} | {r['bits']} | {r['n_samples']}x{r['seqlen']} | "
                  f"{json.dumps(r['overrides']) if r['overrides'] else ''} | {r['quantize_s']} ({r.get('quantize_cpu_s')}) | {ph} | "
                  f"{r['peak_rss_mib']} | {'yes' if r['profiled'] else 'no'} | {la} |")
    path.with_suffix(".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
