"""Decode speed side by side: llama.cpp and Caterpillar on the same model, threads and machine.

    flock /tmp/cat-heavy.lock bash tools/build_llamacpp.sh        # once: .llamacpp/bin
    flock /tmp/cat-heavy.lock python benchmarks/decode_vs_llamacpp.py --threads 2 \\
        --out benchmarks/results/decode_vs_llamacpp_<date>.md

Benchmark tier (needs llama.cpp built from PyPI's llama-cpp-python sdist), not CI. One run, in
this order, nothing else running:

1. DRAM read bandwidth: the best of five ``torch.sum`` passes over 1 GiB of float32 with
   ``--threads`` threads (what a decode step can read at most).
2. llama.cpp: ``llama-bench -p 0 -n TOKENS -r REPS -t THREADS`` (decode: TOKENS tokens after
   none) and ``-p PREFILL -n 0`` on the embedded SmolLM2 GGUF requantized by ``llama-quantize
   --allow-requantize`` to each of ``--formats``; the package's own file (Q4_1 linears, Q8_0
   embedding/head) as it ships; and ``--extra-gguf`` files (e.g. ``cat-quantize --export gguf``).
3. Caterpillar, in this process with ``torch.set_num_threads(THREADS)``: the float32 model, and
   every block linear RTN-quantized at 4 and 3 bits, group 64, head 8 bits (as cat-generate
   serves it; decode speed does not depend on how codes were chosen), each through the native
   decode step (``cat_core.native_decode``, what cat-generate and the loaders use), the native
   step with int8 activations (``--activations int8``; x rounded per 32 values as llama.cpp's
   Q8_0 does) and transformers' modules (``plain``): TOKENS greedy steps after one start token with the KV cache
   and last-position logits, REPS times (median); prefill of PREFILL tokens, batch 1.

Every row gives tokens/s, the weight bytes a decode step reads (llama.cpp: the file's tensors
minus the embedding table when the head is a separate tensor; Caterpillar: every parameter and
buffer the step touches, the lookup-only embedding excluded) and the share of the measured DRAM
bandwidth those bytes at that speed make. Prints a Markdown report (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "probes"))
import _llamacpp as L  # noqa: E402
import _models as M  # noqa: E402
from cat_apps.bench import dram_read_gbs, step_read_bytes  # noqa: E402
from decode_profile import greedy_steps, quantize_body  # noqa: E402

# ------------------------------------------------------------------ llama.cpp

def _gguf_weight_bytes(path: Path) -> tuple[int, str]:
    """Bytes of the tensors a decode step reads, and the head's type."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    sizes = {t.name: int(t.n_bytes) for t in r.tensors}
    types = {t.name: t.tensor_type.name for t in r.tensors}
    total = sum(sizes.values())
    if "output.weight" in sizes:  # untied: the embedding table is only looked up
        return total - sizes.get("token_embd.weight", 0), types["output.weight"]
    return total, types.get("token_embd.weight", "?") + " (tied)"


def llama_bench(path: Path, threads: int, tokens: int, prefill: int, reps: int) -> dict[str, float | str]:
    """Decode and prefill tokens/s (and their standard deviations) of llama-bench. Where the
    default run crashes (this build's repacked prompt path segfaults on Sapphire Rapids with AMX:
    2026-12-07, llama-cpp-python 0.3.36), it is rerun with ``--repack 0``, and the row says so."""
    out: dict[str, float | str] = {}
    for key, args in (("decode", ["-p", "0", "-n", str(tokens)]), ("prefill", ["-p", str(prefill), "-n", "0"])):
        cmd = [str(L.BIN / "llama-bench"), "-m", str(path), "-t", str(threads), "-r", str(reps), "-o", "json", *args]
        stdout, _, fell_back = L.run_or_fallback(cmd, cmd + ["--repack", "0"], stdout_only=True)
        rows = json.loads(stdout)
        out[key] = float(rows[0]["avg_ts"])
        out[key + "_sd"] = float(rows[0]["stddev_ts"])
        out[key + "_note"] = "--repack 0" if fell_back else ""
    return out


# ------------------------------------------------------------------ Caterpillar

def cat_decode(model: torch.nn.Module, tokens: int, reps: int) -> float:
    """Median tokens/s of ``tokens`` greedy steps after one start token (batch 1)."""
    start = [model.config.bos_token_id or 1]
    greedy_steps(model, tokens, start)  # warm-up
    return statistics.median(1.0 / greedy_steps(model, tokens, start)[0] for _ in range(reps))


def cat_prefill(model: torch.nn.Module, n: int, reps: int) -> float:
    from cat_core.decode import cached_forward

    ids = torch.randint(3, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ms = M.median_ms(lambda: cached_forward(model, ids, last_only=True), reps)
    return n / (ms / 1e3)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128, help="decoded tokens per run (default 128)")
    p.add_argument("--prefill", type=int, default=512, help="prompt tokens of the prefill row (default 512)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--formats", nargs="+", default=["F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q3_K_S"],
                   help="llama-quantize types to requantize the embedded GGUF to")
    p.add_argument("--extra-gguf", nargs="*", type=Path, default=[], help="more GGUF files for llama.cpp")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    L.require("llama-bench", "llama-quantize")

    torch.set_num_threads(args.threads)
    mi = M.machine_info()
    bw = dram_read_gbs()  # with the threads set above
    src = M.gguf_path("smollm2")
    rows: list[tuple[str, str, float, float, float, int]] = []  # engine, format, decode, sd, prefill, bytes

    with tempfile.TemporaryDirectory(prefix="cat-llamacpp-") as tmp:
        files = [("as shipped (Q4_1, Q8_0 head)", src)]
        files += [(fmt, L.requantize(src, Path(tmp) / f"smollm2-{fmt}.gguf", fmt, 2)) for fmt in args.formats]
        files += [(f"{f.name}", f) for f in args.extra_gguf]
        for label, path in files:
            r = llama_bench(path, args.threads, args.tokens, args.prefill, args.reps)
            nbytes, head = _gguf_weight_bytes(path)
            notes = "; ".join(f"{k} with {r[k + '_note']}" for k in ("decode", "prefill") if r[k + "_note"])
            label = f"{label} [head {head}]" + (f" ({notes})" if notes else "")
            rows.append(("llama.cpp", label, r["decode"], r["decode_sd"], r["prefill"], nbytes))
            print(rows[-1], flush=True)

    from cat_core.native_decode import disable_native_decode, enable_native_decode
    from cat_core.nn import set_int8_activations

    for bits in (None, 4, 3):
        model, _ = M.load_model("smollm2")
        model.eval()
        steps = ["plain"]
        if bits is not None:
            quantize_body(model, bits, 8)
            steps = ["native step, int8 activations", "native step", "plain"]
        for step in steps:
            if bits is not None:
                set_int8_activations(model, "int8" in step)
            if step.startswith("native step"):
                enable_native_decode(model)
            else:
                disable_native_decode(model)
            label = "float32" if bits is None else f"{bits}-bit g64 RTN, head 8-bit, {step}"
            tps = cat_decode(model, args.tokens, args.reps)
            pre = cat_prefill(model, args.prefill, args.reps)
            rows.append(("Caterpillar", label, tps, 0.0, pre, step_read_bytes(model)))
            print(rows[-1], flush=True)
        del model

    lines = [f"# Decode side by side: llama.cpp and Caterpillar ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {mi['cpu']}, {mi['cores']} cores, {M.cpu_isa()}; load average {mi['loadavg_start'][0]:.2f} "
             f"at the start; {args.threads} threads; torch {torch.__version__}; "
             f"llama.cpp of llama-cpp-python {L.version()}.",
             f"Model: the embedded SmolLM2-135M-Instruct. Decode: {args.tokens} tokens after one start token, "
             f"batch 1; prefill: {args.prefill} tokens. Measured DRAM read bandwidth: {bw:.1f} GB/s "
             f"(torch.sum over 1 GiB, {args.threads} threads).", "",
             "| engine | format | decode tok/s | vs llama.cpp Q4_0 | weight MB read / token | share of DRAM bw "
             "| prefill tok/s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    q40 = next((r[2] for r in rows if r[0] == "llama.cpp" and r[1].startswith("Q4_0")), None)
    for eng, label, tps, sd, pre, nbytes in rows:
        share = nbytes * tps / (bw * 1e9)
        rel = f"{tps / q40:.2f}x" if q40 else "-"
        sd_s = f" ± {sd:.1f}" if sd else ""
        lines.append(f"| {eng} | {label} | {tps:.1f}{sd_s} | {rel} | {nbytes / 1e6:.1f} | {100 * share:.0f}% "
                     f"| {pre:.0f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
