"""Building a ScaleGroup from a fold rule and its consumers: consumer names and the module whose
output measures the quantization loss (`inspect`)."""

from __future__ import annotations

from torch import nn

from ._types import FoldRule, NormFold, ScaleGroup, WeightRef, get_submodule


def _owner(path: str) -> str:
    return path.rpartition(".")[0]


def _is_plain_linear(block: nn.Module, ref: WeightRef) -> bool:
    if ref.select is not None or not ref.path.endswith(".weight"):
        return False
    mod = get_submodule(block, _owner(ref.path))
    names = {n for n, _ in mod.named_parameters()}
    return not list(mod.children()) and names <= {"weight", "bias"}


def consumer_name(block: nn.Module, ref: WeightRef) -> str:
    return _owner(ref.path) if _is_plain_linear(block, ref) else ref.name


def _lca(paths: list[str]) -> str:
    parts = [p.split(".") if p else [] for p in paths]
    common: list[str] = []
    for seg in zip(*parts, strict=False):
        if len(set(seg)) != 1:
            break
        common.append(seg[0])
    return ".".join(common)


def _inspect(block: nn.Module, fold: FoldRule, refs: tuple[WeightRef, ...]) -> str:
    owners = [_owner(r.path) for r in refs]
    insp = _lca(owners)
    # after a norm, the loss should see the nonlinearity that follows the linears
    if (
        isinstance(fold, NormFold)
        and insp in owners
        and any(_is_plain_linear(block, r) for r in refs)
    ):
        insp = _owner(insp) if "." in insp else ""
    return insp


def make_group(
    block: nn.Module,
    fold: FoldRule,
    refs: tuple[WeightRef, ...],
    channels: int,
    inspect: str | None = None,
) -> ScaleGroup:
    return ScaleGroup(
        producer=fold.path,
        fold=fold,
        consumers=tuple(consumer_name(block, r) for r in refs),
        inspect=_inspect(block, fold, refs) if inspect is None else inspect,
        weights=refs,
        channels=channels,
    )
