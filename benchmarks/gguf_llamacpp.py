"""Judge a `cat-quantize --export gguf` directory with llama.cpp itself (benchmark tier, not CI).

    flock /tmp/cat-heavy.lock bash tools/build_llamacpp.sh        # once: .llamacpp/bin
    python benchmarks/gguf_llamacpp.py out/smollm2-q4 --ctx 512 --chunks 40

The directory holds the native checkpoint and ``model.gguf`` written from the same codes. On one
text (default: WikiText-2 raw test, rows joined with "\\n\\n", the first ``--lines`` rows):

1. tokenization: ``llama-tokenize`` on the GGUF against the checkpoint's Hugging Face tokenizer;
2. perplexity with llama-perplexity's protocol on both sides: the tokens cut into
   non-overlapping chunks of ``--ctx``, the first ``--chunks`` of them, and in each chunk only the
   second half scored (positions ctx/2 .. ctx-2 predict the next token: ctx/2 - 1 tokens per
   chunk; the first token replaced by BOS when the tokenizer adds one). llama.cpp runs
   ``llama-perplexity`` on the GGUF, and on an F32 copy of it made by ``llama-quantize
   --allow-requantize ... F32`` (the same weights, dequantized by llama.cpp; its matrix products
   then run in float32, where on the quantized file they quantize the activations to 8 bits);
   Caterpillar runs the native checkpoint (cat-core's kernels, float32 activations) on the very
   token ids llama.cpp scored;
3. greedy continuations of a prompt: ``llama-simple`` against transformers' ``generate`` on the
   native checkpoint.

Prints a Markdown report (commands, outputs, numbers) for benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _llamacpp import BIN, REPO, run_or_fallback  # noqa: E402
from _llamacpp import run as _run  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def _text(path: Path | None, lines: int) -> str:
    src = path or DATA / "wikitext2-raw-test.txt"
    rows = [r for r in src.read_text(encoding="utf-8").split("\n") if r.strip()]
    return "\n\n".join(rows[:lines] if lines > 0 else rows)


_NO_REPACK_NOTE = ("without weight repacking (`--no-repack`): this llama.cpp build's repacked AMX path "
                   "crashes on this CPU (SIGSEGV in ggml_backend_amx_mul_mat)")


def llama_tokens(gguf: Path, text_file: Path) -> list[int]:
    out, _ = _run([str(BIN / "llama-tokenize"), "-m", str(gguf), "-f", str(text_file), "--ids", "--log-disable"])
    found = re.findall(r"^\[[\d, ]*\]$", out, flags=re.M)
    return json.loads(found[-1])


@torch.no_grad()
def cat_perplexity(model, ids: list[int], ctx: int, chunks: int, bos: int | None) -> tuple[float, int]:
    """llama-perplexity's protocol on Caterpillar's model (see the module docstring)."""
    first = ctx // 2
    nll, count = 0.0, 0
    for i in range(chunks):
        chunk = torch.tensor(ids[i * ctx:(i + 1) * ctx], dtype=torch.long)
        if bos is not None:
            chunk[0] = bos
        logits = model(chunk.unsqueeze(0)).logits[0, first:ctx - 1].double()
        target = torch.tensor(ids[i * ctx + first + 1:(i + 1) * ctx], dtype=torch.long)
        nll -= torch.log_softmax(logits, -1).gather(1, target.unsqueeze(1)).sum().item()
        count += ctx - first - 1
    return math.exp(nll / count), count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="a cat-quantize --export gguf directory")
    ap.add_argument("--text", type=Path, default=None, help="text file (default: WikiText-2 raw test)")
    ap.add_argument("--lines", type=int, default=400, help="first non-empty lines of the text (0: all)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--work", type=Path, default=Path("/tmp/gguf_llamacpp"), help="scratch folder (the text file)")
    args = ap.parse_args()

    from cat_core.io import load_quantized

    gguf = (args.out / "model.gguf").absolute()
    args.work.mkdir(parents=True, exist_ok=True)
    text_file = args.work / "text.txt"
    text_file.write_text(_text(args.text, args.lines), encoding="utf-8")
    torch.set_num_threads(args.threads)
    # float32 activations: the checkpoint's float16 tensors convert exactly, the scales stay
    model, tok = load_quantized(args.out, dtype=torch.float32)
    model.eval()

    report = [f"# {args.out}: llama.cpp ({BIN}) vs Caterpillar", ""]
    # 1. tokenization
    hf = tok(text_file.read_text(encoding="utf-8"), add_special_tokens=True)["input_ids"]
    lc = llama_tokens(gguf, text_file)
    same = hf == lc
    first_diff = next((i for i, (a, b) in enumerate(zip(hf, lc, strict=False)) if a != b), None)
    report += [f"tokens: Hugging Face {len(hf)}, llama-tokenize {len(lc)}, identical: {same}"
               + ("" if same else f" (first difference at {first_diff})"), ""]

    # 2. perplexity
    need = args.ctx * args.chunks
    if len(lc) < need:
        sys.exit(f"the text has {len(lc)} tokens, {need} needed for {args.chunks} chunks of {args.ctx}")
    f32 = args.work / "model-f32.gguf"
    requant = [str(BIN / "llama-quantize"), "--allow-requantize", str(gguf), str(f32), "F32", str(args.threads)]
    _run(requant)  # the report shows the command
    runs = {}
    notes: set[str] = set()
    for label, path in (("GGUF", gguf), ("F32 copy", f32)):
        cmd = [str(BIN / "llama-perplexity"), "-m", str(path), "-f", str(text_file), "-c", str(args.ctx),
               "-b", str(args.ctx), "--chunks", str(args.chunks), "-t", str(args.threads)]
        out, secs, fell_back = run_or_fallback(cmd, cmd + ["--no-repack"])
        if fell_back:
            cmd.append("--no-repack")
            label += " (no repacking)"
            notes.add(_NO_REPACK_NOTE)
        m = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", out)
        runs[label] = (float(m.group(1)), float(m.group(2)), secs, cmd, out)
    add_bos = tok("a", add_special_tokens=True)["input_ids"][:1] == [tok.bos_token_id]
    t0 = time.perf_counter()
    cat_ppl, count = cat_perplexity(model, lc, args.ctx, args.chunks, tok.bos_token_id if add_bos else None)
    cat_secs = time.perf_counter() - t0
    report += [
        f"perplexity, {args.chunks} chunks of {args.ctx} tokens, second half of each scored ({count} tokens):",
        "",
        "| engine | perplexity | vs Caterpillar | time |",
        "| --- | --- | --- | --- |",
        f"| Caterpillar (native checkpoint, float32) | {cat_ppl:.4f} | | {cat_secs:.1f} s |",
    ]
    for label, (ppl, err, secs, _, _) in runs.items():
        report.append(f"| llama.cpp `llama-perplexity`, {label} | {ppl:.4f} +/- {err:.4f} | "
                      f"{100 * (ppl / cat_ppl - 1):+.4f}% | {secs:.1f} s |")
    report += ["", "```", "$ " + " ".join(requant)]
    for _, _, _, cmd, out in runs.values():
        report += ["$ " + " ".join(cmd), *[ln for ln in out.splitlines() if "estimate" in ln]]
    report += ["```", ""] + [f"llama.cpp ran {n}.\n" for n in sorted(notes)]

    # 3. greedy continuations (llama-simple prints the prompt and what follows on stdout)
    ids = tok(args.prompt, return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=args.new_tokens, do_sample=False)
    cat_text = tok.decode(gen[0], skip_special_tokens=True)
    report += [f"greedy continuations ({args.new_tokens} tokens):", "",
               "Caterpillar (transformers generate on the native checkpoint, float32):", "", "```", cat_text, "```"]
    for label, path in (("GGUF", gguf), ("F32 copy", f32)):
        cmd = [str(BIN / "llama-simple"), "-m", str(path), "-n", str(args.new_tokens), args.prompt]
        # the fallback: greedy (--temp 0) on the raw prompt (-no-cnv), what llama-simple does
        completion = [str(BIN / "llama-completion"), "-m", str(path), "-n", str(args.new_tokens), "--temp", "0",
                      "-t", str(args.threads), "-no-cnv", "--no-repack", "-p", args.prompt]
        lc_text, _, fell_back = run_or_fallback(cmd, completion, stdout_only=True)
        if fell_back:
            cmd = completion
            label += f", llama-completion {_NO_REPACK_NOTE}"
        lc_text = lc_text.replace("[end of text]", "")
        same = lc_text.strip().removeprefix(tok.bos_token or "") == cat_text.strip()  # llama-simple shows the BOS
        report += ["", f"llama.cpp, {label} (identical to Caterpillar's: {same}):", "",
                   "```", "$ " + " ".join(cmd[:-1]) + f" {json.dumps(args.prompt)}", lc_text.strip(), "```"]
    print("\n".join(report))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
