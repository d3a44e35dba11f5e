"""Every architecture `export_gguf` writes, run by llama.cpp itself (benchmark tier, not CI).

    flock /tmp/cat-heavy.lock bash tools/build_llamacpp.sh        # once: .llamacpp/bin
    python benchmarks/gguf_tiny_archs.py

The CI tests read the files back with the gguf package; this runs them in llama.cpp, which is
what checks the hyperparameters, the tensor names, Llama's q/k row order, Gemma's ``1 + w``
norms, Gemma 2/3's sliding windows and soft-capping. For each tiny random model of the CI tests
(2 layers, hidden 128, 4 heads of 32, 2 KV heads; Gemma 3 with a global first layer, so the file
lists its layer pattern) quantized to 4-bit symmetric (Q4_0): the byte-level BPE tokenizer of the
tests, ``llama-tokenize`` against it, and perplexity with llama-perplexity's protocol (chunks of
``--ctx``, second half scored) for Caterpillar (float32) and for llama.cpp on an F32 copy of the
file (``llama-quantize --allow-requantize``: the same weights, float32 products) and on the file
itself. A random model's perplexity is large and means nothing; the agreement is the point.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "packages" / "cat-core" / "tests"))
from gguf_llamacpp import BIN, _run, cat_perplexity, llama_tokens  # noqa: E402
from test_export_gguf import ARCHS, _quantized, bpe_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from cat_core.io import export_gguf

    torch.set_num_threads(args.threads)
    tok = bpe_tokenizer()
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world", "tokens", "merge"]
    g = torch.Generator().manual_seed(0)
    text = "\n\n".join(" ".join(words[int(i)] for i in torch.randint(0, len(words), (40,), generator=g))
                       + f" {int(torch.randint(0, 9999, (1,), generator=g))}." for _ in range(200))
    rows = ["| architecture | tokens identical | Caterpillar | llama.cpp, F32 copy | llama.cpp, Q4_0 file |",
            "| --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text_file = tmp / "text.txt"
        text_file.write_text(text, encoding="utf-8")
        for arch in ARCHS:
            model, _ = _quantized(arch, 4, 32, True, seed=7)
            path = export_gguf(model, tmp / f"{arch}.gguf", tok, progress=False)
            ids = llama_tokens(path, text_file)
            same = ids == tok(text, add_special_tokens=True)["input_ids"]
            cat_ppl, count = cat_perplexity(model, ids, args.ctx, args.chunks, None)
            f32 = tmp / f"{arch}-f32.gguf"
            _run([str(BIN / "llama-quantize"), "--allow-requantize", str(path), str(f32), "F32", str(args.threads)])
            ppl = {}
            for label, p in (("f32", f32), ("q", path)):
                out, _ = _run([str(BIN / "llama-perplexity"), "-m", str(p), "-f", str(text_file), "-c", str(args.ctx),
                               "-b", str(args.ctx), "--chunks", str(args.chunks), "-t", str(args.threads)])
                ppl[label] = float(re.search(r"Final estimate: PPL = ([\d.]+)", out).group(1))
            rows.append(f"| {arch} | {same} | {cat_ppl:.4f} | {ppl['f32']:.4f} ({100 * (ppl['f32'] / cat_ppl - 1):+.4f}%)"
                        f" | {ppl['q']:.4f} ({100 * (ppl['q'] / cat_ppl - 1):+.4f}%) |")
            print(rows[-1], flush=True)
    print(f"\n{args.chunks} chunks of {args.ctx} tokens, {count} tokens scored per model\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
