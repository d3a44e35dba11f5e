"""Group-wise round-to-nearest quantization, exactly as the kernels dequantize.

``W[n, k] ~= (q - z) * s`` per group of ``G`` consecutive input columns (see
``packages/cat-kernels/docs/format.md``). The scale is rounded to its storage dtype *before* the
codes are computed, and dequantization is ``float32(q - z) * float32(s)`` rounded once to the
output dtype, so a fake-quantized weight equals what the kernels reconstruct bit for bit.
"""

from __future__ import annotations

import dataclasses

import torch

from cat_core.config import QuantConfig

__all__ = ["QuantizedTensor", "quantize_tensor", "fake_quantize", "dequantize", "check_group_size"]

# Below this a group is (numerically) constant; the floor keeps 1/s finite in every scale dtype.
_MIN_SCALE = 1e-5


@dataclasses.dataclass
class QuantizedTensor:
    """Integer codes of one weight matrix plus its per-group scales and zero points.

    ``codes``: uint8 ``[N, K]``; ``scales``: ``[N, n_groups]`` in the storage dtype;
    ``zeros``: uint8 ``[N, n_groups]``, or None for symmetric (implicit ``2**(bits-1)``).
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    bits: int
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> QuantizedTensor:
        return dataclasses.replace(
            self,
            codes=self.codes.to(device),
            scales=self.scales.to(device),
            zeros=None if self.zeros is None else self.zeros.to(device),
        )


def check_group_size(k: int, group_size: int, name: str = "") -> int:
    """Return the effective group length for a K-wide weight, or raise naming the layer."""
    if group_size == -1:
        return k
    if group_size <= 0 or k % group_size != 0:
        valid = [g for g in range(32, k + 1, 32) if k % g == 0]
        where = f"layer {name!r}" if name else "weight"
        raise ValueError(
            f"group_size={group_size} does not divide K={k} of {where}; "
            f"valid group sizes for K={k}: {valid + [-1]}"
        )
    return group_size


def _grouped(w: torch.Tensor, group_size: int, name: str) -> torch.Tensor:
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight [N, K], got shape {tuple(w.shape)} for {name or 'weight'}")
    n, k = w.shape
    g = check_group_size(k, group_size, name)
    return w.float().reshape(n, k // g, g)


def _params(
    wg: torch.Tensor, bits: int, sym: bool, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float codes, float zero points and storage-rounded scales of a grouped fp32 weight."""
    if sym:
        half = 2 ** (bits - 1)
        absmax = wg.abs().amax(dim=-1, keepdim=True)
        s = (absmax / (half - 1)).clamp_min(_MIN_SCALE).to(scale_dtype).float()
        q = torch.round(wg / s).clamp_(-half, half - 1).add_(half)
        z = torch.full_like(s, float(half))
    else:
        qmax = 2**bits - 1
        lo = wg.amin(dim=-1, keepdim=True)
        hi = wg.amax(dim=-1, keepdim=True)
        s = ((hi - lo) / qmax).clamp_min(_MIN_SCALE).to(scale_dtype).float()
        z = torch.round(-lo / s).clamp_(0, qmax)
        q = torch.round(wg / s).add_(z).clamp_(0, qmax)
    return q, z, s


def _cfg(config: QuantConfig | None, bits: int | None, group_size: int | None, sym: bool | None,
         scale_dtype: torch.dtype | str | None) -> QuantConfig:
    base = config if config is not None else QuantConfig()
    changes = {k: v for k, v in (("bits", bits), ("group_size", group_size), ("sym", sym),
                                 ("scale_dtype", scale_dtype)) if v is not None}
    return dataclasses.replace(base, **changes) if changes else base


def quantize_tensor(
    w: torch.Tensor,
    config: QuantConfig | None = None,
    *,
    name: str = "",
    bits: int | None = None,
    group_size: int | None = None,
    sym: bool | None = None,
    scale_dtype: torch.dtype | str | None = None,
) -> QuantizedTensor:
    """Quantize a ``[N, K]`` weight; keyword overrides take precedence over ``config``.

    ``name`` only serves error messages (a group size that does not divide K).
    """
    cfg = _cfg(config, bits, group_size, sym, scale_dtype)
    n, k = w.shape if w.dim() == 2 else (0, 0)
    wg = _grouped(w, cfg.group_size, name)
    q, z, s = _params(wg, cfg.bits, cfg.sym, cfg.scale_torch_dtype)
    return QuantizedTensor(
        codes=q.reshape(n, k).to(torch.uint8),
        scales=s.squeeze(-1).to(cfg.scale_torch_dtype),
        zeros=None if cfg.sym else z.squeeze(-1).to(torch.uint8),
        bits=cfg.bits,
        group_size=cfg.group_size,
    )


def fake_quantize(
    w: torch.Tensor,
    config: QuantConfig | None = None,
    *,
    name: str = "",
    bits: int | None = None,
    group_size: int | None = None,
    sym: bool | None = None,
    scale_dtype: torch.dtype | str | None = None,
) -> torch.Tensor:
    """``dequantize(quantize_tensor(w))`` in ``w``'s dtype, without materializing uint8 codes.

    Codes are small integers held exactly in float32, so ``q - z`` and the one rounding of the
    product are the same operations the kernels perform.
    """
    cfg = _cfg(config, bits, group_size, sym, scale_dtype)
    wg = _grouped(w, cfg.group_size, name)
    q, z, s = _params(wg, cfg.bits, cfg.sym, cfg.scale_torch_dtype)
    return ((q - z) * s).reshape(w.shape).to(w.dtype)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reconstruct ``[N, K]`` as ``float32(q - z) * float32(s)``, rounded once to ``dtype``."""
    n, k = qt.codes.shape
    g = k if qt.group_size == -1 else qt.group_size
    q = qt.codes.reshape(n, k // g, g).float()
    if qt.zeros is None:
        z = torch.full((n, k // g, 1), float(2 ** (qt.bits - 1)), device=q.device)
    else:
        z = qt.zeros.float().unsqueeze(-1)
    s = qt.scales.float().unsqueeze(-1)
    return ((q - z) * s).reshape(n, k).to(dtype)
