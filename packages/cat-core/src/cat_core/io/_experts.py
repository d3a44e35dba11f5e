"""Mixture-of-experts layers that transformers fuses but a checkpoint stores per expert: recording
which were unfused on save, and unfusing the same ones of a reader's skeleton."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from cat_core.io._errors import CheckpointError


def unfused_record(model: nn.Module) -> dict[str, Any]:
    """``{"unfused_experts": {path: layout}}`` when the model has unfused experts (else ``{}``):
    a reader must unfuse the same modules of the skeleton before loading."""
    from cat_core.moe import unfused_experts_layouts

    lay = unfused_experts_layouts(model)
    return {"unfused_experts": dict(sorted(lay.items()))} if lay else {}


def unfuse_recorded(model: nn.Module, qcfg: Any, path: Path) -> None:
    """Unfuse the experts a checkpoint's quantization_config records (see :func:`unfused_record`)."""
    from cat_core.moe import ExpertsError, unfuse_skeleton

    rec = qcfg.get("unfused_experts") if isinstance(qcfg, dict) else None
    if not rec:
        return
    try:
        unfuse_skeleton(model, rec)
    except ExpertsError as e:
        raise CheckpointError(f"{path / 'config.json'}: {e}") from e

_EXPERT_LINEAR = re.compile(r"^(.+)\.\d+\.(gate_proj|up_proj|down_proj)$")


def unfuse_for_names(model: nn.Module, names: list[str], path: Path) -> None:
    """Checkpoints of other tools store MoE experts per expert (``...experts.{e}.gate_proj``) where
    this transformers fuses them: unfuse those experts modules of the skeleton (no record needed)."""
    from cat_core.moe import ExpertsError, _recognise, unfuse_skeleton

    todo: dict[str, str] = {}
    for n in names:
        m = _EXPERT_LINEAR.match(n)
        if not m or m.group(1) in todo:
            continue
        try:
            model.get_submodule(n)
            continue  # the module exists as such
        except AttributeError:
            pass
        try:
            info = _recognise(model.get_submodule(m.group(1)))
        except AttributeError:
            continue
        if info is not None and not isinstance(info, str):
            todo[m.group(1)] = info.layouts[0]
    if todo:
        try:
            unfuse_skeleton(model, todo)
        except ExpertsError as e:  # pragma: no cover - _recognise said it fits
            raise CheckpointError(f"{path}: {e}") from e
