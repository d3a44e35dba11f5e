"""Decode steps of a quantized model in one native call each (CPU), under the model's own API.

A generated token of a small quantized model costs ~25 ms in transformers' Python and aten ops
while its weights need ~3 ms of DRAM time (benchmarks/results/decode_2026-12-07). After
:func:`enable_native_decode`, every single-token step of a batch of sequences with a KV cache (left
padding included) runs as one call to :class:`cat_kernels.Decoder`: the embedding lookup and the output head stay the
model's own modules, everything between them is native. ``model.generate()`` (greedy, sampling,
streamers), ``model(...)`` with a cache, and the front-ends all take it; nothing else changes:

- prompts (more than one new token) run through the model as before, which keeps prefill on the
  faster routes (dense BLAS for long prompts), and their cache is then copied once into the
  native cache;
- anything the native step does not cover (masks other than left padding, ``inputs_embeds``,
  attention or hidden-state outputs, labels, other cache types) runs through the model as before.

The native cache lives inside transformers' own ``DynamicCache``: its layers read their keys and
values as views of the native buffer, so the cache a caller holds is always complete; a plain
step that then updates it (or a crop, reset or beam reorder) turns those layers back into plain
ones and the next native step copies the cache in again.

Numerics: the same kernels compute the linears; norms, rotary embedding, attention and the MLP
follow transformers' float32 equations with a different order of additions inside reductions, so
logits agree with the plain path's to float32 rounding (tests/test_native_decode.py bounds the
difference) and greedy tokens match.

Covered: Llama, Mistral, Qwen2, Qwen3 (and models of those classes) without sliding-window
attention, float32 activations, every
linear of every layer a CPU :class:`~cat_core.nn.QuantLinear`. Anything else raises
:class:`NativeDecodeError` naming what does not fit.
"""

from __future__ import annotations

import functools
import os
import types
from typing import Any

import torch
from torch import nn

from cat_core.nn._linear import QuantLinear

#: model_type values whose decoder layers have the structure the native step computes.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_STATIC_ROPE = ("default", "linear", "llama3", "yarn")
_PROJ = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
         ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))
_MIN_CAPACITY = 256
# keyword arguments a native step leaves to the plain path whenever they ask for something
_PLAIN_ONLY = ("inputs_embeds", "labels", "output_attentions", "output_hidden_states")


class NativeDecodeError(ValueError):
    """The model does not fit the native decode step; the message says what."""


def enable_native_decode(model: nn.Module) -> None:
    """Route ``model``'s single-token cached steps through :class:`cat_kernels.Decoder`.

    Call after quantizing/loading and after any head quantization. The native view follows the
    model's weights in place (``load_state_dict``); when they are replaced (a device move,
    ``replace_linears``) it is rebuilt at the next step, or, where the model no longer fits (moved
    to a GPU, converted to 16 bits), dropped for the plain path. A deep copy of the model builds
    its own view on first use. :func:`disable_native_decode` undoes it.

    Raises:
        NativeDecodeError: the architecture, dtype, device or a layer does not fit (the message
            names it); the model is left as it was.
    """
    own = model.__dict__.get("forward")
    if own is not None and "_cat_native_decode" not in model.__dict__:
        # e.g. accelerate's device hooks: the plain path must keep going through them
        raise _fail(f"the model's forward is already replaced on the instance ({own!r})")
    native = _Native(model)
    model.__dict__["_cat_native_decode"] = _Slot(native)
    model.forward = types.MethodType(_wrapper(type(model)), model)


def disable_native_decode(model: nn.Module) -> bool:
    """Undo :func:`enable_native_decode`; returns whether it was enabled."""
    if model.__dict__.pop("_cat_native_decode", None) is None:
        return False
    model.__dict__.pop("forward", None)  # back to the class's forward
    return True


def native_decode_enabled(model: nn.Module) -> bool:
    """Whether :func:`enable_native_decode` is in effect (the step may still stand aside where a
    call or the model no longer fits)."""
    return "_cat_native_decode" in model.__dict__


def try_enable_native_decode(model: nn.Module) -> str | None:
    """:func:`enable_native_decode` where the model fits; returns None when enabled, else why not
    (also when the environment sets ``CAT_NATIVE_DECODE=0``). For front-ends and loaders that take
    the fast path by default."""
    if os.environ.get("CAT_NATIVE_DECODE", "1").strip() == "0":
        return "native decode step: off (CAT_NATIVE_DECODE=0)"
    try:
        enable_native_decode(model)
    except NativeDecodeError as e:
        return str(e)
    return None


class _Slot:
    """The model's native view; a copy of the model (deepcopy, pickle) starts without one and
    builds its own from its own weights."""

    def __init__(self, native: _Native | None) -> None:
        self.native = native
        self.failed: str | None = None

    def __deepcopy__(self, memo: dict) -> _Slot:
        return _Slot(None)

    def __reduce__(self) -> tuple:
        return (_Slot, (None,))

    def get(self, model: nn.Module) -> _Native | None:
        native = self.native
        if native is not None and native.current():
            return native
        self.native = None
        if self.failed is None:
            try:
                self.native = _Native(model)
            except NativeDecodeError as e:
                self.failed = str(e)  # e.g. moved to a GPU: the plain path from now on
        return self.native


@functools.lru_cache(maxsize=None)
def _wrapper(cls: type) -> Any:
    """``cls.forward`` with the native step in front; signature and docs are the class's (generate()
    and cached_forward read the parameter names)."""
    plain_forward = cls.forward

    @functools.wraps(plain_forward)
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        slot = self.__dict__.get("_cat_native_decode")
        native = slot.get(self) if slot is not None else None
        plain = functools.partial(plain_forward, self)
        return plain(*args, **kwargs) if native is None else native.forward(plain, args, kwargs)

    return forward


def _fail(what: str) -> NativeDecodeError:
    return NativeDecodeError(f"native decode step: {what}")


def _f32(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.device.type != "cpu":
        raise _fail(f"{what} is on {t.device}; the native step runs on the CPU")
    if t.dtype != torch.float32:
        raise _fail(f"{what} is {t.dtype}; the native step needs a float32 model (model.float())")
    return t.detach().contiguous()


def _rms_norm(mod: nn.Module, what: str) -> tuple[torch.Tensor, float]:
    eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", None))
    if not type(mod).__name__.endswith("RMSNorm") or eps is None or getattr(mod, "weight", None) is None:
        raise _fail(f"{what} is a {type(mod).__name__}, not an RMSNorm with a weight")
    return _f32(mod.weight, what), float(eps)


class _Native:
    """The model's weights as a cat_kernels.Decoder, and the step that uses it."""

    def __init__(self, model: nn.Module) -> None:
        import cat_kernels as ck

        cfg = getattr(model, "config", None)
        mtype = getattr(cfg, "model_type", None)
        if mtype not in SUPPORTED_MODEL_TYPES:
            raise _fail(f"model_type {mtype!r} is not covered (covered: {', '.join(SUPPORTED_MODEL_TYPES)})")
        body = getattr(model, "model", None)
        layers = getattr(body, "layers", None)
        if body is None or layers is None or len(layers) == 0:
            raise _fail(f"{type(model).__name__} has no .model.layers")
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise _fail(f"hidden_act {cfg.hidden_act!r} (the native MLP is SiLU-gated)")
        rope = getattr(body, "rotary_emb", None)
        inv_freq = getattr(rope, "inv_freq", None)
        rope_type = getattr(rope, "rope_type", "default")
        if inv_freq is None:
            raise _fail("the model has no rotary embedding with inv_freq")
        if rope_type not in _STATIC_ROPE:
            raise _fail(f"rope_type {rope_type!r} changes with the sequence length (covered: {', '.join(_STATIC_ROPE)})")
        attn0 = layers[0].self_attn
        head_dim = int(getattr(attn0, "head_dim", 0))
        heads, kv_heads = int(cfg.num_attention_heads), int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        if inv_freq.numel() * 2 != head_dim:
            raise _fail(f"rotary embedding covers {inv_freq.numel() * 2} of {head_dim} head dimensions (partial rotary)")
        windows = {getattr(lay.self_attn, "sliding_window", None) for lay in layers}
        if mtype == "mistral":  # Mistral's attention reads the window from the config
            windows.add(getattr(cfg, "sliding_window", None))
        windows.discard(None)
        if windows:
            raise _fail(f"sliding-window attention (window {min(windows)}) is not covered")
        norm_w, eps = _rms_norm(body.norm, "model.norm")
        mlp_w = getattr(cfg, "intermediate_size", None)
        self.dec = ck.Decoder(hidden=int(cfg.hidden_size), heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                              intermediate=int(mlp_w), eps=eps, attn_scale=float(attn0.scaling),
                              inv_freq=_f32(inv_freq.float(), "rotary inv_freq"), final_norm=norm_w,
                              rope_scale=float(getattr(rope, "attention_scaling", 1.0)))
        for i, lay in enumerate(layers):
            self._add_layer(i, lay)
        self.model = model
        if model.get_input_embeddings() is None or model.get_output_embeddings() is None:
            raise _fail("the model has no input embedding or output head")
        self.hidden = int(cfg.hidden_size)
        q0 = layers[0].self_attn.q_proj
        self._probe = (q0, q0._buffers["qweight"], body.norm.weight, body.norm.weight.data_ptr())

    def current(self) -> bool:
        """Whether the weights are still the tensors this view was built on (a device or dtype
        move replaces every one of them)."""
        mod, qweight, norm, ptr = self._probe  # a move replaces buffers, and parameters' data
        return mod._buffers["qweight"] is qweight and norm.data_ptr() == ptr

    def _add_layer(self, i: int, lay: nn.Module) -> None:
        linears, biases = {}, {}
        for (part, name), key in zip(_PROJ, ("q", "k", "v", "o", "gate", "up", "down")):
            mod = getattr(getattr(lay, part, None), name, None)
            where = f"layer {i} {part}.{name}"
            if not isinstance(mod, QuantLinear):
                raise _fail(f"{where} is a {type(mod).__name__}, not a QuantLinear (quantize the model first)")
            if mod.qweight.device.type != "cpu":
                raise _fail(f"{where} is on {mod.qweight.device}; the native step runs on the CPU")
            linears[key] = mod._packed_weight()
            if mod.bias is not None:
                biases[key] = _f32(mod.bias, f"{where}.bias")
        attn = lay.self_attn
        norms = {"in_norm": _rms_norm(lay.input_layernorm, f"layer {i} input_layernorm")[0],
                 "post_norm": _rms_norm(lay.post_attention_layernorm, f"layer {i} post_attention_layernorm")[0]}
        for key in ("q_norm", "k_norm"):
            if getattr(attn, key, None) is not None:
                norms[key] = _rms_norm(getattr(attn, key), f"layer {i} self_attn.{key}")[0]
        self.dec.add_layer(**norms, **linears, biases=biases)

    # ---------------------------------------------------------------- the step

    def forward(self, original: Any, args: tuple, kwargs: dict) -> Any:
        ids = kwargs.get("input_ids")
        cache_arg = "cache" if "cache" in kwargs else "past_key_values"
        cache = kwargs.get(cache_arg)
        if (args or ids is None or ids.dim() != 2 or kwargs.get("use_cache") is False
                or kwargs.get("return_dict") is False or any(kwargs.get(k) for k in _PLAIN_ONLY)):
            return original(*args, **kwargs)
        fits, starts = _left_padding(kwargs.get("attention_mask"))
        if not fits:
            return original(**kwargs)
        state = _State.of(cache)
        if ids.shape[1] > 1 or cache is None or state is None and cache.get_seq_length() == 0:
            out = original(**kwargs)  # a prompt: the plain path's prefill routes are faster
            # (reading the old name's alias warns on transformers 5: ask for the one it has)
            self._adopt(out["cache"] if "cache" in out else out.get("past_key_values"))
            return out
        if state is None:
            state = self._adopt(cache)
            if state is None:
                return original(**kwargs)
        pos, batch = state.length, ids.shape[0]
        if batch != state.batch:
            return original(**kwargs)
        at, ids_at = kwargs.get("cache_position"), kwargs.get("position_ids")
        first = 0 if starts is None else int(starts[0])  # row 0's position ids start there
        if (at is not None and int(at[0]) != pos) or (ids_at is not None and int(ids_at[0, -1]) != pos - first):
            return original(**kwargs)
        # looked up per call: quantize_head may replace both after this view was built
        x = self.model.get_input_embeddings()(ids).reshape(batch, 1, self.hidden)
        if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous():
            return original(**kwargs)
        state.reserve(pos + 1)
        int8_x = self._probe[0].int8_activations  # set_int8_activations sets every layer alike
        if self.dec.int8_activations != int8_x:
            self.dec.int8_activations = int8_x
        self.dec.step(x, pos, state.buf, state.out, starts)
        state.length = pos + 1
        logits = self.model.get_output_embeddings()(state.out.view(batch, 1, self.hidden))
        from transformers.modeling_outputs import CausalLMOutputWithPast

        return CausalLMOutputWithPast(**{"logits": logits, _output_cache_name(): cache})

    def _adopt(self, cache: Any) -> _State | None:
        """Copy a plain DynamicCache's keys and values into a native buffer and make its layers
        views of it; None where the cache does not fit (the plain path then goes on)."""
        from transformers.cache_utils import DynamicCache, DynamicLayer

        if type(cache) is not DynamicCache or len(cache.layers) != self.dec.n_layers:
            return None
        if any(type(layer) not in (DynamicLayer, _native_layer_class()) for layer in cache.layers):
            return None
        length = cache.get_seq_length()
        if length == 0:
            return None
        first = cache.layers[0].keys
        if first.dim() != 4 or first.dtype != torch.float32 or first.device.type != "cpu":
            return None
        state = _State(self.dec, length, first.shape[0])
        for i, layer in enumerate(cache.layers):
            state.buf[i, 0, :, :, :length] = layer.keys
            state.buf[i, 1, :, :, :length] = layer.values
        for i, layer in enumerate(cache.layers):
            layer.__dict__.pop("keys", None)
            layer.__dict__.pop("values", None)
            layer.__dict__["_cat_state"], layer.__dict__["_cat_index"] = state, i
            layer.__class__ = _native_layer_class()
        cache.__dict__["_cat_native"] = state
        return state


def _left_padding(mask: Any) -> tuple[bool, torch.Tensor | None]:
    """Whether a 2-D attention mask fits the native step, and each row's first attended index when
    some rows are left-padded (``0 ... 0 1 ... 1``, what tokenizers give generate()); None when
    every position is attended. Any other mask (holes, right padding, 4-D) does not fit."""
    if mask is None:
        return True, None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return False, None
    if bool(mask.all()):
        return True, None
    ones = mask.to(torch.bool)
    first = ones.to(torch.int8).argmax(-1)  # the first attended index (argmax takes the first)
    if not bool((ones.sum(-1) == ones.shape[1] - first).all()) or not bool(ones[:, -1].all()):
        return False, None
    return True, first.to(torch.int64).contiguous()


@functools.lru_cache(maxsize=1)
def _output_cache_name() -> str:
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class _State:
    """The native KV buffer of a batch of sequences ``[layers, 2, batch, kv_heads, capacity,
    head_dim]``, how many positions it holds, and the step's output buffer."""

    def __init__(self, dec: Any, length: int, batch: int) -> None:
        self.dec = dec
        self.length = length
        self.batch = batch
        self.live = True
        cap = _MIN_CAPACITY
        while cap < length + 64:
            cap *= 2
        self.buf = torch.zeros(dec.kv_shape(cap, batch), dtype=torch.float32)
        self.out = torch.empty(batch, dec.hidden, dtype=torch.float32)

    @staticmethod
    def of(cache: Any) -> _State | None:
        state = getattr(cache, "__dict__", {}).get("_cat_native")
        if state is None or not state.live or type(cache.layers[0]) is not _native_layer_class():
            return None
        return state

    def reserve(self, positions: int) -> None:
        cap = self.buf.shape[4]
        if positions <= cap:
            return
        while cap < positions:
            cap *= 2
        bigger = torch.zeros(self.dec.kv_shape(cap, self.batch), dtype=torch.float32)
        bigger[:, :, :, :, : self.length] = self.buf[:, :, :, :, : self.length]
        self.buf = bigger

    def view(self, index: int, which: int) -> torch.Tensor:
        return self.buf[index, which, :, :, : self.length]


def _buffer_view(which: int) -> property:
    """A cache layer's keys (0) or values (1) as a view of the native buffer; assigning one
    retires the view (see _NativeLayer)."""

    def get(layer: Any) -> torch.Tensor:
        return layer.__dict__["_cat_state"].view(layer.__dict__["_cat_index"], which)

    def set_(layer: Any, value: torch.Tensor) -> None:
        layer._detach()
        layer.__dict__["keys" if which == 0 else "values"] = value

    return property(get, set_)


@functools.lru_cache(maxsize=1)
def _native_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class _NativeLayer(DynamicLayer):
        """A DynamicLayer whose keys/values are views of the native buffer. Assigning them (a
        plain update, crop, reset, reorder) turns it back into a plain DynamicLayer and retires
        the native state: the next native step copies the cache in again."""

        def _detach(self) -> None:
            d = self.__dict__
            state, i = d.pop("_cat_state"), d.pop("_cat_index")
            state.live = False
            d["keys"], d["values"] = state.view(i, 0), state.view(i, 1)
            self.__class__ = DynamicLayer

        keys = _buffer_view(0)
        values = _buffer_view(1)

    return _NativeLayer
