"""Calibration samples: ``[n_samples, seqlen]`` token ids from text, files, a dataset or the model.

Documents are joined with ``"\\n\\n"``, tokenized once and cut into non-overlapping windows; a
seeded permutation picks which windows, so the samples depend only on the inputs and the seed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from cat_core.config import CalibConfig
from cat_core.decode import cached_forward
from cat_core.network import reachable

__all__ = ["CalibError", "calibration_samples", "self_samples"]

_LOCAL_EXT = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
# Characters tokenized per needed token before trying more text: large enough that the windows are
# drawn from well beyond the first documents, small enough that a huge dataset is not tokenized whole.
_CHARS_PER_TOKEN_BUDGET = 32
_NETWORK_PROBE_S = 3.0
# Sampling reads every weight once per step whatever the batch, so wide batches are nearly free
# (SmolLM2 on 1 CPU core: 14 ms per sequence-step at 16, 6.8 at 64); the KV cache bounds them.
_SELF_MAX_BATCH = 64
_SELF_FALLBACK_BATCH = 16
_SELF_KV_BUDGET = 1 << 31  # bytes
_SELF_TOP_K = 50


class CalibError(ValueError):
    """Calibration data cannot be produced (missing, unreachable or too short)."""


def calibration_samples(
    calib: CalibConfig | str | os.PathLike | Sequence[str] | Any,
    tokenizer: Any = None,
    model: torch.nn.Module | None = None,
    *,
    progress: bool = False,
) -> torch.Tensor:
    """Token ids ``[n_samples, seqlen]`` (int64, CPU) for calibration.

    ``calib`` is a :class:`CalibConfig`, or anything accepted as its ``source`` (then the default
    counts apply), or an already tokenized ``[n, seqlen]`` integer tensor (returned as is).
    ``model`` is only needed for ``source="self"``, whose sampling (minutes on a CPU) shows a
    progress bar with ``progress``.
    """
    if isinstance(calib, torch.Tensor):
        if calib.dim() != 2 or calib.is_floating_point() or calib.numel() == 0:
            raise CalibError(f"token ids must be a non-empty 2-D integer tensor, got {tuple(calib.shape)} {calib.dtype}")
        return calib.long().cpu()
    cfg = calib if isinstance(calib, CalibConfig) else CalibConfig(source=calib)
    if isinstance(cfg.source, str) and cfg.source == "self":
        if model is None or tokenizer is None:
            raise CalibError("source='self' samples text from the model: pass model= and tokenizer=")
        return _sample_from_model(model, tokenizer, cfg, progress)
    if tokenizer is None:
        raise CalibError(f"a tokenizer is needed to turn {_describe(cfg.source)} into token ids")
    docs, label = _documents(cfg)
    return _windows(docs, label, tokenizer, cfg)


# ----------------------------------------------------------------------------- sources


def _describe(source: Any) -> str:
    if isinstance(source, tuple):
        return f"a list of {len(source)} strings"
    if isinstance(source, str):
        return repr(source)
    return type(source).__name__


def _documents(cfg: CalibConfig) -> tuple[Iterable[str], str]:
    src = cfg.source
    if isinstance(src, tuple):
        return src, f"a list of {len(src)} strings"
    if isinstance(src, str):
        path = Path(src).expanduser()
        if path.exists():
            return _local_documents(path, cfg), f"local data {str(path)!r}"
        if path.suffix.lower() in _LOCAL_EXT or os.sep in src and not _looks_like_hub_id(src):
            raise CalibError(f"calibration file {src!r} does not exist")
        return _hub_documents(src, cfg), f"dataset {src!r}"
    if hasattr(src, "column_names") and hasattr(src, "__getitem__"):
        return _column(src, cfg.text_column, type(src).__name__), f"a {type(src).__name__}"
    raise CalibError(
        f"cannot read calibration data from {type(src).__name__}: give a dataset name, a path, "
        f"a list of strings, a datasets.Dataset or 'self'"
    )


def _looks_like_hub_id(src: str) -> bool:
    parts = src.split("/")
    return len(parts) == 2 and all(parts) and not src.startswith((".", "/", "~"))


def _local_documents(path: Path, cfg: CalibConfig) -> Iterable[str]:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in _LOCAL_EXT) if path.is_dir() else [path]
    if not files:
        raise CalibError(f"no calibration files ({', '.join(sorted(_LOCAL_EXT))}) under {str(path)!r}")
    kinds = {_LOCAL_EXT.get(p.suffix.lower()) for p in files}
    if None in kinds:
        raise CalibError(
            f"unsupported calibration file {str(files[0])!r}: expected one of {sorted(_LOCAL_EXT)}"
        )
    if len(kinds) > 1:
        raise CalibError(f"mixed file kinds under {str(path)!r}: {sorted(kinds)}; use one kind")
    kind = kinds.pop()
    if kind == "text":
        # Plain text needs no datasets machinery: one document per non-empty line.
        return _text_lines(files)
    try:
        import datasets
    except ImportError as e:
        raise CalibError(f"reading {kind} files needs the 'datasets' package (pip install datasets)") from e
    try:
        ds = datasets.load_dataset(kind, data_files=[str(p) for p in files], split="train")
    except Exception as e:
        raise CalibError(f"could not read {str(path)!r} as {kind}: {e}") from e
    return _column(ds, cfg.text_column, str(path))


def _text_lines(files: list[Path]) -> Iterator[str]:
    for p in files:
        with open(p, encoding="utf-8") as f:
            try:
                for line in f:
                    line = line.rstrip("\n")
                    if line.strip():
                        yield line
            except UnicodeDecodeError as e:
                raise CalibError(f"calibration file {str(p)!r} is not UTF-8 text ({e.reason})") from None


def _column(ds: Any, column: str, label: str) -> Iterable[str]:
    names = list(getattr(ds, "column_names", []) or [])
    if column not in names:
        raise CalibError(f"{label} has no column {column!r}; its columns are {names}")
    return (t for t in ds[column] if isinstance(t, str) and t.strip())


def _network_reachable(url: str) -> bool:
    from urllib.parse import urlparse

    u = urlparse(url)
    host, port = u.hostname or "huggingface.co", u.port or (443 if u.scheme == "https" else 80)
    return reachable(host, port, _NETWORK_PROBE_S)


def _hub_documents(name: str, cfg: CalibConfig) -> Iterable[str]:
    try:
        import datasets
        from huggingface_hub import constants
    except ImportError as e:
        raise CalibError(f"loading dataset {name!r} needs the 'datasets' package (pip install datasets)") from e
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    if not offline and not _network_reachable(constants.ENDPOINT):
        raise CalibError(
            f"cannot reach {constants.ENDPOINT} to load calibration dataset {name!r} (offline?). "
            f"Give local files (.txt/.json/.jsonl/.csv/.parquet), a list of strings, or "
            f"source='self'; or set HF_HUB_OFFLINE=1 to use a cached copy."
        )
    try:
        ds = datasets.load_dataset(name, cfg.subset, split=cfg.split)
    except Exception as e:
        hint = " (offline mode: only cached datasets load)" if offline else ""
        raise CalibError(f"could not load calibration dataset {name!r}{hint}: {e}") from e
    return _column(ds, cfg.text_column, f"dataset {name!r}")


# ----------------------------------------------------------------------------- tokens


def _encode(tokenizer: Any, text: str) -> list[int]:
    enc = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)
    ids = enc["input_ids"]
    return list(ids)


def _windows(docs: Iterable[str], label: str, tokenizer: Any, cfg: CalibConfig) -> torch.Tensor:
    need = cfg.n_samples * cfg.seqlen
    it = iter(docs)
    pieces: list[str] = []
    n_chars, budget, exhausted = 0, need * _CHARS_PER_TOKEN_BUDGET, False
    ids: list[int] = []
    while True:
        while n_chars < budget:
            doc = next(it, None)
            if doc is None:
                exhausted = True
                break
            pieces.append(doc)
            n_chars += len(doc) + 2
        if not pieces:
            raise CalibError(f"calibration source {label} holds no text")
        ids = _encode(tokenizer, "\n\n".join(pieces))
        if len(ids) >= need or exhausted:
            break
        budget *= 2
    n_windows = len(ids) // cfg.seqlen
    if n_windows < cfg.n_samples:
        raise CalibError(
            f"calibration source {label} is too short: {len(ids)} tokens available, "
            f"{need} needed ({cfg.n_samples} samples x {cfg.seqlen} tokens); "
            f"give more text or lower n_samples/seqlen"
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    pick = torch.randperm(n_windows, generator=gen)[: cfg.n_samples]
    flat = torch.tensor(ids[: n_windows * cfg.seqlen], dtype=torch.long).view(n_windows, cfg.seqlen)
    return flat[pick].contiguous()


@torch.no_grad()
def self_samples(model: torch.nn.Module, tokenizer: Any, configs: Sequence[CalibConfig], *,
                 progress: bool = False) -> list[torch.Tensor]:
    """``calibration_samples(c, tokenizer, model)`` of each ``source="self"`` config in ``configs``,
    sampled in ONE pass when they all fit one batch (at the longest ``seqlen``).

    Each decode step reads every weight once whatever the batch (memory-bound on a CPU), so a
    second short sampling run, e.g. a quality reference beside the calibration text, costs nearly
    its whole length in steps when run alone and almost nothing inside the other's batch. Rows
    are independent and each config keeps its own generator, so the token ids are those of
    separate runs (up to the float rounding of a wider batch, which can only flip a draw on an
    exact tie). Configs that do not fit one batch together are sampled one after the other.
    """
    configs = list(configs)
    for c in configs:
        if not (isinstance(c.source, str) and c.source == "self"):
            raise CalibError(f"self_samples takes source='self' configs only, got {_describe(c.source)}")
    if not configs:
        return []
    emb = model.get_input_embeddings()
    longest = max(c.seqlen for c in configs)
    if len(configs) == 1 or sum(c.n_samples for c in configs) > _self_batch(model, longest, emb.weight.dtype):
        return [_sample_from_model(model, tokenizer, c, progress) for c in configs]
    from tqdm.auto import tqdm

    what = " + ".join(f"{c.n_samples} x {c.seqlen}" for c in configs)
    bar = tqdm(total=max(longest - 1, 0), unit="step", disable=not progress,
               desc=f"sampling {what} tokens (one batch of {sum(c.n_samples for c in configs)})")
    groups = [(c.n_samples, c.seqlen, torch.Generator().manual_seed(c.seed)) for c in configs]
    try:
        return _sample_batch(model, _start_token(tokenizer), groups, bar)
    finally:
        bar.close()


def _start_token(tokenizer: Any) -> int:
    return int(next(
        (t for t in (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None))
         if t is not None),
        0,
    ))


def _sample_from_model(model: torch.nn.Module, tokenizer: Any, cfg: CalibConfig, progress: bool = False) -> torch.Tensor:
    """Top-k sampled sequences, each starting at BOS (or EOS), drawn with a CPU generator.

    Sampling happens on the CPU so the same seed gives the same text on any device.
    """
    emb = model.get_input_embeddings()
    gen = torch.Generator().manual_seed(cfg.seed)
    batch = min(cfg.n_samples, _self_batch(model, cfg.seqlen, emb.weight.dtype))
    out_rows: list[torch.Tensor] = []
    from tqdm.auto import tqdm

    steps = math.ceil(cfg.n_samples / batch) * max(cfg.seqlen - 1, 0)
    bar = tqdm(total=steps, desc=f"sampling {cfg.n_samples} x {cfg.seqlen} tokens (batches of {batch})",
               unit="step", disable=not progress)
    start = _start_token(tokenizer)
    try:
        for b0 in range(0, cfg.n_samples, batch):
            b = min(batch, cfg.n_samples - b0)
            out_rows += _sample_batch(model, start, [(b, cfg.seqlen, gen)], bar)
    finally:
        bar.close()
    return torch.cat(out_rows, 0)


@torch.no_grad()
def _sample_batch(model: torch.nn.Module, start: int, groups: list[tuple[int, int, torch.Generator]],
                  bar: Any) -> list[torch.Tensor]:
    """One batch made of ``groups`` of (rows, seqlen, generator): all rows run to the longest
    seqlen; each group draws from its own generator only while it is shorter than its seqlen (a
    finished group's rows are fed their top token, which nothing reads), and comes back cut to
    its length, ``[rows, seqlen]``."""
    from cat_core._offload import execution_device

    device = execution_device(model.get_input_embeddings())  # its weight may be on meta (read lazily)
    rows = sum(n for n, _, _ in groups)
    steps = max(seqlen for _, seqlen, _ in groups) - 1
    was_training = model.training
    model.eval()
    cols = [torch.full((rows, 1), start, dtype=torch.long)]
    past = None
    try:
        for t in range(steps):
            logits, past = cached_forward(model, cols[-1].to(device), past)
            logits = logits[:, -1, :].float().cpu()
            k = min(_SELF_TOP_K, logits.shape[-1])
            top, idx = logits.topk(k, dim=-1)
            probs = torch.softmax(top, dim=-1)
            picks, r0 = [], 0
            for n, seqlen, gen in groups:
                if t < seqlen - 1:
                    choice = torch.multinomial(probs[r0:r0 + n], 1, generator=gen)
                else:
                    choice = torch.zeros((n, 1), dtype=torch.long)
                picks.append(idx[r0:r0 + n].gather(-1, choice))
                r0 += n
            cols.append(torch.cat(picks, 0))
            bar.update(1)
    finally:
        model.train(was_training)
    seq = torch.cat(cols, dim=1)
    out, r0 = [], 0
    for n, seqlen, _ in groups:
        out.append(seq[r0:r0 + n, :seqlen].contiguous())
        r0 += n
    return out


def _self_batch(model: torch.nn.Module, seqlen: int, dtype: torch.dtype) -> int:
    """Sequences sampled at once: as many as keep the KV cache of ``seqlen`` tokens within
    ``_SELF_KV_BUDGET``, estimated from the config; a fixed 16 where the config does not say."""
    cfg = getattr(model, "config", None)
    try:
        cfg = cfg.get_text_config()
        layers = int(cfg.num_hidden_layers)
        heads = int(cfg.num_attention_heads)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return _SELF_FALLBACK_BATCH
    per_seq = 2 * layers * kv_heads * head_dim * seqlen * torch.empty((), dtype=dtype).element_size()
    return max(1, min(_SELF_MAX_BATCH, _SELF_KV_BUDGET // max(per_seq, 1)))
