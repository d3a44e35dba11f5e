"""Models read block by block (cat_core.stream): the same results as the model in memory, within
a memory budget, with clear errors for budgets and files that cannot work."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig

from cat_core.awq import quantize
from cat_core.config import GPTQ, ClipSearch, Learned, Nearest, QuantConfig
from cat_core.io import CheckpointError, load_quantized, save_quantized
from cat_core.nn import QuantLinear, replace_linears
from cat_core.stream import MemoryBudget, lazy_weights, load_lazy, plan_memory, plan_model

VOCAB = 300


def _save_source(path, *, tied: bool, dtype=torch.bfloat16, layers: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=192, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # norms away from one, so that a wrong fold shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn(p.shape))
    model.to(dtype).save_pretrained(path)
    return path


def _ids(n: int = 6, seqlen: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


CONFIGS = {
    "learned": QuantConfig(bits=4, group_size=64, rounding=Learned(iters=3, samples=4, batch=2)),
    "gptq-3bit-sym": QuantConfig(bits=3, group_size=32, sym=True, rounding=GPTQ()),
    "nearest-coarse-clip": QuantConfig(bits=4, group_size=32, clip=ClipSearch(n_grid=7, stride=3),
                                       rounding=Nearest()),
}


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_block_by_block_gives_the_in_memory_checkpoint(tmp_path, tied, name):
    """Quantizing a lazily read model (every unit back on meta after each use, activations on
    disk) writes the same tensors, bit for bit, as quantizing the model loaded whole."""
    src = _save_source(tmp_path / "src", tied=tied)
    config, ids = CONFIGS[name], _ids()

    whole = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    res = quantize(whole, None, config, calib=ids, progress=False)
    replace_linears(whole, res.tensors)
    save_quantized(whole, tmp_path / "whole", dtype=torch.bfloat16, progress=False)

    lazy_model = load_lazy(src, keep_bytes=0)
    lazy = lazy_weights(lazy_model)
    lazy.spill_activations = True
    lazy.write_bytes = 100_000  # several shards, each read when written
    res_lazy = quantize(lazy_model, None, config, calib=ids, progress=False)
    assert res_lazy.tensors == {}  # packed block by block instead
    assert sum(isinstance(m, QuantLinear) for m in lazy_model.modules()) == len(res.tensors)
    assert all(p.device.type == "meta" for p in lazy_model.parameters())  # nothing left in memory
    save_quantized(lazy_model, tmp_path / "lazy", dtype=torch.bfloat16, progress=False)
    assert len(list((tmp_path / "lazy").glob("*.safetensors"))) > 1

    a, b = _tensors(tmp_path / "whole"), _tensors(tmp_path / "lazy")
    assert sorted(a) == sorted(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    ca = json.loads((tmp_path / "whole" / "config.json").read_text())
    cb = json.loads((tmp_path / "lazy" / "config.json").read_text())
    assert ca == cb

    # the written checkpoint runs as the lazily read quantized model does (up to its bf16 norms)
    loaded, _ = load_quantized(tmp_path / "lazy")
    with torch.no_grad():
        ref = lazy_model(ids[:2]).logits  # the lazily read quantized model runs from its spill
        torch.testing.assert_close(loaded.float()(ids[:2]).logits, ref, rtol=0, atol=0.05)
    lazy.close()


@pytest.mark.parametrize("keep", [0, 10**6, 10**9])
def test_lazy_forward_equals_the_whole_model_and_stays_in_budget(tmp_path, keep):
    src = _save_source(tmp_path / "src", tied=True, layers=4)
    whole = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    model = load_lazy(src, keep_bytes=keep)
    lazy = lazy_weights(model)
    unit = max(lazy.unit_bytes(m) for _, m in lazy.units())
    seen = []
    for _, m in lazy.units():
        m.register_forward_hook(lambda *_: seen.append(lazy.resident_bytes()))
    ids = _ids(2, 16)
    with torch.no_grad():
        for _ in range(2):
            assert torch.equal(model(ids).logits, whole(ids).logits)
            out = model.generate(ids[:, :4], max_new_tokens=5, do_sample=False)
            assert torch.equal(out, whole.generate(ids[:, :4], max_new_tokens=5, do_sample=False))
    # one unit in use at a time, plus what the budget keeps
    assert max(seen) <= keep + unit
    if keep == 0:
        assert all(p.device.type == "meta" for p in model.parameters())
    if keep >= 10**9:
        assert lazy.resident_bytes() == sum(lazy.unit_bytes(m) for _, m in lazy.units())
    lazy.close()


def test_freed_memory_is_handed_back_above_the_set_rss(tmp_path, monkeypatch):
    """Above ``trim_above`` every unit let go hands the heap's free pages back; AWQ does it after
    each block it changed whatever the setting; below it nothing is trimmed."""
    from cat_core.stream import _lazy

    calls = []
    monkeypatch.setattr(_lazy, "_give_back_freed_memory", lambda: calls.append(1))
    src = _save_source(tmp_path / "src", tied=True, layers=3)
    model = load_lazy(src)
    lazy = lazy_weights(model)
    ids = _ids(2, 8)
    with torch.no_grad():
        model(ids)  # trim_above None: never on a plain forward
        assert calls == []
        lazy.trim_above = 1 << 50
        model(ids)
        assert calls == []
        lazy.trim_above = 0
        model(ids)
    assert len(calls) == len(list(lazy.units())) - 1  # all but the embedding, which looks rows up
    calls.clear()
    lazy.trim_above = None
    quantize(model, None, QuantConfig(bits=4, group_size=32, rounding=Nearest()), calib=_ids(2, 8), progress=False)
    assert len(calls) == 3  # one per block
    lazy.close()


def test_budget_that_cannot_hold_one_block_fails_before_any_work(tmp_path):
    src = _save_source(tmp_path / "src", tied=False)
    model = load_lazy(src)
    with pytest.raises(ValueError, match=r"one decoder block needs about .* GB .* more than the budget's 0\.00 GB"):
        plan_model(model, MemoryBudget(cpu=1000), calib_tokens=64)
    plan = plan_model(model, MemoryBudget(cpu=4 * 10**9), calib_tokens=64)
    assert plan.keep_bytes > 0 and not plan.spill_activations
    # activations that do not fit beside the work go to disk
    tight = plan_memory(MemoryBudget(cpu=2 * 10**9), block_bytes=10**8, largest_other=10**8,
                        activation_bytes=10**9)
    assert tight.spill_activations and tight.keep_bytes > 0
    with pytest.raises(ValueError, match="--max-memory"):
        MemoryBudget.parse("six gigabytes")
    assert MemoryBudget.parse("cpu=6GB").cpu == 6 * 10**9
    assert MemoryBudget.parse("1.5GiB").cpu == int(1.5 * 2**30)
    lazy_weights(model).close()


def test_plan_counts_the_transients_of_a_forward_over_a_chunk(tmp_path):
    """A block's forward over a chunk holds its MLP intermediates: the plan keeps less resident
    as the forwarded tokens grow (up to AWQ's chunk bound), and a budget that holds the search
    but not the forward fails before any work, naming the forward."""
    from cat_core.awq._batches import CHUNK_TOKENS, _chunks

    src = _save_source(tmp_path / "src", tied=False)
    model = load_lazy(src)
    budget = MemoryBudget(cpu=4 * 10**9)
    small, big = (plan_model(model, budget, calib_tokens=t) for t in (64, 10**6))
    cfg = model.config
    per_token = (3 * cfg.intermediate_size + 6 * cfg.hidden_size) * 4
    assert small.keep_bytes - big.keep_bytes == (CHUNK_TOKENS - 64) * per_token + (10**6 - 64) * cfg.hidden_size * 4 * 2
    assert plan_model(model, budget, calib_tokens=10**6, forward_tokens=64).keep_bytes > big.keep_bytes
    lazy_weights(model).close()
    fits = plan_memory(MemoryBudget(cpu=2 * 10**9), block_bytes=10**8, largest_other=0, activation_bytes=0)
    assert fits.keep_bytes > 0
    with pytest.raises(ValueError, match=r"0\.70 GB for a forward over the calibration chunk"):
        plan_memory(MemoryBudget(cpu=2 * 10**9), block_bytes=10**8, largest_other=0, activation_bytes=0,
                    forward_bytes=7 * 10**8)
    # chunks are bounded in tokens, unchanged up to 256 tokens a sequence
    for seqlen in (128, 256, 512, 1000, 5000):
        sl = _chunks(40, 3, seqlen)
        assert sl[0] == slice(0, 3) and sl[-1].stop == 40
        assert all(b.start == a.stop for a, b in zip(sl, sl[1:]))
        sizes = {s.stop - s.start for s in sl[1:-1]}
        assert sizes == {max(1, min(16, CHUNK_TOKENS // seqlen))}


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_embedding_looks_up_rows_without_reading_the_table(tmp_path, tied):
    """A plain embedding that is not in memory reads only its tokens' rows from the file, gives
    the whole table's lookup bit for bit, and stays on meta; a tied head still reads it whole."""
    src = _save_source(tmp_path / "src", tied=tied)
    whole = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    model = load_lazy(src, keep_bytes=0)
    lazy = lazy_weights(model)
    embed = model.get_input_embeddings()
    read = []
    real_read = lazy.files.read
    lazy.files.read = lambda name: read.append(name) or real_read(name)
    ids = torch.cat([_ids(3, 17, seed=4), torch.tensor([[0, VOCAB - 1] * 8 + [5]])])  # both ends, repeats
    with torch.no_grad():
        assert torch.equal(embed(ids), whole.get_input_embeddings()(ids))
        assert "model.embed_tokens.weight" not in read and embed.weight.device.type == "meta"
        assert torch.equal(model(ids).logits, whole(ids).logits)
    assert ("model.embed_tokens.weight" in read) == tied  # the tied head needs every row
    with pytest.raises(IndexError, match=rf"model\.embed_tokens\.weight.*\[0, {VOCAB}\)"):
        embed(torch.tensor([[3, VOCAB]]))
    lazy.close()


def test_missing_or_truncated_weights_are_named(tmp_path):
    src = _save_source(tmp_path / "src", tied=False)
    f = src / "model.safetensors"
    tensors = load_file(f)
    del tensors["model.layers.1.mlp.down_proj.weight"]
    from safetensors.torch import save_file

    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        load_lazy(src)

    src2 = _save_source(tmp_path / "src2", tied=False)
    data = (src2 / "model.safetensors").read_bytes()
    (src2 / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_lazy(src2)


def test_nonfinite_weight_of_a_lazily_read_block_is_named(tmp_path):
    src = _save_source(tmp_path / "src", tied=False)
    tensors = load_file(src / "model.safetensors")
    tensors["model.layers.2.self_attn.v_proj.weight"][3, 5] = float("nan")
    from safetensors.torch import save_file

    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    model = load_lazy(src)
    from cat_core.awq import AWQError

    with pytest.raises(AWQError, match=r"model\.layers\.2\.self_attn\.v_proj\.weight"):
        quantize(model, None, QuantConfig(bits=4, group_size=64, rounding=Nearest()), calib=_ids(), progress=False)
    lazy_weights(model).close()


def test_disk_list_behaves_as_a_list(tmp_path):
    from cat_core.stream._disk_list import DiskList

    items = [torch.randn(i + 1, 3) for i in range(4)]
    dl = DiskList(items, tmp_path, torch.device("cpu"))
    assert len(dl) == 4 and all(torch.equal(a, b) for a, b in zip(dl, items))
    dl[1] = torch.zeros(7, 3)
    assert dl.shape(1) == (7, 3) and torch.equal(dl[1], torch.zeros(7, 3))
    del dl[2:]
    assert len(dl) == 2 and len(list(tmp_path.rglob("*.pt"))) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)")
def test_cuda_search_holds_one_block_at_a_time(tmp_path):
    """On a GPU, a model bigger than the bound is quantized with at most the embedding, one block
    under search and the activations on the device (tools/gpu_check.sh STEPS=stream)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2000, hidden_size=512, intermediate_size=1536, num_hidden_layers=12,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256,
                      tie_word_embeddings=False)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(tmp_path / "src")
    model = load_lazy(tmp_path / "src", device="cuda", keep_bytes=0)
    lazy = lazy_weights(model)
    sizes = {name: lazy.unit_bytes(m) for name, m in lazy.units()}
    block = max(v for k, v in sizes.items() if ".layers." in k)
    ids = torch.randint(0, 2000, (8, 64), generator=torch.Generator().manual_seed(0))
    acts = 8 * 64 * 512 * 4
    from cat_core.stream._budget import WORK_FACTOR

    bound = max(sizes.values()) + WORK_FACTOR * block + 4 * acts + 32 * 2**20
    assert sum(sizes.values()) > 2 * bound  # the model itself would not fit the bound
    torch.cuda.reset_peak_memory_stats()
    quantize(model, None, QuantConfig(bits=4, group_size=128, rounding=GPTQ()), calib=ids, device="cuda",
             progress=False)
    peak = torch.cuda.max_memory_allocated()
    assert peak <= bound, f"peak {peak / 1e6:.0f} MB over the bound {bound / 1e6:.0f} MB"
    assert all(p.device.type == "meta" for p in model.parameters())
    lazy.close()


@pytest.mark.parametrize("keep", [0, 10**9], ids=["nothing-kept", "all-kept"])
@pytest.mark.parametrize("fmt", ["awq", "gptq"])
def test_exports_of_a_lazily_read_model_equal_the_in_memory_exports(tmp_path, fmt, keep):
    from cat_core.io import export_awq, export_gptq

    export = {"awq": export_awq, "gptq": export_gptq}[fmt]
    src = _save_source(tmp_path / "src", tied=False, layers=2)
    config = QuantConfig(bits=4, group_size=64, rounding=Nearest())
    whole = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    replace_linears(whole, quantize(whole, None, config, calib=_ids(), progress=False).tensors)
    export(whole, tmp_path / "whole", progress=False, dtype=torch.float16)
    lazy_model = load_lazy(src, keep_bytes=keep)
    quantize(lazy_model, None, config, calib=_ids(), progress=False)
    with torch.no_grad():
        lazy_model(_ids()[:1])  # with room, the packed blocks are resident when the export reads them
    export(lazy_model, tmp_path / "lazy", progress=False, dtype=torch.float16)
    a, b = _tensors(tmp_path / "whole"), _tensors(tmp_path / "lazy")
    assert sorted(a) == sorted(b) and [k for k in a if not torch.equal(a[k], b[k])] == []
    lazy_weights(lazy_model).close()
