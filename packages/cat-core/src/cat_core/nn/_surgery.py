"""Model surgery: finding the layers a :class:`QuantLinear` can stand in for, and swapping them in."""

from __future__ import annotations

from torch import nn

from cat_core.nn._linear import QuantLinear
from cat_core.quant import QuantizedTensor


def _is_conv1d(mod: nn.Module) -> bool:
    # transformers' GPT-2 Conv1D (weight stored transposed, [K, N]); matched by class name so
    # that this module does not import transformers.
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and getattr(mod, "weight", None) is not None


def linear_shape(mod: nn.Module) -> tuple[int, int] | None:
    """``(out_features, in_features)`` of a layer :func:`replace_linears` can replace (an
    ``nn.Linear`` or a GPT-2 ``Conv1D``, whose weight is stored ``[in, out]``), else None."""
    if isinstance(mod, nn.Linear):
        return mod.out_features, mod.in_features
    if _is_conv1d(mod):
        k, n = mod.weight.shape
        return n, k
    return None


def _module_at(model: nn.Module, name: str) -> nn.Module | None:
    """The submodule at dotted ``name``, or None when there is none."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _linear_at(
    model: nn.Module, name: str, *, error: type[Exception], missing: str, not_linear: str
) -> tuple[nn.Module, tuple[int, int]]:
    """The layer at dotted ``name`` and its :func:`linear_shape`. Raises ``error(missing)`` when
    there is no module there, ``error(not_linear)`` with ``{kind}`` filled in by the module's
    class name when it is not a layer :func:`replace_linears` can replace."""
    mod = _module_at(model, name)
    if mod is None:
        raise error(missing)
    shape = linear_shape(mod)
    if shape is None:
        raise error(not_linear.format(kind=type(mod).__name__))
    return mod, shape


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at dotted ``name`` (its parent must exist)."""
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attr, new)


def replace_linears(model: nn.Module, quantized: dict[str, QuantizedTensor]) -> nn.Module:
    """Swap each named ``nn.Linear`` (or GPT-2 ``Conv1D``) of ``model`` for a :class:`QuantLinear`.

    ``quantized[name]`` holds ``[N, K]`` = (out_features, in_features) codes (a Conv1D's
    weight ``[K, N]`` is quantized transposed). The new module lands on the device of the old
    weight and keeps its bias. Every name is checked before anything is replaced, so a bad entry
    leaves the model untouched. Returns ``model`` (changed in place).
    """
    plans: list[tuple[str, nn.Module, QuantizedTensor]] = []
    for name, qt in quantized.items():
        mod, shape = _linear_at(
            model, name, error=ValueError, missing=f"replace_linears: model has no module named {name!r}",
            not_linear=f"replace_linears: {name!r} is a {{kind}}, not an nn.Linear or Conv1D",
        )
        if tuple(qt.shape) != shape:
            raise ValueError(
                f"replace_linears: {name!r} has weight [out, in] = {list(shape)} but the quantized "
                f"tensor has shape {list(qt.shape)}"
            )
        plans.append((name, mod, qt))
    for name, mod, qt in plans:
        device = mod.weight.device
        bias = mod.bias.detach() if getattr(mod, "bias", None) is not None else None
        if device.type == "meta":
            # offloaded by accelerate (cpu/disk): the packed layer is a quarter of the size and
            # lives where the layer computes; the bias comes from the offload store
            from cat_core._offload import execution_device, offloaded_tensor

            device = execution_device(mod)
            if bias is not None:
                bias = offloaded_tensor(model, f"{name}.bias")
                if bias is None:
                    raise ValueError(f"replace_linears: the bias of {name!r} is on the meta device and "
                                     "not offloaded by accelerate: the model is incomplete")
        _set_module(model, name, QuantLinear.from_quantized_tensor(qt, bias, device=device))
    return model
