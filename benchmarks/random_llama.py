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
    p.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    p.add_argument("--shard-gb", type=float, default=2.0, help="largest safetensors shard (GB; default 2)")
    args = p.parse_args(argv)

    import json

    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    dtype = getattr(torch, args.dtype)
    cfg = LlamaConfig(**PRESETS[args.preset], max_position_embeddings=4096, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, dtype=args.dtype)
    with init_empty_weights():  # shapes only: an 8b model is written tensor by tensor, never whole
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)
    limit = int(args.shard_gb * 1e9)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = total = 0
    for name, t in model.state_dict().items():
        # norms at one (as initialized), everything else N(0, 0.02) as transformers initializes
        value = (torch.ones(t.shape) if name.endswith("norm.weight")
                 else torch.randn(t.shape, generator=gen) * 0.02).to(dtype)
        nb = value.numel() * value.element_size()
        if shards[-1] and size + nb > limit:
            _flush(shards, args.out, save_file)
            size = 0
        shards[-1][name] = value
        size += nb
        total += nb
    _flush(shards, args.out, save_file, last=True)
    n = len(shards)
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for i, (fname, keys) in enumerate(zip(names, shards)):
        (args.out / f"_part{i}.safetensors").rename(args.out / fname)
        weight_map.update({k: fname for k in keys})
    (args.out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    model.config.save_pretrained(args.out)
    model.generation_config.save_pretrained(args.out)
    # cat-bench feeds random token ids; the tokenizer only has to load
    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(61)}}
    tk = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(args.out)
    n_params = sum(t.numel() for t in model.parameters())
    print(f"{args.out}: {args.preset}, {n_params / 1e9:.2f} B parameters (random), {total / 1e9:.1f} GB in {args.dtype}")


def _flush(shards: list[dict], out: Path, save_file, last: bool = False) -> None:
    """Write the open shard under a temporary name (the final names need the shard count) and
    keep only its tensor names."""
    i = len(shards) - 1
    save_file(shards[i], str(out / f"_part{i}.safetensors"), metadata={"format": "pt"})
    shards[i] = dict.fromkeys(shards[i])
    if not last:
        shards.append({})


if __name__ == "__main__":
    main()
