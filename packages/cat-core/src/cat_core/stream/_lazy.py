"""A model whose weights stay in their files until a unit of it runs.

A *unit* is one decoder block, or one module outside the blocks that holds parameters (the
embedding, the final norm, the head). Its parameters are meta tensors until the unit is acquired
(by its forward, or by :class:`cat_core._offload.Held` while AWQ works on it): then they are read
from the checkpoint and converted to the compute dtype on the compute device. When the last holder
lets go, the unit returns to meta unless the memory budget lets it stay (most recently used
first out). A unit that was changed (AWQ folded scales into its norms and packed its linears) is
spilled to a safetensors file first, and read from there from then on.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cat_core.stream._budget import _rss
from cat_core.stream._files import TensorFiles

__all__ = ["LazyWeights", "lazy_weights"]

#: (owner module, attribute, is a parameter, full name in the model)
_Slot = tuple[nn.Module, str, bool, str]


def lazy_weights(model: nn.Module) -> LazyWeights | None:
    """The registry of a lazily loaded model (or of one of its units), else None."""
    return getattr(model, "_cat_lazy", None)


@dataclasses.dataclass
class _Unit:
    name: str
    module: nn.Module
    holders: int = 0
    resident: bool = False
    keys: set[str] = dataclasses.field(default_factory=set)  # canonical names of what it holds
    nbytes: int = 0  # in memory when resident


class LazyWeights:
    """Where every weight of ``model`` is while it is not in memory, and which units are in.

    ``files``: the checkpoint; ``dtype``/``device``: what floating weights are converted to and
    where units compute; ``keep_bytes``: how much of the model may stay resident between uses (0:
    every unit goes back to meta as soon as it is released)."""

    def __init__(self, model: nn.Module, files: TensorFiles, blocks: list[nn.Module], *, dtype: torch.dtype,
                 device: torch.device, keep_bytes: int = 0, spill_dir: Path | None = None) -> None:
        self.files = files
        self.dtype = dtype
        self.device = torch.device(device)
        self.keep_bytes = int(keep_bytes)
        #: process RSS above which the heap's free pages are handed back when a unit is let go
        #: (None: only after each searched block). A forward reads every unit again and again, and
        #: the freed memory kept for reuse fragments: self-calibration sampling of the 1b preset
        #: under a 3 GB budget reached 10.4 GB without this
        self.trim_above: int | None = None
        #: the largest shard a writer may hold in memory at once
        self.write_bytes = 2 * 10**9
        #: keep the calibration activations between blocks on disk (the budget has no room for them)
        self.spill_activations = False
        self._own_spill = spill_dir is None
        self._spill_dir = None if spill_dir is None else Path(spill_dir)
        self.spilled = TensorFiles(files=[])
        #: a foreign layout's arrays (convert_layers), which may reuse native names (``qweight``)
        self.converted = TensorFiles(files=[])
        self._canon = _canonical_names(model)
        # the meta tensor each weight returns to (one object per tied weight, so ties survive)
        self._placeholders: dict[str, torch.Tensor] = {
            self._canon[n]: t for n, t in model.state_dict(keep_vars=True).items()
            if t is not None and t.device.type == "meta"}
        self._units: dict[int, _Unit] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()
        self._resident: dict[str, tuple[torch.Tensor, int]] = {}  # canonical -> (tensor, units holding it)
        self._spills = 0
        prefix = {id(m): n for n, m in model.named_modules()}
        inside = set()
        for b in blocks:
            self._add_unit(prefix[id(b)], b)
            inside.update(id(m) for m in b.modules())
        for name, m in model.named_modules():
            if id(m) in inside or not any(True for _ in m.parameters(recurse=False)):
                continue
            self._add_unit(name, m)
        model._cat_lazy = self
        _reuse_freed_memory()

    @property
    def spill_dir(self) -> Path:
        """Where changed units (and activations, when they do not fit) go; made on first use, and
        a temporary one is removed by :meth:`close` or when the registry is collected."""
        if self._spill_dir is None:
            self._spill_dir = Path(tempfile.mkdtemp(prefix="cat-spill-"))
            weakref.finalize(self, shutil.rmtree, str(self._spill_dir), True)
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        return self._spill_dir

    # ------------------------------------------------------------------ units

    def _add_unit(self, name: str, module: nn.Module) -> None:
        unit = _Unit(name, module)
        self._units[id(module)] = unit
        module._cat_lazy = self
        inner = module.forward
        # a plain embedding that is not in memory looks its tokens' rows up in the file: reading
        # and converting the whole table for a calibration batch held 1.5 GB on the 1b preset
        # (its fp16 copy and the float32 one), the highest moment of a 3 GB run
        looks_up = type(module) is nn.Embedding and module.max_norm is None

        def forward(*args: Any, **kwargs: Any) -> Any:
            if looks_up and not unit.resident and len(args) + len(kwargs) == 1:
                out = self._look_up(unit, args[0] if args else next(iter(kwargs.values())))
                if out is not None:
                    return out
            self.acquire(module)
            try:
                return inner(*args, **kwargs)
            finally:
                self.release(module)

        module.forward = forward  # an instance attribute, as accelerate's hooks do

    def _look_up(self, unit: _Unit, ids: torch.Tensor) -> torch.Tensor | None:
        """The embedding rows of ``ids`` read from the checkpoint, converted as :meth:`acquire`
        would convert the whole table (so bit for bit its lookup); None where the table is not
        plain in the checkpoint (a tied head holds it, or it was rewritten)."""
        full = f"{unit.name}.weight" if unit.name else "weight"
        key = self._canon.get(full, full)
        if key in self._resident or key in self.spilled or key in self.converted:
            return None
        name = self._file_name(key, full)
        if name not in self.files or not isinstance(ids, torch.Tensor) or ids.is_floating_point():
            return None
        like = unit.module.weight
        if tuple(self.files.spec(name)[0]) != tuple(like.shape):
            return None  # acquire() names the mismatch
        distinct, where = torch.unique(ids.reshape(-1).to("cpu"), sorted=True, return_inverse=True)
        rows = self._converted(self.files.read_rows(name, distinct))
        return rows.to(self.device)[where.to(self.device)].reshape(*ids.shape, *rows.shape[1:])

    def units(self) -> Iterator[tuple[str, nn.Module]]:
        for u in self._units.values():
            yield u.name, u.module

    def is_unit(self, module: nn.Module) -> bool:
        return id(module) in self._units

    def unit_bytes(self, module: nn.Module) -> int:
        """Bytes of ``module``'s weights once converted (its floating tensors in the compute dtype)."""
        return sum(t.numel() * (self.dtype.itemsize if t.is_floating_point() else t.element_size())
                   for *_, t in self._slots_with_values(self._units[id(module)]))

    # ------------------------------------------------------------------ acquire / release

    def acquire(self, module: nn.Module, device: torch.device | None = None) -> None:
        """Make every weight of the unit ``module`` real (on ``device``, default the registry's)."""
        unit = self._units[id(module)]
        unit.holders += 1
        self._idle.pop(id(module), None)
        if unit.resident:
            if device is not None and torch.device(device) != self.device:
                self._move(unit, torch.device(device))
            return
        target = torch.device(device) if device is not None else self.device
        self._make_room(self.unit_bytes(module))
        for owner, attr, is_param, full, t in self._slots_with_values(unit):
            key = self._canon.get(full, full)
            if key in self._resident:
                value, n = self._resident[key]
                self._resident[key] = (value, n + 1)
            elif t.device.type != "meta":
                continue  # computed at build time (not in any file): always real
            else:
                value = self._load(key, full, t).to(target)
                if is_param:
                    value = nn.Parameter(value, requires_grad=False)
                self._resident[key] = (value, 1)
            unit.keys.add(key)
            _set(owner, attr, is_param, value)
        unit.resident = True
        unit.nbytes = self.unit_bytes(module)

    def release(self, module: nn.Module, *, changed: bool = False) -> None:
        """Let go of the unit; ``changed``: its weights were rewritten (spill them first)."""
        unit = self._units[id(module)]
        if changed:
            self._spill(unit)
        unit.holders = max(0, unit.holders - 1)
        if unit.holders == 0:
            if changed:  # AWQ is done with it: the budget is worth more to the blocks still to come
                self._evict(unit)
                _give_back_freed_memory()
                return
            self._idle[id(module)] = None
            self._make_room(0)
            if self.trim_above is not None and _rss() > self.trim_above:
                _give_back_freed_memory()

    def _make_room(self, extra: int) -> None:
        # most recently used out first: a forward walks the units in one order every time, so
        # under least-recently-used each unit would be evicted just before it is needed again;
        # this way the first units stay and only the rest are read again
        while self._idle and self.resident_bytes() + extra > self.keep_bytes:
            uid, _ = self._idle.popitem(last=True)
            self._evict(self._units[uid])

    def resident_bytes(self) -> int:
        return sum(u.nbytes for u in self._units.values() if u.resident)

    def _evict(self, unit: _Unit) -> None:
        for owner, attr, is_param, full, t in self._slots_with_values(unit):
            key = self._canon.get(full, full)
            if key not in unit.keys:
                continue
            meta = self._placeholders.get(key)
            if meta is None or tuple(meta.shape) != tuple(t.shape) or meta.dtype != t.dtype:
                meta = torch.empty(t.shape, dtype=t.dtype, device="meta")
                meta = nn.Parameter(meta, requires_grad=False) if is_param else meta
                self._placeholders[key] = meta
            _set(owner, attr, is_param, meta)
        for key in unit.keys:
            self._drop(key)
        unit.keys = set()
        unit.resident = False
        unit.nbytes = 0

    def _drop(self, key: str) -> None:
        value, n = self._resident[key]
        if n > 1:
            self._resident[key] = (value, n - 1)
        else:
            del self._resident[key]

    def _move(self, unit: _Unit, device: torch.device) -> None:
        for owner, attr, is_param, full, t in self._slots_with_values(unit):
            key = self._canon.get(full, full)
            if key in self._resident and t.device != device:
                value = t.detach().to(device)
                value = nn.Parameter(value, requires_grad=False) if is_param else value
                self._resident[key] = (value, self._resident[key][1])
                _set(owner, attr, is_param, value)

    # ------------------------------------------------------------------ storage

    def _load(self, key: str, full: str, like: torch.Tensor) -> torch.Tensor:
        if key in self.spilled:
            return self.spilled.read(key)
        name = self._file_name(key, full)
        if name not in self.files:
            raise KeyError(f"{full}: not in the checkpoint files")
        value = self.files.read(name)
        if tuple(value.shape) != tuple(like.shape):
            from cat_core.io._errors import CheckpointError

            raise CheckpointError(f"tensor {name!r} has shape {list(value.shape)} in the checkpoint but the "
                                  f"model built from config.json expects {list(like.shape)}")
        return self._converted(value)

    def _file_name(self, key: str, full: str) -> str:
        """The checkpoint's name for a weight: its canonical name, else the model's full name."""
        return key if key in self.files else full

    def _converted(self, value: torch.Tensor) -> torch.Tensor:
        """A stored tensor as units compute with it (floating ones in the compute dtype)."""
        return value.to(self.dtype) if value.is_floating_point() else value

    def _spill(self, unit: _Unit) -> None:
        from safetensors.torch import save_file

        tensors = {}
        keys = set()
        for owner, attr, is_param, full, t in self._slots_with_values(unit):
            key = self._canon.get(full, full)
            if t.device.type == "meta":
                raise RuntimeError(f"{full}: spilling a unit whose weight is not in memory")
            tensors.setdefault(key, t.detach().to("cpu").contiguous())
            keys.add(key)
            if key not in unit.keys:  # created while held (a packed layer's arrays)
                self._resident[key] = (t, 1)
        for key in unit.keys - keys:  # replaced while held (the float weights of packed layers)
            self._drop(key)
        unit.keys = keys
        self._spills += 1
        path = self.spill_dir / f"unit-{self._spills:05d}.safetensors"
        save_file(tensors, str(path))
        self.spilled.add(path)
        unit.nbytes = self.unit_bytes(unit.module)

    def read(self, name: str) -> torch.Tensor:
        """The current value of the tensor ``name`` (as the model names it) on the CPU, as it is
        stored: from memory when its unit is in, else from the spill or the checkpoint (there in
        its checkpoint dtype, not converted)."""
        if name in self.converted:  # written by convert_layers for the writer: takes precedence
            return self.converted.read(name)
        key = self._canon.get(name, name)
        if key in self._resident:
            return self._resident[key][0].detach().to("cpu")
        if key in self.spilled:
            return self.spilled.read(key)
        return self.files.read(self._file_name(key, name))

    def convert_layers(self, layers: dict[str, nn.Module],
                       convert: Any) -> dict[str, dict[str, torch.Tensor]]:
        """``convert(name, layer)`` of every named layer, unit by unit, the results spilled to disk:
        returns ``{name: {suffix: meta placeholder}}`` (their values come from :meth:`read`)."""
        from safetensors.torch import save_file

        where = {id(m): n for n, m in layers.items()}
        out: dict[str, dict[str, torch.Tensor]] = {}
        for unit in self._units.values():
            mine = [(where[id(m)], m) for m in unit.module.modules() if id(m) in where]
            if not mine:
                continue
            self.acquire(unit.module)
            try:
                arrays = {name: convert(name, m) for name, m in mine}
            finally:
                self.release(unit.module)
            flat = {f"{name}.{s}": v.detach().to("cpu").contiguous() for name, parts in arrays.items()
                    for s, v in parts.items()}
            self._spills += 1
            path = self.spill_dir / f"converted-{self._spills:05d}.safetensors"
            save_file(flat, str(path))
            self.converted.add(path)
            for name, parts in arrays.items():
                out[name] = {s: torch.empty(v.shape, dtype=v.dtype, device="meta") for s, v in parts.items()}
        missing = set(layers) - set(out)
        if missing:
            raise RuntimeError(f"layers outside every unit of the lazily loaded model: {sorted(missing)[:3]}")
        return out

    def close(self) -> None:
        """Delete the spill files (the model cannot run after this)."""
        if self._own_spill and self._spill_dir is not None:
            shutil.rmtree(self._spill_dir, ignore_errors=True)

    def _slots_with_values(self, unit: _Unit) -> Iterator[tuple[nn.Module, str, bool, str, torch.Tensor]]:
        for mod_name, m in unit.module.named_modules():
            base = f"{unit.name}.{mod_name}" if mod_name else unit.name
            for attr, p in m._parameters.items():
                if p is not None:
                    yield m, attr, True, f"{base}.{attr}" if base else attr, p
            for attr, b in m._buffers.items():
                if b is not None and attr not in m._non_persistent_buffers_set:
                    yield m, attr, False, f"{base}.{attr}" if base else attr, b


def _set(owner: nn.Module, attr: str, is_param: bool, value: torch.Tensor) -> None:
    if is_param:
        owner._parameters[attr] = value
    else:
        owner._buffers[attr] = value


def _canonical_names(model: nn.Module) -> dict[str, str]:
    """Every persistent tensor's name -> the first name its tensor has in the state dict (a tied
    head's weight -> the embedding's)."""
    first: dict[int, str] = {}
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if t is None:
            continue
        out[name] = first.setdefault(id(t), name)
    return out


_MALLOC_SET = False
_LIBC: Any = None  # glibc, once _reuse_freed_memory has tuned it


def _reuse_freed_memory() -> None:
    """Have glibc keep freed blocks for reuse instead of unmapping them.

    Units come and go thousands of times (every decode step reads the blocks again); by default
    glibc maps each tensor over 32 MB afresh and unmaps it when freed, so every read pays the
    kernel's page faults again: measured 7.5 s to convert a 1b model's blocks to float32 into
    fresh memory, 0.2 s into reused memory. What stays is handed back after each searched block
    and above ``LazyWeights.trim_above`` (:func:`_give_back_freed_memory`). Process-wide; a no-op
    where glibc is not the allocator."""
    global _MALLOC_SET, _LIBC
    if _MALLOC_SET:
        return
    _MALLOC_SET = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve blocks up to 1 GiB from the heap
        _LIBC = libc
    except (OSError, AttributeError):
        pass


def _give_back_freed_memory() -> None:
    """Return the heap's free pages to the kernel (glibc ``malloc_trim``).

    Kept freed memory fragments: on the 8b preset under ``--max-memory 6GB`` the heap's resident
    size between blocks grew by about 0.1 GB a block (3.4 GB after block 1, 4.6 GB after block
    15), and with it the peak, towards 6.6 GB by the last block. Trimming after each searched
    block brings the resident size back to what is in use; the next block faults its pages in
    again, about a second against a block's minute and more of search."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
