"""Helpers of the runtime tests (test_nn*, test_io*, test_export*, test_moe): RTN-quantize every
linear of a model (nn.Linear and GPT-2 Conv1D, all but lm_head), a tiny Llama whose sizes suit
every format, and an offline tokenizer for such models."""

from __future__ import annotations

import torch
from cat_core.quant import QuantizedTensor, dequantize, quantize_tensor
from torch import nn


def _weight_nk(mod: nn.Module) -> torch.Tensor | None:
    if isinstance(mod, nn.Linear):
        return mod.weight.data
    if type(mod).__name__ == "Conv1D":
        return mod.weight.data.T  # Conv1D stores [K, N]
    return None


@torch.no_grad()
def rtn_all(model: nn.Module, bits: int = 4, group_size: int = 32, sym: bool = False,
            scale_dtype: str = "float16") -> dict[str, QuantizedTensor]:
    """Quantize every linear except lm_head in place (fake-quantized weights) and return the codes.
    A layer whose K is not a multiple of group_size uses one group per row (-1)."""
    out = {}
    for name, mod in model.named_modules():
        w = _weight_nk(mod)
        if w is None or name.split(".")[-1] == "lm_head":
            continue
        gs = group_size if group_size != -1 and w.shape[1] % group_size == 0 else -1
        qt = quantize_tensor(w, bits=bits, group_size=gs, sym=sym, scale_dtype=scale_dtype, name=name)
        deq = dequantize(qt, w.dtype)
        if isinstance(mod, nn.Linear):
            mod.weight.data.copy_(deq)
        else:
            mod.weight.data.copy_(deq.T)
        out[name] = qt
    return out


def llama(seed: int = 0, hidden: int = 128, inter: int = 256, vocab: int = 128, *, tied: bool = False,
          positions: int = 128) -> nn.Module:
    """A 2-layer Llama (4 heads, 2 KV heads) with random N(0, 1/K) weights; the default sizes are
    multiples of 32 and 128. ``tied``: the head shares the input embedding's weight."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
    return randomize(model, seed + 1)


@torch.no_grad()
def randomize(model: nn.Module, seed: int) -> nn.Module:
    """N(0, 1/K) matrices and perturbed vectors (norms away from 1, biases away from 0), so that
    every fold and scale actually changes something."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        else:
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def word_tokenizer(vocab: int = 128):
    """An offline word-level tokenizer: ids 0-3 are <pad> <s> </s> <unk>, ``w4`` .. ``w{vocab-1}``
    the rest (text of such words tokenizes to known ids, nothing is downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
