"""Catching what the model feeds its decoder blocks, without running them.

Each block's keyword arguments are recorded separately: some architectures pass per-layer masks or
rotary tables (e.g. sliding-window layers), so block 0's kwargs are not valid for every block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["BlockCall", "capture_block_calls", "capture_module_call", "to_device", "hidden_of", "replace_hidden"]


class _Stop(Exception):
    """Raised from a hook to abandon a forward once the wanted inputs are caught."""


@dataclasses.dataclass
class BlockCall:
    """The positional and keyword arguments of one call; ``args[0]`` (or ``hidden_states``) is the
    hidden state."""

    args: tuple
    kwargs: dict


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def hidden_of(call: BlockCall) -> torch.Tensor:
    return call.args[0] if call.args else call.kwargs["hidden_states"]


def replace_hidden(call: BlockCall, hidden: torch.Tensor | None) -> BlockCall:
    if call.args:
        return BlockCall((hidden, *call.args[1:]), call.kwargs)
    return BlockCall(call.args, {**call.kwargs, "hidden_states": hidden})


def first_output(out: Any) -> torch.Tensor:
    """Blocks and attention modules return a tensor or a tuple led by it."""
    return out[0] if isinstance(out, (tuple, list)) else out


def capture_block_calls(
    model: nn.Module, blocks: Sequence[nn.Module], chunks: Sequence[torch.Tensor], store: torch.device
) -> list[list[BlockCall]]:
    """``calls[b][c]``: the call block ``b`` receives for input-id chunk ``c``.

    Only block 0's hidden state is real (stored on ``store``); for later blocks the hidden state is
    None, since the blocks are skipped (identity) while the model walks them to expose their kwargs.
    """
    calls: list[list[BlockCall]] = [[] for _ in blocks]
    tuple_out: list[bool] = []
    handles = []
    last = len(blocks) - 1

    def pre_hook(i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            call = BlockCall(tuple(args), dict(kwargs))
            if i == 0:
                call = BlockCall(to_device(call.args, store), to_device(call.kwargs, store))
            else:
                call = replace_hidden(call, None)
            calls[i].append(call)
            if i == last:
                raise _Stop
        return hook

    def skip(i: int, real_forward):
        def forward(*args: Any, **kwargs: Any):
            hidden = args[0] if args else kwargs["hidden_states"]
            if not tuple_out:
                # Learn the block's return convention once, from a real call.
                tuple_out.append(isinstance(real_forward(*args, **kwargs), (tuple, list)))
            return (hidden,) if tuple_out[0] else hidden
        return forward

    # a forward set on the instance (accelerate's hooks, a lazily loaded unit) is put back after
    own = [block.__dict__.get("forward") for block in blocks]
    try:
        for i, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
            if i != last:
                block.forward = skip(i, block.forward)  # instance attribute shadows the method
        was_training = model.training
        model.eval()
        try:
            for ids in chunks:
                try:
                    model(input_ids=ids, use_cache=False)
                except _Stop:
                    pass
                else:
                    raise RuntimeError("the model finished its forward without reaching its last block")
        finally:
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
        for block, forward in zip(blocks, own):
            block.__dict__.pop("forward", None)
            if forward is not None:
                block.forward = forward
    return calls


def capture_module_call(
    root: nn.Module, target: nn.Module, call: BlockCall, *, stop: bool = True
) -> BlockCall:
    """The (args, kwargs) ``target`` receives while ``root`` runs ``call``.

    With ``stop`` the forward is abandoned as soon as they are caught.
    """
    got: list[BlockCall] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict):
        if not got:
            got.append(BlockCall(tuple(args), dict(kwargs)))
            if stop:
                raise _Stop

    h = target.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        if root is target:
            return call
        try:
            root(*call.args, **call.kwargs)
        except _Stop:
            pass
    finally:
        h.remove()
    if not got:
        raise RuntimeError(f"{type(target).__name__} was not called while running {type(root).__name__}")
    return got[0]
