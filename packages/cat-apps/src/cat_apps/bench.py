"""cat-bench: memory and speed of unquantized vs 4-bit vs 3-bit models."""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from cat_apps import _checks, _cli
from cat_apps._cli import CLIError, UsageError

PROG = "cat-bench"

_EPILOG = """\
Each MODEL_OR_DIR is an unquantized model (HF dir, .gguf file, hub id or 'builtin:smollm2', the
embedded SmolLM2-135M-Instruct) or a quantized checkpoint dir. An unquantized model is measured as
is and RTN-quantized on the fly to each --bits (round-to-nearest, no calibration: the same kernels
and memory as an AWQ checkpoint, not its quality); the table says so. A quantized dir is measured
as given. Every model computes in --dtype (auto: fp32 on a CPU, the model's 16-bit dtype or fp16
on a GPU); a quantized layer keeps its packed weights and scales.

Timing method: a random prompt of --prompt-len tokens per sequence; prefill = one forward pass
over the batch's prompts, computing the logits of the last position only as generate() does
(tokens/s = batch x prompt-len / time); decode = --new-tokens greedy
steps with the KV cache, the first token (produced by the prefill) excluded from the timing
(tokens/s = batch x (new-tokens - 1) / time). The device is synchronized around every timed
region. After one warm-up run, runs repeat until at least --min-runs are done and the relative
spread (max - min) / median of the decode times is below 5%, or --max-runs is reached; the
median is reported with the spread. Read MB/step: the bytes of weights one decode step reads (a
lookup-only embedding excepted); read GB/s: those per step time, and on a CPU their share of the
memory read bandwidth measured in the same run. Weight memory: bytes of all parameters and buffers. Peak
memory: on a GPU the CUDA peak allocated during the runs (weights, activations, KV cache); on a
CPU the weight memory plus the largest rise of the process's resident set size (sampled every
20 ms) during the runs over its level just before them, so that neither the Python/torch runtime
nor the other models this process holds are counted.

example:
  cat-bench builtin:smollm2 smollm2-awq4 --out bench/
"""


def build() -> argparse.ArgumentParser:
    p = _cli.parser(PROG, "Benchmark memory and prefill/decode speed of unquantized and quantized models.",
                    _EPILOG)
    p.add_argument("models", nargs="*", metavar="MODEL_OR_DIR",
                   help="models or quantized dirs (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3], choices=(2, 3, 4, 8),
                   help="bit widths to quantize unquantized models to, with RTN (default: 4 3)")
    p.add_argument("--group-size", default="auto",
                   help="group size of the on-the-fly RTN quantization ('auto': first of 128/64/32 fitting "
                        "every layer; default: auto)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 10], help="batch sizes (default: 1 10)")
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per sequence (default: 128)")
    p.add_argument("--new-tokens", type=int, default=32, help="generated tokens per sequence (default: 32)")
    p.add_argument("--min-runs", type=int, default=3, help="timed runs at least (default: 3)")
    p.add_argument("--max-runs", type=int, default=10, help="timed runs at most (default: 10)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="write bench.md, bench.json and bench.png (plot) into DIR")
    _cli.add_dtype(p)
    _cli.add_head_bits(p)
    _cli.add_plain_decode(p)
    _cli.add_activations(p, both=True)
    _cli.add_common(p)
    return p


# ----------------------------------------------------------------------------- measuring


def weight_bytes(model: Any) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t is None or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def step_read_bytes(model: Any) -> int:
    """Bytes a decode step reads: every parameter and buffer once (shared storage once), less an
    input embedding the head does not share (a lookup reads a few rows of it)."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    skip = set()
    if getattr(emb, "weight", None) is not None and getattr(head, "weight", None) is not emb.weight:
        skip.add(emb.weight.untyped_storage().data_ptr())
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t is None or t.device.type == "meta":
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen and ptr not in skip:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def dram_read_gbs() -> float:
    """What this process reads from memory at most, GB/s: the best of five torch.sum passes over
    1 GiB of float32 (larger than any CPU cache) with torch's threads."""
    import torch

    x = torch.ones(1 << 28, dtype=torch.float32)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        best = max(best, x.nbytes / (time.perf_counter() - t) / 1e9)
    return best


def _release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc), so that memory freed by an earlier
    model is not silently reused by the next one's runs and hidden from their RSS rise."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the rise may then be an underestimate
        pass


class _RssSampler:
    def __init__(self, period: float = 0.02) -> None:
        _release_free_memory()
        self.period, self._stop = period, threading.Event()
        self.start = self.peak = _cli.rss_mb()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _cli.rss_mb())
            time.sleep(self.period)

    def __enter__(self) -> _RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _cli.rss_mb())


def _one_run(model: Any, ids: Any, new_tokens: int, device: Any) -> tuple[float, float]:
    """(prefill seconds, decode seconds excluding the first token)."""
    import torch
    from cat_core.decode import cached_forward

    with torch.no_grad():
        _cli.sync(device)
        t0 = time.perf_counter()
        logits, cache = cached_forward(model, ids, last_only=True)
        nxt = logits[:, -1].argmax(-1, keepdim=True)  # the first new token
        _cli.sync(device)
        t1 = time.perf_counter()
        for _ in range(new_tokens - 1):
            logits, cache = cached_forward(model, nxt, cache, last_only=True)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
        _cli.sync(device)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def measure(model: Any, batch: int, prompt_len: int, new_tokens: int, device: Any,
            min_runs: int = 3, max_runs: int = 10, rel_spread: float = 0.05,
            on_run: Any = None) -> dict[str, Any]:
    """Time ``model`` (see the module's --help for the method); ``on_run()`` after each timed run."""
    import torch

    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=g).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with _RssSampler() as rss:
        _one_run(model, ids, new_tokens, device)  # warm-up
        pre, dec = [], []
        while True:
            p, d = _one_run(model, ids, new_tokens, device)
            pre.append(p)
            dec.append(d)
            if on_run is not None:
                on_run()
            med = statistics.median(dec)
            spread = (max(dec) - min(dec)) / med if med > 0 else 0.0
            if len(dec) >= max_runs or (len(dec) >= min_runs and spread < rel_spread):
                break
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 1e6
    else:
        peak = weight_bytes(model) / 1e6 + max(0.0, rss.peak - rss.start)
    med_p = statistics.median(pre)
    return {
        "batch": batch,
        "prefill_tok_s": batch * prompt_len / med_p,
        "decode_tok_s": batch * (new_tokens - 1) / med,
        "decode_ms_per_step": 1e3 * med / max(1, new_tokens - 1),
        "peak_mb": peak,
        "runs": len(dec),
        "decode_spread": spread,
        "prefill_spread": (max(pre) - min(pre)) / med_p if med_p > 0 else 0.0,
    }


# ----------------------------------------------------------------------------- variants


def _check_fits(spec: str) -> None:
    """An unquantized safetensors model is benchmarked from two float32 copies in RAM (the baseline
    and the one quantized in place): refuse, before loading, one that cannot fit."""
    from cat_apps._models import classify

    kind, norm = classify(spec)
    if kind != "hf-dir":
        return
    from cat_core.stream import MemoryBudget, checkpoint_bytes

    try:
        params, _ = checkpoint_bytes(norm)
    except Exception:  # noqa: BLE001 - not safetensors: the loader reports what is wrong
        return
    need, have = 2 * 4 * params, MemoryBudget.parse(None).cpu
    if need > have:
        raise CLIError(f"{norm}: benchmarking it unquantized needs about {need / 1e9:.1f} GB (two float32 copies "
                       f"of {params / 1e9:.2f} B parameters), more than the {have / 1e9:.1f} GB available; "
                       "quantize it with cat-quantize (it reads the model block by block) and benchmark the "
                       "quantized checkpoint")


def _short(dtype: Any) -> str:
    name = _cli.dtype_name(dtype)
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(name, name)


def _variants(spec: str, args: argparse.Namespace, device: Any):
    """Yield (label, how, model) for one command-line model; models are freed by the caller."""
    from cat_apps._models import load

    _check_fits(spec)
    loaded = load(spec, quiet=args.quiet, device="cpu", head_bits=args.head_bits)
    name = Path(loaded.source).name if loaded.kind not in ("builtin", "hub") else loaded.source
    fp = _cli.compute_dtype(args.dtype, device, loaded.declared_dtype)
    head = f", head {args.head_bits}-bit" if args.head_bits != 16 else ""
    if loaded.quantized:
        q = loaded.quant_config or {}
        head = f", head {loaded.head_bits}-bit" if loaded.head_bits else ""
        model = loaded.model.to(device, fp)
        how = (f"given checkpoint ({loaded.quant_format}, group {q.get('group_size', '?')}{head}, "
               f"{_short(fp)} compute, {_cli.decode_step(model, args.plain_decode)})")
        yield name, f"{q.get('bits', '?')}-bit", how, model
        return
    base = loaded.model
    from cat_core.awq import prepare, rtn_quantize
    from cat_core.config import QuantConfig
    from cat_core.nn import quantize_head, replace_linears

    from cat_apps.quantize import _choose_group_size, _group_size

    unquantized = copy.deepcopy(base)  # as loaded (fused experts stay fused)
    # the group size must fit every layer before anything is timed (a misfit fails in seconds);
    # the experts are unfused as cat-quantize does: they are quantized per expert
    layers = prepare(base).layers
    gs = _choose_group_size(_group_size(args.group_size), layers)
    yield name, _short(fp), "unquantized", unquantized.to(device, fp)
    del unquantized
    names = {n for n, _ in layers}
    for bits in args.bits:
        m = copy.deepcopy(base)
        cfg = QuantConfig(bits=bits, group_size=gs)
        # rtn_quantize takes every nn.Linear but lm_head/embeddings; keep it to the blocks' linears,
        # as AWQ does, so the two are comparable
        res = rtn_quantize(m, cfg)
        replace_linears(m, {k: v for k, v in res.tensors.items() if k in names})
        quantize_head(m, args.head_bits)  # as a quantized checkpoint is served
        m = m.to(device, fp)
        how = f"RTN on the fly (group {gs}{head}, {_short(fp)} compute, {_cli.decode_step(m, args.plain_decode)})"
        yield name, f"{bits}-bit", how, m
    del base


def _table(rows: list[dict], dram_gbs: float | None) -> str:
    head = ("| model | weights | how | batch | weight MB | peak MB | prefill tok/s | decode tok/s | "
            "decode ms/step | read MB/step | read GB/s" + (" (share of DRAM)" if dram_gbs else "")
            + " | runs (spread) |")
    out = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        gbs = r["read_mb"] / r["decode_ms_per_step"]  # MB/ms = GB/s
        share = f" ({100 * gbs / dram_gbs:.0f}%)" if dram_gbs else ""
        out.append(
            f"| {r['model']} | {r['weights']} | {r['how']} | {r['batch']} | {r['weight_mb']:.1f} | "
            f"{r['peak_mb']:.0f} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} | "
            f"{r['decode_ms_per_step']:.1f} | {r['read_mb']:.1f} | {gbs:.1f}{share} | "
            f"{r['runs']} ({100 * r['decode_spread']:.1f}%) |"
        )
    return "\n".join(out)


def _plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    batches = sorted({r["batch"] for r in rows})
    labels = list(dict.fromkeys(f"{r['model']}\n{r['weights']}" for r in rows))

    def value(lab: str, batch: int, key: str) -> float:
        hit = [r[key] for r in rows if f"{r['model']}\n{r['weights']}" == lab and r["batch"] == batch]
        return hit[0] if hit else 0.0

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.8))
    # weight memory does not depend on the batch: one bar per model; the rest one per batch size
    panels = (("decode_tok_s", "decode tokens/s (higher is better)", batches),
              ("prefill_tok_s", "prefill tokens/s (higher is better)", batches),
              ("weight_mb", "weight memory, MB (lower is better)", batches[:1]),
              ("peak_mb", "peak memory, MB (lower is better)", batches))
    for ax, (key, title, bs) in zip(axes, panels, strict=True):
        width = 0.8 / len(bs)
        for bi, b in enumerate(bs):
            xs = [i + bi * width for i in range(len(labels))]
            bars = ax.bar(xs, [value(lab, b, key) for lab in labels], width,
                          label=f"batch {b}" if len(bs) > 1 else None)
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        ax.set_xticks([i + width * (len(bs) - 1) / 2 for i in range(len(labels))])
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.12)
        if len(bs) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(args: argparse.Namespace) -> int:
    from cat_apps._models import BUILTIN, model_config, preflight

    _checks.at_least(min(args.batch_sizes), 1, "--batch-sizes")
    _checks.at_least(args.prompt_len, 1, "--prompt-len")
    _checks.at_least(args.new_tokens, 2, "--new-tokens")
    _checks.at_least(args.min_runs, 1, "--min-runs")
    if args.max_runs < args.min_runs:
        raise UsageError(f"--max-runs ({args.max_runs}) must be >= --min-runs ({args.min_runs})")
    _checks.group_size(args.group_size)
    out_dir = _checks.output_dir(args.out, "--out", replace=False) if args.out else None
    specs = args.models or [BUILTIN]
    for s in specs:  # a missing path / no network fails before any import or measurement
        _checks.fits_context(model_config(*preflight(s)), args.prompt_len + args.new_tokens,
                             "--prompt-len + --new-tokens")
    import torch

    device = _cli.resolve_device(args.device)
    rows: list[dict] = []
    for spec in specs:
        for name, weights, how, model in _variants(spec, args, device):
            wb, rb = weight_bytes(model), step_read_bytes(model)
            quantized = how != "unquantized"
            modes = ([None] if not quantized else
                     ["float", "int8"] if args.activations == "both" else [args.activations])
            for mode in modes:
                label = how if mode is None else how + _cli.set_activations(model, mode)
                for b in args.batch_sizes:
                    bar = _cli.progress(None, f"bench {name} {weights} batch {b}", args.quiet, unit="run")
                    r = measure(model, b, args.prompt_len, args.new_tokens, device, args.min_runs, args.max_runs,
                                on_run=bar.update)
                    bar.close()
                    rows.append({"model": name, "weights": weights, "how": label, "weight_mb": wb / 1e6,
                                 "read_mb": rb / 1e6, **r})
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    method = (f"prompt {args.prompt_len} random tokens, {args.new_tokens} greedy new tokens (decode timing "
              f"excludes the first); device synchronized; median of >= {args.min_runs} timed runs after a warm-up, "
              f"until the decode spread (max-min)/median < 5% or {args.max_runs} runs; peak memory = "
              + ("CUDA max allocated" if device.type == "cuda" else
                 "weight memory + the peak rise of the process RSS (sampled every 20 ms) during the runs"))
    machine = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpu": platform.processor() or platform.machine(), "host": platform.node(),
               "date": dt.datetime.now().isoformat(timespec="seconds"), "loadavg": os.getloadavg()}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    dram = None
    if device.type == "cpu":
        dram = dram_read_gbs()
        machine["dram_read_gbs"] = round(dram, 1)
        method += (f"; read MB/step = bytes of the weights a decode step reads (all parameters and buffers, "
                   f"a lookup-only embedding excepted), read GB/s = that per decode step time; DRAM = "
                   f"{dram:.1f} GB/s, the best of five torch.sum passes over 1 GiB measured after the runs")
    md = _table(rows, dram) + f"\n\nMethod: {method}.\nMachine: {machine['device']}, torch {machine['torch']}, " \
                        f"{machine['threads']} threads" + (f", {machine.get('gpu')}" if "gpu" in machine else "") + "\n"
    print(md)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench.md").write_text(md)
        (out_dir / "bench.json").write_text(json.dumps({"method": method, "machine": machine, "rows": rows},
                                                       indent=2) + "\n")
        if _plot(rows, out_dir / "bench.png"):
            print(f"wrote {out_dir / 'bench.md'}, bench.json, bench.png")
        else:
            print(f"wrote {out_dir / 'bench.md'}, bench.json (no plot: matplotlib is not installed)")
    return 0


main = _cli.entry(PROG, build, run)

if __name__ == "__main__":
    raise SystemExit(main())
