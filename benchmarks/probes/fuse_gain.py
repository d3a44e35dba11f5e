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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _models as M  # noqa: E402
from decode_profile import greedy_steps, quantize_body  # noqa: E402  (this folder)


def _compare(label: str, model) -> None:
    from cat_core.nn import fuse_shared_inputs

    fused = copy.deepcopy(model)
    groups = fuse_shared_inputs(fused)
    kinds = sorted({"+".join(n.rsplit(".", 1)[-1] for n in g) for g in groups})
    greedy_steps(model, 4), greedy_steps(fused, 4)
    a, b = [], []
    for _ in range(5):
        ta, la = greedy_steps(model, 32)
        tb, lb = greedy_steps(fused, 32)
        a.append(ta), b.append(tb)
        assert torch.equal(la, lb), "fused logits differ"
    print(f"{label}: {len(groups)} groups ({', '.join(kinds)}); unfused {1e3 * min(a):.2f} ms a step, "
          f"fused {1e3 * min(b):.2f} ms ({min(a) / min(b):.2f}x); logits identical", flush=True)


def main() -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    print(f"{M.cpu_isa()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    model, _ = M.load_model("smollm2")
    _compare("SmolLM2-135M", quantize_body(model, 4, 8))
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
    _compare("1b-preset widths, 4 blocks", quantize_body(wide, 4, 8))


if __name__ == "__main__":
    main()
