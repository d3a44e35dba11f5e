"""GPT-2's Conv1D layers seen as nn.Linear while a model is quantized.

transformers' ``Conv1D`` (GPT-2, and models built from its blocks) computes ``x @ W + b`` with the
weight stored ``[in, out]``: the transpose of ``nn.Linear``'s. The AWQ runner, the clip search,
GPTQ and learned rounding all work on ``nn.Linear`` (``[out, in]`` weights, ``in_features``), so
:func:`conv1d_as_linear` swaps each Conv1D for an equivalent ``nn.Linear`` for the duration of the
work and puts the original modules back afterwards, with the (folded, fake-quantized) weights
copied into them transposed. The model leaves with the module types it came with; the quantized
tensors are ``[N, K]`` as for any linear, which :func:`cat_core.nn.replace_linears` accepts for a
Conv1D.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from cat_core.awq._errors import AWQError
from cat_core.nn import _is_conv1d, _set_module

__all__ = ["conv1d_as_linear"]


def _as_linear(conv: nn.Module) -> nn.Linear:
    k, n = conv.weight.shape
    lin = nn.Linear(k, n, bias=False, device="meta")
    lin.weight = nn.Parameter(conv.weight.detach().t().contiguous(), requires_grad=conv.weight.requires_grad)
    lin.bias = conv.bias  # the same parameter: a fold into the bias lands in the original
    lin.train(conv.training)
    return lin


@contextlib.contextmanager
def conv1d_as_linear(model: nn.Module) -> Iterator[list[str]]:
    """Within the block, every Conv1D of ``model`` is an ``nn.Linear`` computing the same
    function; yields their names (empty: nothing to do). On exit, also on error, the Conv1D
    modules are back, holding the linears' current weights transposed (the same Parameter
    objects as before, so optimizers and ties still point at them).

    Raises :class:`AWQError` for a Conv1D whose weight is on the meta device (offloaded by
    accelerate: its offload store holds the ``[in, out]`` layout, which the swap cannot follow).
    """
    convs = [(name, m) for name, m in model.named_modules() if _is_conv1d(m)]
    for name, m in convs:
        if m.weight.device.type == "meta":
            raise AWQError(
                f"model: {name!r} is a GPT-2 Conv1D whose weight is offloaded (meta device); "
                "quantizing offloaded Conv1D layers is not supported: load the model in memory"
            )
    swapped: list[tuple[str, nn.Module, nn.Linear]] = []
    try:
        for name, conv in convs:
            lin = _as_linear(conv)
            # the Conv1D's own storage is dropped meanwhile: no second copy of every weight
            conv.weight.data = torch.empty(0, dtype=conv.weight.dtype, device=conv.weight.device)
            _set_module(model, name, lin)
            swapped.append((name, conv, lin))
        yield [name for name, _ in convs]
    finally:
        for name, conv, lin in reversed(swapped):
            conv.weight.data = lin.weight.detach().t().contiguous()
            _set_module(model, name, conv)
