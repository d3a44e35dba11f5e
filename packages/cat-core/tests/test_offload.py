"""AWQ, replace_linears and save_quantized on models that accelerate offloaded to CPU RAM or disk:
only the block being searched is made real; the results are bit-identical to the in-memory run."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")
sys.path.insert(0, str(Path(__file__).parent))
from _tiny_models import tiny_model  # noqa: E402
from accelerate import cpu_offload, disk_offload, dispatch_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import cat_core  # noqa: E402
from cat_core.config import QuantConfig  # noqa: E402
from cat_core.io import save_quantized  # noqa: E402
from cat_core.nn import replace_linears  # noqa: E402

CFG = QuantConfig(bits=4, group_size=-1)


def _offload(model, kind: str, tmp: Path) -> None:
    if kind == "disk":
        disk_offload(model, str(tmp / "offload"), execution_device="cpu")
    elif kind == "cpu":
        cpu_offload(model, execution_device="cpu")
    else:  # a device map mixing resident, RAM-offloaded and disk-offloaded blocks
        dm = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
              "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
        dispatch_model(model, device_map=dm, offload_dir=str(tmp / "offload"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tiny_model("llama")
    ids = torch.randint(0, base.config.vocab_size, (4, 48), generator=torch.Generator().manual_seed(0))
    res = cat_core.quantize(copy.deepcopy(base), None, CFG, calib=ids, progress=False)
    with torch.no_grad():
        fake = res.model(ids[:1]).logits
    replace_linears(res.model, res.tensors)
    out = tmp_path_factory.mktemp("ref") / "q"
    save_quantized(res.model, out, progress=False)
    return base, ids, res, fake, load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("kind", ["disk", "cpu", "device_map"])
def test_offloaded_model_quantizes_saves_like_in_memory(reference, kind, tmp_path):
    base, ids, ref, ref_fake_logits, ref_files = reference
    model = copy.deepcopy(base)
    _offload(model, kind, tmp_path)
    assert any(p.device.type == "meta" for p in model.parameters())
    res = cat_core.quantize(model, None, CFG, calib=ids, progress=False)
    assert sorted(res.tensors) == sorted(ref.tensors)
    for name, qt in res.tensors.items():
        r = ref.tensors[name]
        assert torch.equal(qt.codes, r.codes) and torch.equal(qt.scales, r.scales), name
        assert torch.equal(qt.zeros, r.zeros), name
    with torch.no_grad():  # the rewritten (fake-quantized) weights went back to the offload store
        assert torch.equal(model(ids[:1]).logits, ref_fake_logits)
    replace_linears(model, res.tensors)
    out = tmp_path / "q"
    save_quantized(model, out, progress=False)
    files = load_file(str(out / "model.safetensors"))
    assert sorted(files) == sorted(ref_files)
    for k, t in files.items():
        assert torch.equal(t, ref_files[k]), k
