"""safetensors shards on disk: writing them (one file or several plus an index) and reading
their headers and data back, with every defect reported as :class:`CheckpointError`."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from cat_core.io._errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as ``"5GB"``, ``"500MB"``, ``"2GiB"``."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size must be an int (bytes) or like '5GB' / '500MB', got {size!r}")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0]]
    n = int(float(m.group(1)) * base**power)
    if n <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return n


def _write_shard(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write one safetensors file. A separate function so tests can simulate a full disk."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    # safetensors creates its file 0600; give it the mode every other file of the directory gets
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask sets it, which
    another thread creating a file at that instant would see)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_shards(
    out: Path,
    tensors: dict[str, torch.Tensor],
    max_shard_size: int | str,
    metadata: dict[str, str],
    progress: bool = True,
    fetch: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> list[str]:
    """Write ``tensors`` as ``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` plus an
    index. Returns the file names. ``fetch(name, placeholder)``: the value of a tensor given as a
    ``meta`` placeholder, read when its shard is written (so one shard at a time is in memory)."""
    from tqdm.auto import tqdm

    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nb = t.numel() * t.element_size()
        if shards[-1] and size + nb > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nb
    n = len(shards)
    names = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"saving {out.name}", disable=not progress)
    weight_map = {}
    try:
        for fname, shard in zip(names, shards, strict=True):
            # safetensors wants contiguous CPU tensors that do not share storage.
            cpu = {k: (fetch(k, v).to("cpu").contiguous() if fetch is not None and v.device.type == "meta"
                       else v.detach().to("cpu").contiguous().clone()) for k, v in shard.items()}
            _write_shard(cpu, out / fname, metadata)
            weight_map.update({k: fname for k in shard})
            bar.update(sum(v.numel() * v.element_size() for v in cpu.values()))
    finally:
        bar.close()
    if n > 1:
        index = {"metadata": {"total_size": total, **metadata}, "weight_map": weight_map}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return names


def read_headers(path: Path) -> dict[str, tuple[str, list[int], torch.dtype]]:
    """{tensor name: (file name, shape, dtype)} from the safetensors headers (no data read).

    Checks the index against the files: missing shard, tensor listed in the index but not in its
    file, truncated or corrupt header (safetensors verifies the header covers the whole file)."""
    from safetensors import safe_open

    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from e
        files = sorted(set(weight_map.values()))
    elif (path / SINGLE_FILE).is_file():
        weight_map = {}
        files = [SINGLE_FILE]
    else:
        found = sorted(p.name for p in path.glob("*.safetensors"))
        hint = f" (found {found} but no {INDEX_FILE})" if found else ""
        raise CheckpointError(f"{path}: missing {SINGLE_FILE} or {INDEX_FILE}{hint}")
    out: dict[str, tuple[str, list[int], torch.dtype]] = {}
    for fname in files:
        fpath = path / fname
        if not fpath.is_file():
            raise CheckpointError(f"{fpath}: shard listed in {INDEX_FILE} is missing")
        try:
            with safe_open(str(fpath), framework="pt") as f:
                for key in f.keys():
                    sl = f.get_slice(key)
                    st_dtype = sl.get_dtype()
                    if st_dtype not in _ST_DTYPES:
                        raise CheckpointError(f"{fpath}: tensor {key!r} has unsupported dtype {st_dtype}")
                    if key in out:
                        raise CheckpointError(f"{fpath}: tensor {key!r} also appears in {out[key][0]}")
                    out[key] = (fname, list(sl.get_shape()), _ST_DTYPES[st_dtype])
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error type for bad headers
            raise CheckpointError(f"{fpath}: truncated or corrupt safetensors file ({e})") from e
    for key, fname in weight_map.items():
        if key not in out or out[key][0] != fname:
            raise CheckpointError(f"{path / fname}: tensor {key!r} listed in {INDEX_FILE} is not in that file")
    return out


def load_tensors(
    path: Path,
    headers: dict[str, tuple[str, list[int], torch.dtype]],
    device: torch.device,
    transform: Callable[[str, torch.Tensor], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Read every tensor (file by file); corrupt data sections raise :class:`CheckpointError`."""
    from safetensors import safe_open

    by_file: dict[str, list[str]] = {}
    for key, (fname, _, _) in headers.items():
        by_file.setdefault(fname, []).append(key)
    out = {}
    for fname, keys in by_file.items():
        try:
            with safe_open(str(path / fname), framework="pt", device=str(device)) as f:
                for key in keys:
                    out[key] = f.get_tensor(key)
        except Exception as e:
            raise CheckpointError(f"{path / fname}: could not read tensor data ({e})") from e
    return out
