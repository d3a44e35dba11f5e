"""Blocks whose weights accelerate offloaded (to CPU RAM or disk), made real for a while.

A model dispatched by accelerate with offloading (``device_map`` with "cpu"/"disk" entries,
``cpu_offload``, ``disk_offload``) keeps the offloaded weights on the meta device and loads them
in a hook around each forward. The AWQ search needs more than a forward: it reads and rewrites
the weights of one block at a time. :class:`Held` loads a module's offloaded tensors onto the
compute device (and moves its other tensors there), and on release writes the rewritten
tensors back to the offload store (a dict in RAM or accelerate's memory-mapped files) and puts
everything back where it was. Models without accelerate hooks take the plain ``.to`` path.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["Held", "execution_device", "offload_index", "offloaded_tensor"]


def _hooks(module: nn.Module) -> list[Any]:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])  # SequentialHook holds several


def _offload_hooks(module: nn.Module) -> Iterator[tuple[str, nn.Module, Any]]:
    for name, m in module.named_modules():
        for h in _hooks(m):
            if getattr(h, "offload", False) and getattr(h, "weights_map", None) is not None:
                yield name, m, h


def _hook_tensor_names(m: nn.Module, h: Any) -> list[str]:
    from accelerate.utils import named_module_tensors

    return [n for n, _ in named_module_tensors(m, include_buffers=h.offload_buffers,
                                               recurse=h.place_submodules, remove_non_persistent=True)]


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: the device of a lazily loaded model's units
    (:mod:`cat_core.stream`), the execution device of an accelerate hook on it or inside it,
    else the device of its first parameter or buffer that is not on ``meta``, else the CPU."""
    lazy = getattr(module, "_cat_lazy", None)
    if lazy is not None:
        return lazy.device
    for m in module.modules():
        for h in _hooks(m):
            dev = getattr(h, "execution_device", None)
            if dev is not None:
                return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def offload_index(model: nn.Module) -> dict[str, tuple[Any, str]]:
    """``{full tensor name: (weights_map, name inside it)}`` of every offloaded parameter and
    buffer of ``model``; build it once when resolving many names."""
    index: dict[str, tuple[Any, str]] = {}
    for prefix, m, h in _offload_hooks(model):
        for rel in _hook_tensor_names(m, h):
            index[f"{prefix}.{rel}" if prefix else rel] = (h.weights_map, rel)
    return index


def offloaded_tensor(model: nn.Module, name: str,
                     index: dict[str, tuple[Any, str]] | None = None) -> torch.Tensor | None:
    """The stored value (on the CPU) of the offloaded parameter or buffer ``name`` of ``model``,
    or None when it is not offloaded. ``index``: a prebuilt :func:`offload_index`."""
    entry = (offload_index(model) if index is None else index).get(name)
    return None if entry is None else entry[0][entry[1]].to("cpu")


def _write_back(weights_map: Any, name: str, value: torch.Tensor) -> None:
    from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset, offload_weight

    key, store = name, weights_map
    if isinstance(store, PrefixedDataset):
        key, store = store.prefix + name, store.dataset
    value = value.detach().to("cpu")
    if isinstance(store, OffloadedWeightsLoader):
        if key in store.state_dict:
            store.state_dict[key] = value.clone()
        elif store.save_folder is not None and key in store.index:
            offload_weight(value, key, store.save_folder, index=store.index)
        else:
            raise RuntimeError(f"cannot write the offloaded tensor {key!r} back: it is not in its store")
    elif isinstance(store, dict):
        store[key] = value.clone()
    else:
        raise RuntimeError(
            f"cannot write the offloaded tensor {key!r} back to a {type(store).__name__} "
            "(supported: accelerate's OffloadedWeightsLoader, PrefixedDataset, dict)")


class Held:
    """``module`` with every parameter and buffer real on ``device`` until :meth:`release`.

    ``release(write_back=True)`` stores the (possibly rewritten) offloaded tensors back into
    their offload store, returns them to ``meta`` and the other tensors to their own devices.
    Idempotent. A unit of a lazily loaded model (:mod:`cat_core.stream`) is read from its files
    instead, and on release with ``write_back`` spilled to disk.
    """

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        lazy = getattr(module, "_cat_lazy", None)
        self._lazy = (lazy, module) if lazy is not None and lazy.is_unit(module) else None
        if self._lazy is not None:  # a unit of a lazily loaded model: read from its files
            lazy.acquire(module, device)
            self._held = True
            return
        from_hooks = list(_offload_hooks(module))
        self._offloaded: list[tuple[nn.Module, Any, list[str]]] = []
        if from_hooks:
            from accelerate.utils import set_module_tensor_to_device

            for _, m, h in from_hooks:
                names = _hook_tensor_names(m, h)
                for n in names:
                    set_module_tensor_to_device(m, n, device, value=h.weights_map[n])
                h.offload = False  # the hook would otherwise reload/drop them around forwards
                self._offloaded.append((m, h, names))
        offl = set()
        for m, _, names in self._offloaded:
            for n in names:
                owner, _, leaf = n.rpartition(".")
                offl.add((id(m.get_submodule(owner) if owner else m), leaf))
        self._home: list[tuple[nn.Module, str, torch.device]] = []
        for m in module.modules():
            for n, t in list(m._parameters.items()) + list(m._buffers.items()):
                if t is None or (id(m), n) in offl:
                    continue
                self._home.append((m, n, t.device))
        module.to(device)
        self._held = True

    def release(self, write_back: bool = True) -> None:
        if not self._held:
            return
        self._held = False
        if self._lazy is not None:
            lazy, module = self._lazy
            lazy.release(module, changed=write_back)
            return
        for m, n, dev in self._home:
            _move(m, n, dev)
        if self._offloaded:
            from accelerate.utils import set_module_tensor_to_device

            for m, h, names in self._offloaded:
                for n in names:
                    if write_back:
                        _write_back(h.weights_map, n, _get(m, n))
                    set_module_tensor_to_device(m, n, "meta")
                h.offload = True


def _get(m: nn.Module, dotted: str) -> torch.Tensor:
    owner, _, leaf = dotted.rpartition(".")
    mod = m.get_submodule(owner) if owner else m
    t = mod._parameters.get(leaf)
    return t if t is not None else mod._buffers[leaf]


def _move(m: nn.Module, leaf: str, device: torch.device) -> None:
    if leaf in m._parameters and m._parameters[leaf] is not None:
        p = m._parameters[leaf]
        if p.device != device:
            p.data = p.data.to(device)
    elif leaf in m._buffers and m._buffers[leaf] is not None:
        b = m._buffers[leaf]
        if b.device != device:
            m._buffers[leaf] = b.to(device)
