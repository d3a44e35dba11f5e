"""What fusing the linears that read one input saves per decode step (``fuse_shared_inputs``).

    python benchmarks/probes/fuse_gain.py

Two models, RTN 4-bit g64 body, head 8-bit, batch 1, greedy, KV cache, last-position logits:
the embedded SmolLM2-135M (576 wide: only gate/up fuse exactly, its 192-row k/v are split over K
alone) and a 4-block model of the 1b preset's widths (hidden 2048, MLP 8192, GQA 32/8, vocabulary
cut to 8192 so that the head does not dominate; random weights), where q/k/v fuse too. Prints
ms a step, unfused and fused alternating (best of 5 rounds of 32 steps each), and checks that
both give the same logits bit for bit.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _models as M  # noqa: E402


def _quantized(model):
    from cat_core.awq import prepare, rtn_quantize
    from cat_core.config import QuantConfig
    from cat_core.nn import quantize_head, replace_linears

    names = {n for n, _ in prepare(model).layers}
    res = rtn_quantize(model, QuantConfig(bits=4, group_size=64))
    replace_linears(model, {k: v for k, v in res.tensors.items() if k in names})
    quantize_head(model, 8)
    return model


def _steps(model, n: int) -> tuple[float, torch.Tensor]:
    from cat_core.decode import cached_forward

    ids = torch.tensor([[1, 504, 3458, 282]]) % model.config.vocab_size
    with torch.no_grad():
        logits, cache = cached_forward(model, ids, last_only=True)
        t = time.perf_counter()
        for _ in range(n):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            logits, cache = cached_forward(model, nxt, cache, last_only=True)
        return (time.perf_counter() - t) / n, logits


def _compare(label: str, model) -> None:
    from cat_core.nn import fuse_shared_inputs

    fused = copy.deepcopy(model)
    groups = fuse_shared_inputs(fused)
    kinds = sorted({"+".join(n.rsplit(".", 1)[-1] for n in g) for g in groups})
    _steps(model, 4), _steps(fused, 4)
    a, b = [], []
    for _ in range(5):
        ta, la = _steps(model, 32)
        tb, lb = _steps(fused, 32)
        a.append(ta), b.append(tb)
        assert torch.equal(la, lb), "fused logits differ"
    print(f"{label}: {len(groups)} groups ({', '.join(kinds)}); unfused {1e3 * min(a):.2f} ms a step, "
          f"fused {1e3 * min(b):.2f} ms ({min(a) / min(b):.2f}x); logits identical", flush=True)


def main() -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    flags = open("/proc/cpuinfo").read()
    isa = "AMX" if "amx_tile" in flags else "AVX-512" if "avx512f" in flags else "AVX2"
    print(f"{isa}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    model, _ = M.load_model("smollm2")
    _compare("SmolLM2-135M", _quantized(model))
    del model
    cfg = LlamaConfig(vocab_size=8192, hidden_size=2048, intermediate_size=8192, num_hidden_layers=4,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=256,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    wide = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in wide.parameters():
            if p.dim() >= 2:
                p.normal_(0, p.shape[-1] ** -0.5)
    _compare("1b-preset widths, 4 blocks", _quantized(wide))


if __name__ == "__main__":
    main()
