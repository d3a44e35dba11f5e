"""cat-generate: stream text from an unquantized or quantized model."""

from __future__ import annotations

import argparse
import sys

from cat_apps import _checks, _cli
from cat_apps._cli import CLIError, UsageError

PROG = "cat-generate"

_EPILOG = """\
DIR_OR_MODEL is a quantized checkpoint directory (written by cat-quantize, or an AWQ/GPTQ export),
an unquantized Hugging Face directory, a .gguf file, or a hub id (needs the network); without it
the embedded SmolLM2-135M-Instruct is used.

examples:
  cat-generate smollm2-awq4 --prompt "The capital of France is"
  cat-generate smollm2-awq4 --chat --prompt "Write a haiku about caterpillars" --temperature 0.7
"""


def build() -> argparse.ArgumentParser:
    p = _cli.parser(PROG, "Generate text, streaming tokens as they are produced.", _EPILOG)
    p.add_argument("model", nargs="?", default=None, metavar="DIR_OR_MODEL",
                   help="quantized dir, HF dir, .gguf file or hub id (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--prompt", required=True, help="the prompt text (with --chat: the user message)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most (default: 64)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature; 0 means greedy decoding (default: 0)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling: keep the smallest token set with this total probability "
                        "(with --temperature > 0; default: 1.0, off)")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt as a user message with the tokenizer's chat template")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    _cli.add_dtype(p)
    _cli.add_head_bits(p)
    _cli.add_plain_decode(p)
    _cli.add_activations(p)
    _cli.add_common(p)
    return p


def run(args: argparse.Namespace) -> int:
    from cat_apps._models import load, model_config, preflight

    _checks.at_least(args.max_new_tokens, 1, "--max-new-tokens")
    if not args.temperature >= 0:  # NaN too
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    kind, norm = preflight(args.model)  # missing path / no network: fail before the heavy imports
    _checks.fits_context(model_config(kind, norm), args.max_new_tokens, "--max-new-tokens")
    import torch
    from transformers import TextStreamer

    device = _cli.resolve_device(args.device)
    from cat_apps._models import Streaming

    # an unquantized model bigger than the free memory is read block by block (slow, but it runs)
    loaded = load(args.model, quiet=args.quiet, device=device, dtype=args.dtype, streaming=Streaming(),
                  head_bits=args.head_bits)
    model, tok = loaded.model, loaded.tokenizer
    _cli.apply_activations(loaded, args.activations)
    if loaded.quantized:
        step = _cli.decode_step(model, args.plain_decode)
        if not args.quiet and step != "native step":
            print(f"{PROG}: {step}", file=sys.stderr)
    if args.chat:
        if not getattr(tok, "chat_template", None):
            raise CLIError(f"{loaded.source}: the tokenizer has no chat template; drop --chat")
        ids = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tok(args.prompt, return_tensors="pt")["input_ids"]
    ids = ids.to(device)
    torch.manual_seed(args.seed)
    gen = dict(max_new_tokens=args.max_new_tokens, attention_mask=torch.ones_like(ids))
    if args.temperature > 0:
        gen.update(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=0)
    else:
        gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        gen["pad_token_id"] = tok.eos_token_id
    # plain prompts are echoed (as the tokenizer decodes them) before the continuation; chat
    # prompts (the template around the message) are not
    streamer = TextStreamer(tok, skip_prompt=args.chat, skip_special_tokens=True)
    with torch.no_grad():
        model.generate(ids, streamer=streamer, **gen)
    sys.stdout.flush()
    return 0


main = _cli.entry(PROG, build, run)

if __name__ == "__main__":
    raise SystemExit(main())
