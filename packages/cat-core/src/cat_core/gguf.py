"""Loading GGUF models through a safetensors cache.

transformers reads a GGUF by dequantizing every tensor in Python (about 30 s for a 135M model)
and refuses ``save_pretrained`` on the result. The first load therefore converts once and stores
config, tokenizer and a safetensors state dict in a cache folder keyed by the GGUF's size and
mtime; later loads rebuild the model with ``from_config`` + ``load_state_dict`` in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["GGUFCacheError", "default_cache_dir", "gguf_config", "load_gguf"]


class GGUFCacheError(RuntimeError):
    """A cached conversion does not fit its own config (delete the folder to rebuild it)."""


def default_cache_dir() -> Path:
    """``$CAT_CACHE_DIR``, else ``~/.cache/caterpillar/models``."""
    return Path(os.environ.get("CAT_CACHE_DIR") or Path.home() / ".cache" / "caterpillar" / "models")


def _cache_key(path: Path) -> str:
    st = path.stat()
    return f"{path.stem}-{st.st_size}-{st.st_mtime_ns}"


def gguf_config(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> dict:
    """The model's config without loading its weights: the cached conversion's ``config.json``
    when there is one, else the few keys the GGUF's metadata gives directly (``model_type``,
    ``max_position_embeddings``), read in a second or two."""
    path = Path(path)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / _cache_key(path) / "config.json"
    if (cached.parent / "done.json").exists() and cached.is_file():
        return json.loads(cached.read_text())
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    arch = str(fields["general.architecture"].contents())
    out: dict = {"model_type": arch}
    if f"{arch}.context_length" in fields:
        out["max_position_embeddings"] = int(fields[f"{arch}.context_length"].contents())
    return out


def _dedup_state(model: Any) -> tuple[dict, list[str]]:
    """State dict without aliases (tied embeddings): safetensors refuses shared storage."""
    seen: dict[int, str] = {}
    out, tied = {}, []
    for name, t in model.state_dict().items():
        ptr = t.data_ptr()
        if ptr in seen and t.numel() > 0:
            tied.append(name)
            continue
        seen[ptr] = name
        out[name] = t.contiguous()
    return out, tied


def load_gguf(
    path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    rebuild: bool = False,
    status: Callable[[str], None] | None = None,
) -> tuple[Any, Any]:
    """``(model in eval mode, float32, tokenizer)`` of a GGUF file, via the safetensors cache.

    ``status`` receives a short description of each stage (for a progress bar). When the cache
    cannot be written (read-only home, full disk) the freshly converted model is returned as is.

    Raises:
        ImportError: the ``gguf`` package, which transformers needs to read GGUF, is missing.
        GGUFCacheError: the cached state dict does not fit its config.
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache / _cache_key(path)
    done = folder / "done.json"
    if rebuild or not done.exists():
        if status:
            status(f"converting {path.name} (first use, ~30 s; cached in {cache})")
        t0 = time.perf_counter()
        try:
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except ImportError as e:
            raise ImportError(f"reading GGUF files needs the 'gguf' package (pip install gguf): {e}") from e
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            model.config.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            state, tied = _dedup_state(model)
            save_file(state, str(tmp / "model.safetensors"))
            (tmp / "done.json").write_text(json.dumps({"gguf": str(path), "tied": tied,
                                                       "convert_s": time.perf_counter() - t0}))
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            return model.eval(), tok
        del model
    if status:
        status(f"loading {path.name} (cached)")
    meta = json.loads(done.read_text())
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    bad = [m for m in missing if m not in meta.get("tied", [])]
    if bad or unexpected:
        raise GGUFCacheError(f"cached model {folder} does not match its config (delete it to rebuild): "
                           f"missing {bad[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    tok = AutoTokenizer.from_pretrained(folder)
    return model.eval(), tok
