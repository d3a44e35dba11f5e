"""What quantization needs settled before any calibration: the experts unfused, the layer graph,
and the list of layers that get quantized, each accepting the group size. A front-end calls
:func:`prepare` first to choose a group size or fail in seconds, then hands the graph to
:func:`~cat_core.awq.quantize`, which otherwise does the same itself."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cat_core.awq._errors import AWQError
from cat_core.config import QuantConfig, matches_any
from cat_core.quant import check_group_size

__all__ = ["Prepared", "prepare", "quantized_layers", "check_layers"]


@dataclasses.dataclass
class Prepared:
    #: the layer graph of the model as it now is (experts unfused)
    graph: Any
    #: (full name, in_features) of every layer inside the decoder blocks that gets quantized
    layers: list[tuple[str, int]]


def prepare(model: nn.Module, config: QuantConfig | None = None, *, strict: bool | None = None,
            sample_input_ids: torch.Tensor | None = None) -> Prepared:
    """Unfuse fused experts (``config.unfuse_experts``; in place), discover the layer graph (raises
    :class:`~cat_core.graph.GraphError` naming the block and op it cannot handle) and list the
    layers that get quantized (raises :class:`AWQError` when there are none)."""
    from cat_core.graph import discover

    config = config or QuantConfig()
    if config.unfuse_experts:
        from cat_core.moe import unfuse_experts

        unfuse_experts(model)
    kw = {} if sample_input_ids is None else {"sample_input_ids": sample_input_ids}
    graph = discover(model, strict=strict, **kw)
    blocks = [(bg.path, bg.module) for bg in graph.blocks]
    layers = quantized_layers(blocks, config.modules_to_not_convert)
    _require_some(layers, blocks, config)
    return Prepared(graph, layers)


def quantized_layers(blocks: Sequence[tuple[str, nn.Module]], not_convert: Sequence[str]) -> list[tuple[str, int]]:
    """(full name, in_features) of every ``nn.Linear`` or GPT-2 ``Conv1D`` of the ``(path, block)``
    pairs whose name matches none of ``not_convert``."""
    from cat_core.nn import linear_shape

    out = []
    for prefix, block in blocks:
        for rel, mod in block.named_modules():
            shape = linear_shape(mod) if rel else None
            full = f"{prefix}.{rel}" if prefix else rel
            if shape is not None and not matches_any(full, not_convert):
                out.append((full, shape[1]))
    return out


def check_layers(model: nn.Module, config: QuantConfig, graph: Any = None) -> None:
    """Every layer that will be quantized accepts ``config.group_size`` (a ValueError names the
    layer and the sizes that fit), and there is at least one."""
    if graph is not None:
        blocks = [(bg.path, bg.module) for bg in graph.blocks]
    else:
        from cat_core.graph import find_blocks

        path, _, stack = find_blocks(model)
        blocks = [(f"{path}.{i}", b) for i, b in enumerate(stack)]
    layers = quantized_layers(blocks, config.modules_to_not_convert)
    for name, k in layers:
        check_group_size(k, config.group_size, name)
    _require_some(layers, blocks, config)


def _require_some(layers: list, blocks: list, config: QuantConfig) -> None:
    if not layers:
        where = blocks[0][0].rpartition(".")[0] if blocks else "the model"
        raise AWQError(
            f"model: none of the {len(blocks)} decoder blocks under '{where}' has an nn.Linear to quantize "
            f"(config.modules_to_not_convert={list(config.modules_to_not_convert)!r})"
        )
