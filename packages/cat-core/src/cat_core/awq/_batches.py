"""The calibration sequences as they reach each block: shuffled once, cut into chunks (the first
is the scale search's batch), the blocks' other arguments captured once per chunk, and the hidden
states carried from block to block."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from cat_core._offload import execution_device
from cat_core.awq._capture import BlockCall, capture_block_calls, hidden_of, replace_hidden, to_device
from cat_core.config import QuantConfig, ScaleSearch

__all__ = ["Batches", "capture_batches"]

# Sequences per forward outside the search batch: amortizes per-forward overhead, while
# CHUNK_TOKENS bounds the transients of one forward (a Llama-1B-shaped block over 8192 tokens
# holds about 1.1 GB of MLP intermediates in float32), which the memory plan counts.
_CHUNK = 16
CHUNK_TOKENS = 4096


def _chunk_sequences(seqlen: int) -> int:
    return max(1, min(_CHUNK, CHUNK_TOKENS // max(1, seqlen)))


@dataclasses.dataclass
class Batches:
    #: per block position, per chunk: the block's call (its hidden state is ``hiddens[chunk]``)
    calls: list[list[BlockCall]]
    #: per chunk: the hidden states entering the current block (the statistics stage may drop
    #: chunks it did not need; propagation replaces them by the block's outputs)
    hiddens: list[torch.Tensor]
    seqlen: int
    #: sequences of the screening subsample (the search batch's first), 0 for none, and per block
    #: its calls (masks and positions sized for it)
    n_screen: int
    screen_calls: list[BlockCall] | None
    #: per block, a call for ``extra_shape`` (batch, tokens) sequences, when one was asked for
    extra_calls: list[BlockCall] | None

    def search_call(self, position: int, device: torch.device) -> BlockCall:
        """The scale search's batch as it reaches the block at ``position``, on ``device``."""
        return _on(replace_hidden(self.calls[position][0], self.hiddens[0]), device)

    def screen_call(self, position: int, device: torch.device) -> BlockCall | None:
        if self.screen_calls is None:
            return None
        return _on(replace_hidden(self.screen_calls[position], self.hiddens[0][:self.n_screen]), device)

    def runs(self, position: int, every_chunk: bool) -> list[tuple[BlockCall, torch.Tensor]]:
        """(call, hidden states) of every chunk still carried, or of the search batch only."""
        pairs = list(zip(self.calls[position], self.hiddens))
        return pairs if every_chunk else pairs[:1]

    def sequences(self, upto: int) -> int:
        """Sequences in the chunks before ``upto``."""
        shape = getattr(self.hiddens, "shape", None)  # a DiskList knows them without reading
        if shape is not None:
            return sum(int(shape(i)[0]) for i in range(min(upto, len(self.hiddens))))
        return sum(int(h.shape[0]) for h in self.hiddens[:upto])


def _on(call: BlockCall, device: torch.device) -> BlockCall:
    return BlockCall(to_device(call.args, device), to_device(call.kwargs, device))


def _screen_sequences(scales: ScaleSearch, n_search: int, seqlen: int) -> int:
    """Sequences of the scale search's screening subsample (the search batch's first), 0 for none:
    screening pays only when the search batch holds more than twice ``scales.screen_tokens``."""
    if scales.screen_tokens is None or n_search * seqlen <= 2 * scales.screen_tokens:
        return 0
    n_screen = max(1, math.ceil(scales.screen_tokens / seqlen))
    return n_screen if n_screen < n_search else 0


def _chunks(n: int, n_search: int, seqlen: int) -> list[slice]:
    step = _chunk_sequences(seqlen)
    out = [slice(0, n_search)]
    out += [slice(i, min(i + step, n)) for i in range(n_search, n, step)]
    return out


def capture_batches(
    model: nn.Module, blocks: list[nn.Module], samples: torch.Tensor, config: QuantConfig,
    store: torch.device, extra_shape: tuple[int, int] | None = None,
) -> Batches:
    """Shuffle ``samples`` ``[n, seqlen]`` with ``config.seed``, cut them into chunks and capture
    every block's arguments for each (kept on ``store``). ``extra_shape``: also capture calls for
    that many sequences of that many tokens (learned rounding's batches)."""
    n, seqlen = samples.shape
    samples = samples[torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))]
    scales = config.scales or ScaleSearch()  # without a scale search its batch still sets the chunk size
    sub = scales.token_subsample
    n_search = n if sub is None else max(1, min(n, math.ceil(sub / seqlen)))
    slices = _chunks(n, n_search, seqlen)
    n_screen = _screen_sequences(scales, n_search, seqlen) if config.scales is not None else 0
    if n_screen:
        slices.append(slice(0, n_screen))
    emb_device = execution_device(model.get_input_embeddings())
    chunks = [samples[s].to(emb_device) for s in slices]
    if extra_shape is not None:  # no padding: any sequences fit the same masks
        chunks.append(samples[:extra_shape[0], :extra_shape[1]].to(emb_device))
    calls = capture_block_calls(model, blocks, chunks, store)
    extra = [c.pop() for c in calls] if extra_shape is not None else None
    screen = [c.pop() for c in calls] if n_screen else None
    hiddens: list[torch.Tensor] = [hidden_of(c) for c in calls[0]]
    # from here on the hidden states live in ``hiddens`` only, so a block's outputs replace them
    calls[0] = [replace_hidden(c, None) for c in calls[0]]
    lazy = getattr(model, "_cat_lazy", None)
    if lazy is not None and lazy.spill_activations:
        from cat_core.stream._disk_list import DiskList

        hiddens = DiskList(hiddens, lazy.spill_dir, store)  # type: ignore[assignment]
    return Batches(calls=calls, hiddens=hiddens, seqlen=seqlen,
                   n_screen=n_screen, screen_calls=screen, extra_calls=extra)
