"""The JSON side of a checkpoint: config.json, generation_config.json and the tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cat_core.io._errors import CheckpointError


def write_config(out: Path, model: nn.Module, quantization_config: dict[str, Any], tokenizer: Any,
                 dtype: torch.dtype | None = None) -> None:
    """config.json (with ``quantization_config``), generation_config.json, tokenizer files.
    ``dtype``: the dtype the unquantized tensors were stored in, when converted."""
    cfg = model.config.to_dict()
    if dtype is not None:
        name = str(dtype).removeprefix("torch.")
        cfg["dtype"] = name
        if "torch_dtype" in cfg:
            cfg["torch_dtype"] = name
    cfg["quantization_config"] = quantization_config
    cfg = portable_config(cfg, type(model).__name__)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
        _portable_tokenizer_config(out / "tokenizer_config.json")


def portable_config(cfg: dict[str, Any], model_class: str) -> dict[str, Any]:
    """``cfg`` in a form every loader reads the same way, transformers 4 and 5 and the engines:

    - ``architectures`` set (a config converted from GGUF has none, and vLLM then resolves the
      base model without its head);
    - RoPE both as transformers 5's ``rope_parameters`` and as transformers 4's ``rope_theta`` /
      ``rope_scaling`` / ``partial_rotary_factor``: a loader reading only the old keys would
      otherwise silently use the default theta (10000) and generate different text. transformers
      5 takes a non-null ``rope_scaling`` in place of ``rope_parameters``, so it carries the same
      dict (less ``rope_theta``, which it reads beside it)."""
    cfg = dict(cfg)
    if not cfg.get("architectures"):
        cfg["architectures"] = [model_class]
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:  # flat; per-layer-type dicts have no v4 form
        cfg["rope_theta"] = rope["rope_theta"]
        kind = rope.get("rope_type", rope.get("type", "default"))
        cfg["rope_scaling"] = None if kind == "default" else {k: v for k, v in rope.items() if k != "rope_theta"}
        if "partial_rotary_factor" in rope:
            cfg["partial_rotary_factor"] = rope["partial_rotary_factor"]
    return cfg


# tokenizer classes of transformers 5 that transformers 4 does not have; PreTrainedTokenizerFast
# reads the same tokenizer.json in both
_NEW_TOKENIZER_CLASSES = {"TokenizersBackend"}


def _portable_tokenizer_config(path: Path) -> None:
    if not path.is_file():
        return
    tok_cfg = json.loads(path.read_text())
    if tok_cfg.get("tokenizer_class") in _NEW_TOKENIZER_CLASSES and (path.parent / "tokenizer.json").is_file():
        tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")


def read_config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing config.json")
    try:
        return json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e


def load_generation_and_tokenizer(model: nn.Module, path: Path) -> Any:
    if (path / "generation_config.json").is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(path))
    if any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    return None
