"""Shared machinery of the checkpoint writers and readers: atomic directories, safetensors
shards with an index, a model skeleton on the meta device, and checked tensor loading.

No pickle anywhere: configs are JSON, tensors are safetensors.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cat_core.nn import QuantLinear, _linear_shape, _module_at, _set_module

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, corrupt or not of the expected kind."""


# --------------------------------------------------------------------------- sizes


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as ``"5GB"``, ``"500MB"``, ``"2GiB"``."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size must be an int (bytes) or like '5GB' / '500MB', got {size!r}")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0]]
    n = int(float(m.group(1)) * base**power)
    if n <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return n


# --------------------------------------------------------------------------- writing


def _write_shard(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write one safetensors file. A separate function so tests can simulate a full disk."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Persistent params/buffers, each tensor once (a tied lm_head is kept under the first name
    only; ``tie_weights`` restores it on load). Works on meta models too (identity, not storage)."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        out[name] = t
    return out


def resolve_offloaded(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with every ``meta`` entry replaced by its value from accelerate's offload store
    (a model dispatched with cpu/disk offloading keeps those weights there). Raises ValueError
    for a meta tensor that is not offloaded (the model has no values to save)."""
    from cat_core._offload import offload_index, offloaded_tensor

    index = offload_index(model) if any(t.device.type == "meta" for t in tensors.values()) else {}
    out = {}
    for name, t in tensors.items():
        if t.device.type == "meta":
            real = offloaded_tensor(model, name, index)
            if real is None:
                raise ValueError(f"{name}: on the meta device and not offloaded by accelerate; "
                                 "the model has no values to save")
            t = real
        out[name] = t
    return out


def write_shards(
    out: Path,
    tensors: dict[str, torch.Tensor],
    max_shard_size: int | str,
    metadata: dict[str, str],
    progress: bool = True,
) -> list[str]:
    """Write ``tensors`` as ``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` plus an
    index. Returns the file names."""
    from tqdm.auto import tqdm

    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nb = t.numel() * t.element_size()
        if shards[-1] and size + nb > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nb
    n = len(shards)
    names = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"saving {out.name}", disable=not progress)
    weight_map = {}
    try:
        for fname, shard in zip(names, shards, strict=True):
            # safetensors wants contiguous CPU tensors that do not share storage.
            cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in shard.items()}
            _write_shard(cpu, out / fname, metadata)
            weight_map.update({k: fname for k in shard})
            bar.update(sum(v.numel() * v.element_size() for v in cpu.values()))
    finally:
        bar.close()
    if n > 1:
        index = {"metadata": {"total_size": total, **metadata}, "weight_map": weight_map}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return names


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``out_dir``; when the block succeeds, move it
    into place. On any error the temporary directory is removed and ``out_dir`` is untouched.

    With ``overwrite`` an existing ``out_dir`` is renamed away, the new one renamed in, and the
    old one deleted, so a reader never sees a half-written directory.
    """
    out = Path(out_dir).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = out.parent / f".{out.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{tag}"
    try:
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        if old.exists() and not out.exists():
            os.replace(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


_STORAGE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_storage_dtype(dtype: torch.dtype | None) -> None:
    if dtype is not None and dtype not in _STORAGE_DTYPES:
        raise ValueError(f"dtype must be torch.float16, torch.bfloat16, torch.float32 or None, got {dtype!r}")


def cast_unquantized(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None,
                     keep: set[str]) -> dict[str, torch.Tensor]:
    """``tensors`` with every floating tensor not named in ``keep`` converted to ``dtype``.

    The skeleton a reader builds from config.json has one dtype for all its floating tensors, so
    the writer stores them in one dtype and records it; the quantized layers' own arrays (codes,
    scales in their storage dtype, foreign layouts) are listed in ``keep``."""
    if dtype is None:
        return tensors
    return {k: (t.to(dtype) if t.is_floating_point() and k not in keep and t.dtype != dtype else t)
            for k, t in tensors.items()}


def write_config(out: Path, model: nn.Module, quantization_config: dict[str, Any], tokenizer: Any,
                 dtype: torch.dtype | None = None) -> None:
    """config.json (with ``quantization_config``), generation_config.json, tokenizer files.
    ``dtype``: the dtype the unquantized tensors were stored in, when converted."""
    cfg = model.config.to_dict()
    if dtype is not None:
        name = str(dtype).removeprefix("torch.")
        cfg["dtype"] = name
        if "torch_dtype" in cfg:
            cfg["torch_dtype"] = name
    cfg["quantization_config"] = quantization_config
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))


def quantized_modules(model: nn.Module) -> dict[str, QuantLinear]:
    mods = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not mods:
        raise ValueError("the model has no QuantLinear modules: call cat_core.nn.replace_linears first")
    return mods


def uniform_settings(mods: dict[str, QuantLinear]) -> tuple[int, int, bool, torch.dtype]:
    """(bits, group_size, sym, scale dtype) shared by every QuantLinear, else a clear error."""
    seen = {(m.bits, m.group_size, m.sym, m.scales.dtype) for m in mods.values()}
    if len(seen) != 1:
        raise ValueError(f"all quantized linears must share bits/group_size/sym/scale dtype, found {sorted(map(str, seen))}")
    return next(iter(seen))


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


def _unfuse_for_names(model: nn.Module, names: list[str], path: Path) -> None:
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


def unconverted_linears(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if not isinstance(m, QuantLinear) and _linear_shape(m) is not None]


# --------------------------------------------------------------------------- reading


def read_config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing config.json")
    try:
        return json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e


def _torch_dtype(name: Any) -> torch.dtype:
    if isinstance(name, str):
        dt = getattr(torch, name.removeprefix("torch."), None)
        if isinstance(dt, torch.dtype):
            return dt
    return torch.float32


def skeleton(cfg: dict[str, Any], model_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, torch.dtype]:
    """The model of ``cfg`` with parameters on the meta device (no memory, no download).

    Non-persistent buffers (rotary ``inv_freq``...) are computed for real: they are not in any
    checkpoint. Returns the model and the dtype its floating parameters were built in."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {k: v for k, v in cfg.items() if k != "quantization_config"}
    if "model_type" not in cfg:
        raise CheckpointError("config.json has no model_type: cannot build the model")
    dtype = _torch_dtype(cfg.get("dtype", cfg.get("torch_dtype")))
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
        mod = _module_at(model, name)
        if mod is None:
            raise CheckpointError(f"quantization_config names module {name!r}, which this model does not have")
        shape = _linear_shape(mod)
        if shape is None:
            raise CheckpointError(f"quantization_config names {name!r}, a {type(mod).__name__}, not a linear layer")
        n, k = shape
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


def read_headers(path: Path) -> dict[str, tuple[str, list[int], torch.dtype]]:
    """{tensor name: (file name, shape, dtype)} from the safetensors headers (no data read).

    Checks the index against the files: missing shard, tensor listed in the index but not in its
    file, truncated or corrupt header (safetensors verifies the header covers the whole file)."""
    from safetensors import safe_open

    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from e
        files = sorted(set(weight_map.values()))
    elif (path / SINGLE_FILE).is_file():
        weight_map = {}
        files = [SINGLE_FILE]
    else:
        found = sorted(p.name for p in path.glob("*.safetensors"))
        hint = f" (found {found} but no {INDEX_FILE})" if found else ""
        raise CheckpointError(f"{path}: missing {SINGLE_FILE} or {INDEX_FILE}{hint}")
    out: dict[str, tuple[str, list[int], torch.dtype]] = {}
    for fname in files:
        fpath = path / fname
        if not fpath.is_file():
            raise CheckpointError(f"{fpath}: shard listed in {INDEX_FILE} is missing")
        try:
            with safe_open(str(fpath), framework="pt") as f:
                for key in f.keys():
                    sl = f.get_slice(key)
                    st_dtype = sl.get_dtype()
                    if st_dtype not in _ST_DTYPES:
                        raise CheckpointError(f"{fpath}: tensor {key!r} has unsupported dtype {st_dtype}")
                    if key in out:
                        raise CheckpointError(f"{fpath}: tensor {key!r} also appears in {out[key][0]}")
                    out[key] = (fname, list(sl.get_shape()), _ST_DTYPES[st_dtype])
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error type for bad headers
            raise CheckpointError(f"{fpath}: truncated or corrupt safetensors file ({e})") from e
    for key, fname in weight_map.items():
        if key not in out or out[key][0] != fname:
            raise CheckpointError(f"{path / fname}: tensor {key!r} listed in {INDEX_FILE} is not in that file")
    return out


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


def expected_from(model: nn.Module) -> dict[str, tuple[list[int], torch.dtype]]:
    return {k: (list(t.shape), t.dtype) for k, t in unique_state(model).items()}


def load_tensors(
    path: Path,
    headers: dict[str, tuple[str, list[int], torch.dtype]],
    device: torch.device,
    transform: Callable[[str, torch.Tensor], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Read every tensor (file by file); corrupt data sections raise :class:`CheckpointError`."""
    from safetensors import safe_open

    by_file: dict[str, list[str]] = {}
    for key, (fname, _, _) in headers.items():
        by_file.setdefault(fname, []).append(key)
    out = {}
    for fname, keys in by_file.items():
        try:
            with safe_open(str(path / fname), framework="pt", device=str(device)) as f:
                for key in keys:
                    out[key] = f.get_tensor(key)
        except Exception as e:
            raise CheckpointError(f"{path / fname}: could not read tensor data ({e})") from e
    return out


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
        model.to(dtype)
    model.eval()
    return model


def load_generation_and_tokenizer(model: nn.Module, path: Path) -> Any:
    if (path / "generation_config.json").is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(path))
    if any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    return None


# --------------------------------------------------------------------------- bit streams

# Columns per chunk are chosen so that the int64 bit planes stay around 64 MiB.
_CHUNK_BYTES = 64 << 20


def pack_stream(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``[L, C]`` codes along L into ``[L * bits / 32, C]`` int32: column c is one
    little-endian bit stream, value i at stream bits ``[bits*i, bits*i + bits)`` (so 4-bit puts
    value i at bits ``4*(i%8)`` of word ``i//8``; 3-bit puts 32 values in 3 words)."""
    length, cols = values.shape
    if (length * bits) % 32:
        raise ValueError(f"cannot pack {length} {bits}-bit values into whole 32-bit words")
    out = torch.empty(length * bits // 32, cols, dtype=torch.int32)
    step = max(1, _CHUNK_BYTES // max(1, length * bits * 8))
    bit_idx = torch.arange(bits, dtype=torch.int64).view(1, bits, 1)
    shifts = torch.arange(32, dtype=torch.int64).view(1, 32, 1)
    for c0 in range(0, cols, step):
        v = values[:, c0:c0 + step].to(torch.int64)
        planes = ((v.unsqueeze(1) >> bit_idx) & 1).reshape(length * bits // 32, 32, -1)
        words = (planes << shifts).sum(1)
        out[:, c0:c0 + step] = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return out


def unpack_stream(words: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Inverse of :func:`pack_stream`: ``[length * bits / 32, C]`` int32 -> ``[length, C]`` uint8."""
    n_words, cols = words.shape
    if n_words * 32 != length * bits:
        raise ValueError(f"{n_words} words do not hold {length} {bits}-bit values")
    out = torch.empty(length, cols, dtype=torch.uint8)
    step = max(1, _CHUNK_BYTES // max(1, length * bits * 8))
    bit_idx = torch.arange(bits, dtype=torch.int64).view(1, bits, 1)
    shifts = torch.arange(32, dtype=torch.int64).view(1, 32, 1)
    for c0 in range(0, cols, step):
        w = words[:, c0:c0 + step].to(torch.int64) & 0xFFFFFFFF
        planes = ((w.unsqueeze(1) >> shifts) & 1).reshape(length, bits, -1)
        out[:, c0:c0 + step] = (planes << bit_idx).sum(1).to(torch.uint8)
    return out


# --------------------------------------------------------------------------- foreign formats


def export_dir(
    model: nn.Module,
    out_dir: str | os.PathLike,
    tokenizer: Any,
    overwrite: bool,
    max_shard_size: int | str,
    qcfg: dict[str, Any],
    convert: Callable[[str, QuantLinear], dict[str, torch.Tensor]],
    progress: bool,
    extra_json: dict[str, dict[str, Any]] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` with each QuantLinear's native buffers replaced by ``convert(name, mod)``
    (suffix -> tensor; the bias stays under its own name); the other floating tensors in
    ``dtype`` when given."""
    check_storage_dtype(dtype)
    mods = quantized_modules(model)
    converted = {name: convert(name, mod) for name, mod in mods.items()}  # errors before any IO
    tensors: dict[str, torch.Tensor] = {}
    for key, t in resolve_offloaded(model, unique_state(model)).items():
        owner, _, attr = key.rpartition(".")
        if owner in mods and attr in ("qweight", "scales", "qzeros"):
            if attr == "qweight":
                tensors.update({f"{owner}.{s}": v for s, v in converted[owner].items()})
            continue
        tensors[key] = t
    foreign = {f"{owner}.{s}" for owner, parts in converted.items() for s in parts}
    tensors = cast_unquantized(tensors, dtype, keep=foreign)
    meta = {"format": "pt", "quant_method": str(qcfg["quant_method"])}
    with atomic_dir(out_dir, overwrite) as tmp:
        write_config(tmp, model, qcfg, tokenizer, dtype)
        for fname, content in (extra_json or {}).items():
            (tmp / fname).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        write_shards(tmp, tensors, max_shard_size, meta, progress)
    return Path(out_dir).absolute()


def import_dir(
    path: Path,
    cfg: dict[str, Any],
    foreign_shapes: Callable[[int, int], dict[str, tuple[list[int], torch.dtype]]],
    to_native: Callable[[str, dict[str, torch.Tensor], int, int], Any],
    device: torch.device | str,
    dtype: torch.dtype | None,
    hint: str,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, Any]:
    """Build the skeleton, insert a QuantLinear for every ``<name>.qweight`` in the files, check
    all tensors (``foreign_shapes(n, k)``: suffix -> expected shape/dtype), convert each layer with
    ``to_native(name, {suffix: tensor}, n, k) -> QuantizedTensor`` and load the rest."""
    model, _ = skeleton(cfg, model_kwargs)
    unfuse_recorded(model, cfg.get("quantization_config"), path)
    headers = read_headers(path)
    names = sorted(k[: -len(".qweight")] for k in headers if k.endswith(".qweight"))
    if not names:
        raise CheckpointError(f"{path}: no '*.qweight' tensors: not a quantized checkpoint")
    _unfuse_for_names(model, names, path)
    # placeholders give the linear shapes and the expected unquantized tensors
    shapes = {}
    for name in names:
        mod = _module_at(model, name)
        if mod is None:
            raise CheckpointError(f"{path}: tensor '{name}.qweight' belongs to no module of this model")
        shape = _linear_shape(mod)
        if shape is None:
            raise CheckpointError(f"{path}: '{name}' is a {type(mod).__name__}, not a linear layer")
        shapes[name] = (shape, getattr(mod, "bias", None))
    qcfg = cfg.get("quantization_config") or {}
    acts = qcfg.get("activation_scales")
    if acts is None:  # checkpoints from other tools: any 1-D '.scales' outside a quantized layer
        acts = [k[: -len(".scales")] for k, (_, shp, _) in headers.items()
                if k.endswith(".scales") and k[: -len(".scales")] not in shapes and len(shp) == 1]
    install_scaled_activations(model, {p: tuple(headers[f"{p}.scales"][1:]) for p in acts if f"{p}.scales" in headers})
    expected = expected_from(model)
    for name, ((n, k), _) in shapes.items():
        expected.pop(f"{name}.weight", None)
        for suffix, spec in foreign_shapes(n, k).items():
            expected[f"{name}.{suffix}"] = spec
    check_tensors(path, headers, expected, hint)
    raw = load_tensors(path, headers, torch.device("cpu"))
    state: dict[str, torch.Tensor] = {}
    for name, ((n, k), _) in shapes.items():
        parts = {s: raw.pop(f"{name}.{s}") for s in foreign_shapes(n, k)}
        qt = to_native(name, parts, n, k)
        bias = raw.pop(f"{name}.bias", None)
        _set_module(model, name, QuantLinear.from_quantized_tensor(qt, bias))
    state.update(raw)
    finish_load(model, state, path, dtype, torch.device(device))
    tokenizer = load_generation_and_tokenizer(model, path)
    return model, tokenizer
