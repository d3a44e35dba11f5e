"""A list of tensors kept on disk, read back one at a time: the calibration activations between
blocks when the memory budget has no room for them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, MutableSequence
from pathlib import Path

import torch

__all__ = ["DiskList"]


class DiskList(MutableSequence):
    """Each item is a file under ``folder``; indexing reads it (to ``device``), assigning writes it."""

    def __init__(self, items: Iterable[torch.Tensor], folder: Path, device: torch.device) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="acts-", dir=folder))
        self._device = device
        self._files: list[Path] = []
        self._shapes: list[tuple[int, ...]] = []
        self._n = 0
        for t in items:
            self.append(t)

    def _write(self, t: torch.Tensor) -> Path:
        self._n += 1
        path = self._folder / f"{self._n:06d}.pt"
        torch.save(t.detach().to("cpu").contiguous(), path)
        return path

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return torch.load(self._files[i], map_location=self._device, weights_only=True)

    def __setitem__(self, i, value) -> None:  # type: ignore[override]
        if isinstance(i, slice):
            raise TypeError("DiskList: slice assignment is not supported")
        old = self._files[i]
        self._files[i] = self._write(value)
        self._shapes[i] = tuple(value.shape)
        os.unlink(old)

    def __delitem__(self, i) -> None:  # type: ignore[override]
        idx = range(*i.indices(len(self))) if isinstance(i, slice) else [i % len(self)]
        for j in sorted(idx, reverse=True):
            os.unlink(self._files[j])
            del self._files[j]
            del self._shapes[j]

    def insert(self, i: int, value: torch.Tensor) -> None:
        self._files.insert(i, self._write(value))
        self._shapes.insert(i, tuple(value.shape))

    def shape(self, i: int) -> tuple[int, ...]:
        """The shape of item ``i`` without reading it."""
        return self._shapes[i]
