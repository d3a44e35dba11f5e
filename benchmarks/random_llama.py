"""Write a random-weight Llama-architecture checkpoint (config, safetensors, a stub tokenizer) for
speed and memory measurements where no real model can be downloaded (the lent GPU machine).

    python benchmarks/random_llama.py --preset 1b --out /tmp/llama-1b-random

Speed and memory depend on the shapes only, not on the weights; quality figures from such a model
mean nothing. Presets follow public model shapes: ``1b`` = Llama-3.2-1B-like (hidden 2048, MLP
8192, 16 layers, GQA 32/8, vocab 128256), ``8b`` = Llama-3-8B-like (4096, 14336, 32 layers, 32/8),
``tiny`` = a few MB, for checking the script itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PRESETS = {
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    torch.manual_seed(args.seed)
    cfg = LlamaConfig(**PRESETS[args.preset], max_position_embeddings=4096, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float16)
    model.save_pretrained(args.out)
    # cat-bench feeds random token ids; the tokenizer only has to load
    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(61)}}
    tk = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(args.out)
    n = sum(t.numel() for t in model.parameters())
    print(f"{args.out}: {args.preset}, {n / 1e9:.2f} B parameters (random)")


if __name__ == "__main__":
    main()
