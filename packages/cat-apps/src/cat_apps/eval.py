"""cat-eval: perplexity on a text, and a data-free figure against the unquantized model."""

from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path
from typing import Any

from cat_apps import _checks, _cli
from cat_apps._cli import CLIError

PROG = "cat-eval"
DATASET_ALIASES = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "test"),
    "wikitext-2": ("wikitext", "wikitext-2-raw-v1", "test"),
}

_EPILOG = """\
Perplexity protocol: the text is tokenized once (a .txt file: its non-empty lines joined with a
blank line, as WikiText evaluations join rows), cut into non-overlapping windows of --seqlen
tokens (the short tail is dropped), the first --max-windows windows are kept, and every position
but the first of each window is scored; the number of tokens scored is printed.

Data-free figure: --kl-samples sequences of --kl-seqlen tokens are sampled from the unquantized
model (top-k 50, fixed seed); on them, the mean KL(unquantized || model) of the next-token
distributions (nats per position) and the top-1 agreement (share of positions where both pick
the same next token). For a quantized directory the unquantized model is the one cat-quantize
recorded (quantization_config.source_model), or --reference.

examples:
  cat-eval smollm2-awq4 --text wikitext2-raw-test.txt --seqlen 2048 --max-windows 10
  cat-eval smollm2-awq4                     # data-free figure only
"""


def build() -> argparse.ArgumentParser:
    p = _cli.parser(PROG, "Evaluate a model: perplexity and agreement with the unquantized model.", _EPILOG)
    p.add_argument("model", nargs="?", default=None, metavar="DIR_OR_MODEL",
                   help="quantized dir, HF dir, .gguf file or hub id (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--text", metavar="FILE|DATASET",
                   help="perplexity text: a local text file, or a datasets hub name (needs the network; "
                        "'wikitext2' = wikitext/wikitext-2-raw-v1 test; NAME[:SUBSET[:SPLIT]] otherwise). "
                        "Without it only the data-free figure is computed")
    p.add_argument("--text-column", default="text", help="column of a dataset or .json/.jsonl/.csv file (default: text)")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window length in tokens (default: 2048)")
    p.add_argument("--max-windows", type=int, default=None,
                   help="score at most this many windows (default: all of the text)")
    p.add_argument("--reference", metavar="MODEL", default=None,
                   help="unquantized model for the data-free figure (default: the source recorded in a "
                        "quantized checkpoint; for an unquantized model the figure is skipped unless given)")
    p.add_argument("--kl-samples", type=int, default=8, help="sequences for the data-free figure (default: 8)")
    p.add_argument("--kl-seqlen", type=int, default=128, help="tokens per such sequence (default: 128)")
    p.add_argument("--no-kl", action="store_true", help="skip the data-free figure")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON to FILE")
    _cli.add_max_memory(p, "An unquantized Hugging Face model (or --reference) that does not fit is read one "
                           "decoder block at a time from its safetensors files (slower, but within the budget).")
    _cli.add_dtype(p)
    _cli.add_head_bits(p)
    _cli.add_activations(p)
    _cli.add_common(p)
    return p


def _read_text(spec: str, column: str) -> tuple[str, str]:
    """(text, description) of a file or a dataset."""
    path = Path(spec).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".json", ".jsonl", ".csv", ".parquet"):
            import datasets

            kind = {".jsonl": "json"}.get(suffix, suffix[1:])
            ds = datasets.load_dataset(kind, data_files=[str(path)], split="train")
            if column not in ds.column_names:
                raise CLIError(f"{path}: no column {column!r}; its columns are {ds.column_names}")
            rows = [t for t in ds[column] if isinstance(t, str) and t.strip()]
        else:
            try:
                rows = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
            except UnicodeDecodeError as e:
                raise CLIError(f"{path}: not UTF-8 text ({e})") from e
        return "\n\n".join(rows), str(path)
    if spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1 or path.suffix.lower() in (
            ".txt", ".json", ".jsonl", ".csv", ".parquet"):
        raise CLIError(f"text file {spec!r} does not exist")
    name, subset, split = DATASET_ALIASES.get(spec.lower(), (None, None, None))
    if name is None:
        parts = spec.split(":")
        name, subset, split = parts[0], (parts[1] or None) if len(parts) > 1 else None, parts[2] if len(parts) > 2 else "test"
    try:
        import datasets
    except ImportError as e:
        raise CLIError(f"loading dataset {name!r} needs the 'datasets' package") from e
    from cat_apps._models import _hub_host, _offline_env, network_reachable

    if not _offline_env() and not network_reachable(_hub_host()):
        raise CLIError(f"cannot load dataset {name!r}: no network ({_hub_host()} unreachable); give a local text file")
    ds = datasets.load_dataset(name, subset, split=split)
    if column not in ds.column_names:
        raise CLIError(f"dataset {name!r} has no column {column!r}; its columns are {ds.column_names}")
    rows = [t for t in ds[column] if isinstance(t, str) and t.strip()]
    return "\n\n".join(rows), f"{name}{':' + subset if subset else ''} ({split})"


def _preflight(args: argparse.Namespace) -> tuple[str, str]:
    """Every check that needs no weights (arguments, --text, --json, the models' paths, the
    lengths against their configs), before anything loads. Returns the model's (kind, spec)."""
    from cat_apps._models import model_config, preflight, recorded_source

    _checks.at_least(args.seqlen, 2, "--seqlen")
    _checks.at_least(args.max_windows, 1, "--max-windows")
    _checks.at_least(args.kl_samples, 1, "--kl-samples")
    _checks.at_least(args.kl_seqlen, 2, "--kl-seqlen")
    if args.json:
        _checks.output_file(args.json, "--json")
    if args.text and _checks.text_source(args.text, "--text", folders=False, plain_text_fallback=True) == "dataset":
        _checks.dataset_network(args.text, "--text")
    kind, norm = preflight(args.model)  # missing path / no network: fail before the heavy imports
    if args.text:
        _checks.fits_context(model_config(kind, norm), args.seqlen, "--seqlen")
    reference = args.reference
    if reference is None and kind == "quantized":
        reference = recorded_source(norm)
    if reference is not None and not args.no_kl:
        rkind, rnorm = preflight(reference)
        if args.reference and rkind == "quantized":
            raise CLIError(f"--reference {rnorm} is itself quantized; give the unquantized model")
        _checks.fits_context(model_config(rkind, rnorm), args.kl_seqlen, "--kl-seqlen")
    return kind, norm


def run(args: argparse.Namespace) -> int:
    from cat_apps._models import Streaming, load, recorded_source

    kind, norm = _preflight(args)
    streaming = Streaming(args.max_memory)  # only what does not fit is read block by block
    import torch

    device = _cli.resolve_device(args.device)
    reference = args.reference
    if reference is None and kind == "quantized":
        reference = recorded_source(norm)
        if reference is None and not args.no_kl:
            print(f"note: {norm} does not record its source model; data-free figure skipped "
                  f"(pass --reference MODEL)")
    results: dict[str, Any] = {"model": norm}

    # 1. data-free figure: reference first, then freed, so both models are never in memory at once
    kl_ids = ref = None
    if not args.no_kl and reference is not None:
        from cat_core.eval import reference_logprobs, sample_texts

        ref_loaded = load(reference, quiet=args.quiet, device=device, dtype=args.dtype, streaming=streaming)
        if ref_loaded.quantized:
            raise CLIError(f"reference {ref_loaded.source} is itself quantized; give the unquantized model")
        bar = _cli.progress(2, f"sampling {args.kl_samples} x {args.kl_seqlen} tokens from the reference",
                            args.quiet, unit="step")
        kl_ids = sample_texts(ref_loaded.model, ref_loaded.tokenizer, args.kl_samples, args.kl_seqlen)
        bar.update(1)
        ref = reference_logprobs(ref_loaded.model, kl_ids)
        bar.update(1)
        bar.close()
        results["reference"] = ref_loaded.source
        from cat_core.stream import lazy_weights

        if (lazy := lazy_weights(ref_loaded.model)) is not None:
            lazy.close()
        del ref_loaded
        gc.collect()
    elif not args.no_kl and kind != "quantized":
        print("note: unquantized model and no --reference: data-free figure skipped")

    loaded = load(args.model, quiet=args.quiet, device=device, dtype=args.dtype, streaming=streaming,
                  head_bits=args.head_bits)
    model, tok = loaded.model, loaded.tokenizer
    head = f", output head {loaded.head_bits}-bit" if loaded.head_bits else ""
    head += _cli.apply_activations(loaded, args.activations)
    results["activations"] = args.activations
    lines = [f"model: {loaded.source}" + (f" ({loaded.quant_format} quantized checkpoint{head})" if loaded.quantized else "")]
    results["head_bits"] = loaded.head_bits  # None: the head as stored

    if args.text:
        from cat_core.eval import perplexity

        max_pos = getattr(model.config, "max_position_embeddings", None)
        if max_pos and args.seqlen > max_pos:
            raise CLIError(f"--seqlen {args.seqlen} exceeds the model's max_position_embeddings={max_pos}")
        text, label = _read_text(args.text, args.text_column)
        ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        n = ids.numel() // args.seqlen
        if n == 0:
            raise CLIError(f"{label}: {ids.numel()} tokens, fewer than one window of {args.seqlen}; lower --seqlen")
        n = min(n, args.max_windows or n)
        bar = _cli.progress(n, "perplexity", args.quiet, unit="window")
        res = perplexity(model, ids, args.seqlen, n, progress=lambda: bar.update(1))
        bar.close()
        results["perplexity"] = {"text": label, "ppl": res.ppl, "nll": res.nll, "tokens_scored": res.tokens,
                                 "windows": res.windows, "seqlen": res.seqlen, "text_tokens": int(ids.numel()),
                                 "protocol": res.protocol()}
        lines.append(f"perplexity: {res.ppl:.3f} on {label} ({res.protocol()}; text has {ids.numel()} tokens)")

    if ref is not None:
        from cat_core.eval import agreement

        a = agreement(model, kl_ids, ref)
        results["data_free"] = {"reference": results["reference"], "mean_kl": a.kl, "top1_agreement": a.top1,
                                "positions": a.positions, "samples": args.kl_samples, "seqlen": args.kl_seqlen}
        lines.append(f"data-free vs {results['reference']}: mean KL {a.kl:.4f} nats, top-1 agreement "
                     f"{100 * a.top1:.1f}% ({args.kl_samples} x {args.kl_seqlen} tokens sampled from the reference, "
                     f"{a.positions} positions)")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


main = _cli.entry(PROG, build, run)

if __name__ == "__main__":
    raise SystemExit(main())
