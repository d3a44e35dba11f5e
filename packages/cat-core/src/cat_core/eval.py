"""Quality figures of a (quantized) causal LM: perplexity and agreement with a reference model.

Perplexity protocol (:func:`perplexity`): the token ids are cut into non-overlapping windows of
``seqlen`` tokens (the tail shorter than a window is dropped), the first ``max_windows`` are
kept, and every position but the first of each window is scored, so ``seqlen - 1`` tokens per
window. ``ppl = exp(total NLL / tokens scored)``.

Data-free figure (:func:`reference_logprobs` + :func:`agreement`): next-token distributions of
the model against those of its unquantized reference on the same sequences (typically text
sampled from the reference, so no dataset is needed): the mean over positions of
``KL(reference || model)`` in nats, and the fraction of positions where both pick the same top-1
token.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

__all__ = ["PerplexityResult", "Agreement", "windows", "perplexity", "reference_logprobs", "agreement",
           "sample_texts"]

#: positions per chunk when the lm_head runs separately (bounds [chunk, vocab] logits).
_LOGIT_CHUNK = 512


@dataclasses.dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # tokens scored
    windows: int
    seqlen: int

    def protocol(self) -> str:
        return (f"{self.windows} non-overlapping window(s) of {self.seqlen} tokens, first token of "
                f"each window not scored: {self.tokens} tokens scored")


@dataclasses.dataclass
class Agreement:
    kl: float  # mean KL(reference || model), nats per position
    top1: float  # fraction of positions with the same argmax
    positions: int


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping ``[n, seqlen]`` windows of the 1-D ``ids`` (the short tail is dropped)."""
    ids = ids.reshape(-1)
    if seqlen < 2:
        raise ValueError(f"seqlen must be >= 2, got {seqlen}")
    n = ids.numel() // seqlen
    if max_windows is not None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"the text has {ids.numel()} tokens: fewer than one window of {seqlen}; lower seqlen")
    return ids[: n * seqlen].reshape(n, seqlen)


def _device(model: nn.Module) -> torch.device:
    from cat_core._offload import execution_device

    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return execution_device(emb if emb is not None else model)


def _split_head(model: nn.Module) -> tuple[Any, Any] | None:
    """(decoder returning last_hidden_state, lm_head) when the model exposes them, else None."""
    get_dec = getattr(model, "get_decoder", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if get_dec is None or head is None:
        return None
    try:
        dec = get_dec()
    except Exception:
        return None
    if dec is None or dec is model:
        return None
    return dec, head


def _cap(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def _logit_chunks(model: nn.Module, ids: torch.Tensor, chunk: int = _LOGIT_CHUNK):
    """Yield ``(start, float32 logits [b, c, vocab])`` of ``ids [b, t]`` by position chunks."""
    ids = ids.to(_device(model))
    split = _split_head(model)
    if split is not None:
        dec, head = split
        try:
            hidden = dec(input_ids=ids, use_cache=False).last_hidden_state
        except Exception:
            split = None
    if split is None:
        logits = model(input_ids=ids, use_cache=False).logits
        for s in range(0, logits.shape[1], chunk):
            yield s, logits[:, s:s + chunk].float()
        return
    for s in range(0, hidden.shape[1], chunk):
        yield s, _cap(model, head(hidden[:, s:s + chunk]).float())


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, seqlen: int = 2048, max_windows: int | None = None,
               *, progress: Any = None) -> PerplexityResult:
    """Perplexity of ``model`` on the 1-D token ``ids`` (protocol in the module docstring).

    ``progress``: optional callable invoked once per window (e.g. a tqdm ``update``)."""
    was = model.training
    model.eval()
    wins = windows(ids, seqlen, max_windows)
    nll, count = 0.0, 0
    try:
        for w in wins:
            w = w.unsqueeze(0)
            target = w[0, 1:].to(_device(model))
            for s, logits in _logit_chunks(model, w):
                lg = logits[0]
                # position p predicts token p+1; the last position predicts nothing
                end = min(s + lg.shape[0], target.numel())
                if end <= s:
                    continue
                nll += float(nn.functional.cross_entropy(lg[: end - s], target[s:end], reduction="sum"))
            count += target.numel()
            if progress is not None:
                progress()
    finally:
        model.train(was)
    mean = nll / count
    return PerplexityResult(ppl=math.exp(mean), nll=mean, tokens=count, windows=wins.shape[0], seqlen=seqlen)


@torch.no_grad()
def reference_logprobs(model: nn.Module, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Log-softmax next-token distributions ``[n, t, vocab]`` (CPU, ``dtype``) of ``ids [n, t]``."""
    was = model.training
    model.eval()
    out = []
    try:
        for row in ids:
            parts = [torch.log_softmax(lg[0], -1).to("cpu", dtype) for _, lg in _logit_chunks(model, row[None])]
            out.append(torch.cat(parts, 0))
    finally:
        model.train(was)
    return torch.stack(out, 0)


@torch.no_grad()
def agreement(model: nn.Module, ids: torch.Tensor, ref_logprobs: torch.Tensor) -> Agreement:
    """Mean ``KL(reference || model)`` and top-1 agreement of ``model`` on ``ids [n, t]`` against
    ``ref_logprobs`` from :func:`reference_logprobs` (same ids, the unquantized model)."""
    if ref_logprobs.shape[:2] != ids.shape:
        raise ValueError(f"ref_logprobs {tuple(ref_logprobs.shape)} do not match ids {tuple(ids.shape)}")
    was = model.training
    model.eval()
    kl_sum, same, n = 0.0, 0, 0
    try:
        for i, row in enumerate(ids):
            for s, lg in _logit_chunks(model, row[None]):
                q = torch.log_softmax(lg[0], -1).cpu()
                p = ref_logprobs[i, s:s + q.shape[0]].float()
                if q.shape[-1] != p.shape[-1]:
                    raise ValueError(f"vocabulary sizes differ: model {q.shape[-1]}, reference {p.shape[-1]}")
                kl_sum += float((p.exp() * (p - q)).sum())
                same += int((p.argmax(-1) == q.argmax(-1)).sum())
                n += q.shape[0]
    finally:
        model.train(was)
    return Agreement(kl=kl_sum / n, top1=same / n, positions=n)


def sample_texts(model: nn.Module, tokenizer: Any, n: int = 4, seqlen: int = 128, seed: int = 1234) -> torch.Tensor:
    """``[n, seqlen]`` token ids sampled from ``model`` (top-k sampling from BOS, seeded; the
    same sampler as ``calibration_samples(source="self")`` but with its own seed so that the
    evaluation text is not the calibration text)."""
    from cat_core.calib import calibration_samples
    from cat_core.config import CalibConfig

    return calibration_samples(CalibConfig(source="self", n_samples=n, seqlen=seqlen, seed=seed), tokenizer, model)
