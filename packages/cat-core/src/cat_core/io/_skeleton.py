"""A reader's model: built from config.json on the meta device, given its quantized linears and
scaled activations, checked tensor by tensor against the files, then filled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cat_core.io._errors import CheckpointError
from cat_core.io._state import unique_state
from cat_core.nn import QuantLinear, _linear_at, _module_at, _set_module


def _torch_dtype(name: Any) -> torch.dtype:
    if isinstance(name, str):
        dt = getattr(torch, name.removeprefix("torch."), None)
        if isinstance(dt, torch.dtype):
            return dt
    return torch.float32


def skeleton(cfg: dict[str, Any], model_kwargs: dict[str, Any] | None = None,
             dtype: torch.dtype | None = None) -> tuple[nn.Module, torch.dtype]:
    """The model of ``cfg`` with parameters on the meta device (no memory, no download).

    Non-persistent buffers (rotary ``inv_freq``...) are computed for real: they are not in any
    checkpoint. ``dtype``: build the floating parameters in this dtype instead of the one
    config.json names. Returns the model and the dtype its floating parameters were built in."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {k: v for k, v in cfg.items() if k != "quantization_config"}
    if "model_type" not in cfg:
        raise CheckpointError("config.json has no model_type: cannot build the model")
    dtype = dtype or _torch_dtype(cfg.get("dtype", cfg.get("torch_dtype")))
    model_type = cfg.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **cfg)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"config.json: cannot build a config for model_type={model_type!r}: {e}") from e
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **(model_kwargs or {}))
    # tie before computing the expected tensors: a tied lm_head is saved once, under the
    # embedding's name
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model, dtype


def install_quant_linears(
    model: nn.Module, settings: dict[str, tuple[int, int, bool, torch.dtype]]
) -> None:
    """Replace each named linear of a meta skeleton by an empty (meta) QuantLinear with its
    (bits, group_size, sym, scale dtype)."""
    for name, (bits, group_size, sym, scale_dtype) in settings.items():
        mod, (n, k) = _linear_at(
            model, name, error=CheckpointError,
            missing=f"quantization_config names module {name!r}, which this model does not have",
            not_linear=f"quantization_config names {name!r}, a {{kind}}, not a linear layer",
        )
        if group_size != -1 and k % group_size:
            raise CheckpointError(f"group_size={group_size} does not divide in_features={k} of {name!r}")
        bias = getattr(mod, "bias", None)
        q = QuantLinear(
            k, n, bits, group_size, sym=sym, bias=bias is not None, scale_dtype=scale_dtype,
            bias_dtype=bias.dtype if bias is not None else torch.float32, device="meta",
        )
        _set_module(model, name, q)


def install_scaled_activations(model: nn.Module, shapes: dict[str, tuple[list[int], torch.dtype]]) -> None:
    """Wrap each activation at ``path`` in ``ScaledActivation`` with a meta ``scales`` buffer of the
    shape/dtype found in the checkpoint header (its length is not derivable from the module)."""
    from cat_core.graph import ScaledActivation

    for path, (shape, dtype) in shapes.items():
        mod = _module_at(model, path)
        if mod is None:
            raise CheckpointError(f"activation_scales names {path!r}, which this model does not have")
        if len(shape) != 1 or not dtype.is_floating_point:
            raise CheckpointError(f"tensor '{path}.scales' must be a 1-D float vector, got shape {shape} {dtype}")
        _set_module(model, path, ScaledActivation(mod, torch.empty(shape, dtype=dtype, device="meta")))


def expected_from(model: nn.Module) -> dict[str, tuple[list[int], torch.dtype]]:
    return {k: (list(t.shape), t.dtype) for k, t in unique_state(model).items()}


def check_tensors(
    path: Path,
    headers: dict[str, tuple[str, list[int], torch.dtype]],
    expected: dict[str, tuple[list[int], torch.dtype]],
    hint: str = "",
) -> None:
    """Every expected tensor present with its exact shape and dtype, nothing else."""
    hint = f" ({hint})" if hint else ""
    missing = [k for k in expected if k not in headers]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: missing tensor {missing[0]!r}{more}{hint}")
    for key, (fname, shape, dtype) in headers.items():
        if key not in expected:
            raise CheckpointError(f"{path / fname}: unexpected tensor {key!r}{hint}")
        eshape, edtype = expected[key]
        if list(shape) != list(eshape):
            raise CheckpointError(
                f"{path / fname}: tensor {key!r} has shape {list(shape)}, expected {list(eshape)}{hint}"
            )
        if dtype != edtype:
            raise CheckpointError(f"{path / fname}: tensor {key!r} has dtype {dtype}, expected {edtype}{hint}")


def finish_load(
    model: nn.Module, state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None, device: torch.device
) -> nn.Module:
    """Assign the tensors into the meta skeleton, re-tie shared weights, check nothing stayed on
    meta, convert the floating weights to ``dtype`` (QuantLinear keeps its scale dtype)."""
    model.load_state_dict(state, strict=False, assign=True)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise CheckpointError(f"{path}: no data for {name!r} after loading (a tensor is missing)")
    # non-persistent buffers (rotary tables) were built on the CPU: move them too
    model.to(device)
    if dtype is not None:
        _cast_stored(model, dtype)
    model.eval()
    return model


def _cast_stored(model: nn.Module, dtype: torch.dtype) -> None:
    """``model.to(dtype)`` for what a checkpoint stores (parameters, persistent buffers), not for
    the tables computed at build time (rotary ``inv_freq``): transformers keeps those in float32
    whatever the model's dtype, and rounding them to 16 bits moves every position's angle.
    QuantLinear's scales keep their storage dtype."""
    for mod in model.modules():
        for p in mod._parameters.values():
            if p is not None and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)  # in place: tied parameters stay one object
        keep = set(mod._non_persistent_buffers_set) | ({"scales"} if isinstance(mod, QuantLinear) else set())
        for name, b in mod._buffers.items():
            if b is not None and b.is_floating_point() and name not in keep:
                mod._buffers[name] = b.to(dtype)
