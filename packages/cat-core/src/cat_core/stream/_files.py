"""The tensors of a safetensors checkpoint (one file or shards plus an index), read one at a time
with plain file reads: nothing is memory-mapped, so a tensor costs memory only while it is held."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from cat_core.io._errors import CheckpointError
from cat_core.io._shards import _ST_DTYPES, INDEX_FILE, SINGLE_FILE

__all__ = ["TensorFiles"]


class TensorFiles:
    """``{name: (file, shape, dtype, byte range)}`` of every tensor under ``folder`` (or of the
    given safetensors files), from the headers alone."""

    def __init__(self, folder: str | os.PathLike | None = None, files: list[Path] | None = None) -> None:
        if files is None:
            files = _checkpoint_files(Path(folder))
        self._where: dict[str, tuple[Path, tuple[int, ...], torch.dtype, int, int]] = {}
        for f in files:
            self.add(f)

    def add(self, path: Path) -> None:
        """Index one more safetensors file (a later file's tensor of the same name wins)."""
        for name, entry in _header(path).items():
            self._where[name] = entry

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def names(self) -> list[str]:
        return list(self._where)

    def spec(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        _, shape, dtype, _, _ = self._where[name]
        return shape, dtype

    def nbytes(self, name: str) -> int:
        _, _, _, start, end = self._where[name]
        return end - start

    def read(self, name: str) -> torch.Tensor:
        """The tensor ``name`` as stored (a fresh CPU tensor)."""
        path, shape, dtype, start, end = self._where[name]
        raw = torch.empty(end - start, dtype=torch.uint8)
        with open(path, "rb") as f:
            _read_exact(f, start, memoryview(raw.numpy()), path, name)
        return raw.view(dtype).reshape(shape)

    def read_rows(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``rows`` (distinct, ascending int64 indices into the first dimension) of the tensor
        ``name`` as stored, read one run of consecutive rows at a time: an embedding lookup
        needs only the rows of the tokens it looks up."""
        path, shape, dtype, start, end = self._where[name]
        if not shape:
            raise ValueError(f"{name}: a scalar has no rows")
        rows = rows.to("cpu", torch.int64)
        if rows.numel() and (int(rows[0]) < 0 or int(rows[-1]) >= shape[0]):
            raise IndexError(f"{name}: row index out of range [0, {shape[0]})")
        row_bytes = (end - start) // shape[0] if shape[0] else 0
        out = torch.empty((rows.numel(), *shape[1:]), dtype=dtype)
        buf = memoryview(out.view(-1).view(torch.uint8).numpy()) if out.numel() else None
        ids = rows.tolist()
        with open(path, "rb") as f:
            i = 0
            while i < len(ids):
                j = i + 1
                while j < len(ids) and ids[j] == ids[j - 1] + 1:
                    j += 1
                _read_exact(f, start + ids[i] * row_bytes, buf[i * row_bytes:j * row_bytes], path, name)
                i = j
        return out


def _read_exact(f, offset: int, buf: memoryview, path: Path, name: str) -> None:
    """Fill ``buf`` from ``offset`` of the open file ``f``; a short read means a truncated file."""
    f.seek(offset)
    got = f.readinto(buf)
    if got != len(buf):
        raise CheckpointError(f"{path}: tensor {name!r} is cut short ({got} of {len(buf)} bytes): "
                              "the file is truncated")


def _checkpoint_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from e
        files = [folder / f for f in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: shard listed in {INDEX_FILE} is missing")
        return files
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise CheckpointError(f"{folder}: no safetensors weights ({SINGLE_FILE} or {INDEX_FILE}); only "
                              "safetensors checkpoints can be read block by block")
    return found


def _header(path: Path) -> dict[str, tuple[Path, tuple[int, ...], torch.dtype, int, int]]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit the file ({size} bytes)")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from e
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _ST_DTYPES[h["dtype"]]
            begin, end = (int(x) for x in h["data_offsets"])
            shape = tuple(int(s) for s in h["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: tensor {name!r} has a bad header entry ({e})") from e
        numel = 1
        for s in shape:
            numel *= s
        if end - begin != numel * dtype.itemsize or 8 + n + end > size:
            raise CheckpointError(f"{path}: tensor {name!r} does not fit the file (truncated or corrupt)")
        out[name] = (path, shape, dtype, 8 + n + begin, 8 + n + end)
    return out
