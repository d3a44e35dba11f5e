"""Building a lazily loaded model from a checkpoint folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from cat_core.io._errors import CheckpointError
from cat_core.stream._files import TensorFiles
from cat_core.stream._lazy import LazyWeights

__all__ = ["checkpoint_bytes", "load_lazy"]


def checkpoint_bytes(folder: str | os.PathLike) -> tuple[int, int]:
    """(parameters, bytes on disk) of a safetensors checkpoint, from its headers alone."""
    files = TensorFiles(folder)
    n = sum(_numel(files.spec(k)[0]) for k in files.names())
    return n, sum(files.nbytes(k) for k in files.names())


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def load_lazy(
    folder: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    keep_bytes: int = 0, spill_dir: str | os.PathLike | None = None, model_kwargs: dict | None = None,
) -> nn.Module:
    """The causal LM of the Hugging Face folder ``folder`` (config.json + safetensors), in eval
    mode, with no weight read yet (see :mod:`cat_core.stream`).

    ``dtype``: what the floating weights become when a unit is read; ``device``: where units
    compute; ``keep_bytes``: how many bytes of converted weights may stay in memory between uses
    (most recently used out first; 0 reads every unit again each time it runs). ``spill_dir``:
    where changed units are written (default: a temporary folder, removed by
    ``lazy_weights(model).close()``). Raises :class:`~cat_core.io.CheckpointError` when a weight
    the model needs is missing from the files or has another shape."""
    from cat_core.graph import find_blocks
    from cat_core.io._skeleton import skeleton

    folder = Path(folder)
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: not readable ({e})") from e
    files = TensorFiles(folder)
    model, _ = skeleton(cfg, model_kwargs, dtype=dtype)
    _check_names(model, files, folder)
    model.config._name_or_path = str(folder)  # as from_pretrained records it
    try:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    except OSError:
        pass  # no generation_config.json: keep the one from_config made
    _, _, blocks = find_blocks(model)
    LazyWeights(model, files, list(blocks), dtype=dtype, device=torch.device(device), keep_bytes=keep_bytes,
                spill_dir=None if spill_dir is None else Path(spill_dir))
    return model.eval()


def _check_names(model: nn.Module, files: TensorFiles, folder: Path) -> None:
    """Every weight of the model is in the files with its shape (tied ones under any of their names)."""
    seen: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if t is not None and t.device.type == "meta":
            seen.setdefault(id(t), []).append(name)
    shapes = {id(t): tuple(t.shape) for t in model.state_dict(keep_vars=True).values() if t is not None}
    missing = []
    for tid, names in seen.items():
        found = next((n for n in names if n in files), None)
        if found is None:
            missing.append(names[0])
        elif tuple(files.spec(found)[0]) != shapes[tid]:
            raise CheckpointError(f"{folder}: tensor {found!r} has shape {list(files.spec(found)[0])} but the "
                                  f"model built from config.json expects {list(shapes[tid])}")
    if missing:
        head = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise CheckpointError(
            f"{folder}: {len(missing)} weight(s) of the model are not in the safetensors files under their "
            f"module names ({head}); reading block by block needs the names to match (checkpoints whose "
            "tensors transformers renames or fuses while loading need the model in memory)")
