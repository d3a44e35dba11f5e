"""The ``caterpillar`` quantization method for vLLM (imported only by :func:`cat_core.vllm.register`).

vLLM builds its own model (fused ``qkv_proj`` / ``gate_up_proj``, tensor-parallel shards) and
asks this config for a linear method per layer. The method creates the layer's packed
parameters (``qweight``, ``scales``, ``qzeros``: the native checkpoint's tensors, same names,
so vLLM's loader finds them), loads each checkpoint tensor into its place in the fused and
sharded layer (:mod:`cat_core.vllm._packed`), and computes with :class:`cat_core.nn.QuantLinear`
(the ``cat::gemm`` torch op: the same kernels and results as Caterpillar's own model).
"""

from __future__ import annotations

from abc import abstractmethod
from functools import partial
from typing import Any

import torch
from torch.nn import Parameter
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    LinearBase,
    LinearMethodBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    UnquantizedLinearMethod,
)
from vllm.logger import init_logger
from vllm.model_executor.layers import linear as _vllm_linear
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.parameter import GroupQuantScaleParameter, PackedvLLMParameter
from vllm.model_executor.utils import set_weight_attrs

from cat_core.nn import QuantLinear
from cat_core.vllm import _packed
from cat_core.vllm._settings import (
    QUANT_METHOD,
    AwqSettings,
    CheckpointSettings,
    LinearSettings,
    awq_problem,
    for_layer,
    parse,
    parse_awq,
)

_log = init_logger(__name__)


class CaterpillarConfig(QuantizationConfig):
    """A native Caterpillar checkpoint (config.json ``quantization_config.quant_method`` =
    ``"caterpillar"``): 2/3/4/8-bit weights in the cat-kernels packed format."""

    def __init__(self, settings: CheckpointSettings | AwqSettings) -> None:
        super().__init__()
        self.settings = settings

    def __repr__(self) -> str:
        if isinstance(self.settings, AwqSettings):
            return f"CaterpillarConfig(AWQ-GEMM checkpoint, 4-bit, group_size={self.settings.group_size})"
        kinds = sorted({(s.bits, s.group_size, s.sym) for s in self.settings.modules.values()})
        return f"CaterpillarConfig({len(self.settings.modules)} linears, (bits, group_size, sym) in {kinds})"

    @classmethod
    def get_name(cls) -> str:
        return QUANT_METHOD

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        return [torch.float32, torch.float16, torch.bfloat16]

    @classmethod
    def get_min_capability(cls) -> int:
        # cat-kernels' CUDA kernels build for sm_70 and newer (consulted on CUDA only).
        return 70

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # everything is in config.json's quantization_config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CaterpillarConfig:
        if str(config.get("quant_method", "")).lower() == "awq":
            return cls(parse_awq(config))
        return cls(parse(config))

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg: dict[str, Any], user_quant: str | None,
                                     hf_config: Any = None) -> str | None:
        """Claim AWQ-GEMM checkpoints (ours and AutoAWQ's) when the user asks for this method
        (``--quantization caterpillar``), or by default on a CPU where vLLM has no W4A16 kernel
        of its own (its ``cpu_gemm_wna16`` exists only in its AVX512-BF16 build: elsewhere such a
        model loads and then fails at its first forward)."""
        if str(hf_quant_cfg.get("quant_method", "")).lower() != "awq":
            return None
        problem = awq_problem(hf_quant_cfg)
        if user_quant == QUANT_METHOD:
            if problem:
                raise ValueError(f"caterpillar: --quantization caterpillar cannot serve this checkpoint: {problem}")
            return QUANT_METHOD
        if user_quant is None and problem is None and _cpu_without_w4a16():
            _log.info("caterpillar: serving the AWQ checkpoint with cat-kernels: this vLLM build has no "
                      "CPU W4A16 kernel (cpu_gemm_wna16)")
            return QUANT_METHOD
        return None

    def apply_vllm_mapper(self, hf_to_vllm_mapper: Any) -> None:
        # Models whose vLLM module names differ from transformers' (e.g. a multimodal wrapper)
        # rename the checkpoint's module list the same way as its tensors.
        if isinstance(self.settings, CheckpointSettings):
            self.settings = CheckpointSettings(hf_to_vllm_mapper.apply_dict(self.settings.modules))

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> Any:
        if not isinstance(layer, LinearBase):
            return None  # embeddings and lm_head stay as stored
        if isinstance(self.settings, AwqSettings):
            parent, _, leaf = prefix.rpartition(".")
            names = [prefix] + [f"{parent}.{p}" for p in self.packed_modules_mapping.get(leaf, [])]
            # AutoAWQ's modules_to_not_convert are substrings of module names (as vLLM reads them)
            if any(m in n for m in self.settings.modules_to_not_convert for n in names):
                return UnquantizedLinearMethod()
            return CaterpillarAwqLinearMethod(self.settings, prefix)
        settings = for_layer(self.settings, prefix, self.packed_modules_mapping)
        if settings is None:
            return UnquantizedLinearMethod()
        return CaterpillarLinearMethod(settings, prefix)


class _KernelsMethod(LinearMethodBase):
    """What both linear methods share: the layer's settings and name, vLLM's ``create_weights``
    call reduced to the layer's local shape, and the forward through the :class:`QuantLinear`
    that ``process_weights_after_loading`` keeps in ``layer.__dict__["_cat_linear"]``."""

    def __init__(self, settings: LinearSettings | AwqSettings, prefix: str) -> None:
        self.settings = settings
        self.prefix = prefix

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        k, n = input_size_per_partition, sum(output_partition_sizes)
        self._create_weights(layer, k, n, input_size, output_partition_sizes, extra_weight_attrs)
        layer.cat_shape = (n, k)

    @abstractmethod
    def _create_weights(
        self, layer: torch.nn.Module, k: int, n: int, input_size: int, parts: list[int], extra: dict[str, Any]
    ) -> None:
        """Register the parameters of this rank's ``[n, k]`` part of the layer (``parts``: its
        output partition sizes, ``extra``: vLLM's extra weight attributes)."""

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        y = layer.__dict__["_cat_linear"](x)
        return y if bias is None else y + bias


class CaterpillarLinearMethod(_KernelsMethod):
    """Packed weights of one (possibly fused, possibly sharded) linear, computed by cat-kernels."""

    settings: LinearSettings

    def _create_weights(
        self, layer: torch.nn.Module, k: int, n: int, input_size: int, parts: list[int], extra: dict[str, Any]
    ) -> None:
        s = self.settings
        if s.group_size != -1 and input_size % s.group_size:
            raise ValueError(f"caterpillar: {self.prefix}: in_features={input_size} is not a multiple of "
                             f"group_size={s.group_size} (config.json does not match the model)")
        _check_layout(layer, self.prefix, s, input_size, k, n)
        for name in ("qweight", "scales") if s.sym else ("qweight", "scales", "qzeros"):
            dtype = s.scale_dtype if name == "scales" else torch.int32
            p = Parameter(torch.zeros(_packed_shape(name, n, k, s), dtype=dtype), requires_grad=False)
            # vLLM's own loaders slice along one dimension at element granularity; the packed
            # layout needs the slicing of _load below.
            set_weight_attrs(p, {"weight_loader": partial(_load, layer, self.prefix, s, name)})
            layer.register_parameter(name, p)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        s = self.settings
        n, k = layer.cat_shape
        lin = QuantLinear(k, n, s.bits, s.group_size, sym=s.sym, scale_dtype=s.scale_dtype, device="meta")
        lin.qweight = layer.qweight.data
        lin.scales = layer.scales.data
        lin.qzeros = None if s.sym else layer.qzeros.data
        # kept outside the module tree: vLLM must not see (or move, or count) the shared tensors twice
        layer.__dict__["_cat_linear"] = lin

    def dequantize_weight(self, layer: torch.nn.Module) -> torch.Tensor:
        return layer.__dict__["_cat_linear"].dequantize_weight(layer.params_dtype)


def _cpu_without_w4a16() -> bool:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    # The platform loads the ops library built for this CPU (_C, _C_AVX512 or _C_AVX2, all as
    # torch.ops._C); importing vllm._C directly would load the AVX512-BF16 one and die with
    # SIGILL elsewhere.
    current_platform.import_kernels()
    return not hasattr(torch.ops._C, "cpu_gemm_wna16")


@_vllm_linear.register_weight_loader_v2_supported_method
class CaterpillarAwqLinearMethod(_KernelsMethod):
    """An AWQ-GEMM linear computed by cat-kernels: the checkpoint's layout is loaded (and sharded
    for tensor parallelism) by vLLM's own parameter classes, then each rank's part is unpacked
    and repacked once into the cat-kernels format. The results equal
    ``cat_core.io.import_awq(dir)`` on the same tensors."""

    PACK = 8  # 4-bit codes per int32 word
    settings: AwqSettings

    def _create_weights(
        self, layer: torch.nn.Module, k: int, n: int, input_size: int, parts: list[int], extra: dict[str, Any]
    ) -> None:
        gs = self.settings.group_size if self.settings.group_size != -1 else input_size
        if k % gs:
            raise ValueError(
                f"caterpillar: {self.prefix}: this rank holds {k} of the {input_size} input columns, not a "
                f"multiple of the AWQ group_size={gs}: a shard of the input dimension must hold whole groups; "
                "use a smaller tensor-parallel size")
        if any(p % self.PACK for p in parts):
            raise ValueError(
                f"caterpillar: {self.prefix}: output parts {parts} per rank are not multiples of "
                f"{self.PACK} (AWQ packs 8 output columns per int32 word); use a smaller tensor-parallel size")
        loader = extra.get("weight_loader")
        words = {"input_dim": 0, "output_dim": 1, "packed_dim": 1, "packed_factor": self.PACK, "weight_loader": loader}
        layer.register_parameter("qweight", PackedvLLMParameter(
            data=torch.empty(k, n // self.PACK, dtype=torch.int32), **words))
        layer.register_parameter("qzeros", PackedvLLMParameter(
            data=torch.empty(k // gs, n // self.PACK, dtype=torch.int32), **words))
        # float16 as stored, whatever the model's dtype: a scale rounded to bf16 is another weight
        layer.register_parameter("scales", GroupQuantScaleParameter(
            data=torch.empty(k // gs, n, dtype=torch.float16), input_dim=0, output_dim=1, weight_loader=loader))
        layer.cat_group = gs

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        qt = _packed.awq_to_native(layer.qweight.data, layer.qzeros.data, layer.scales.data, layer.cat_group)
        lin = QuantLinear.from_quantized_tensor(qt)
        for name in ("qweight", "scales", "qzeros"):  # the AWQ arrays make way for the packed ones
            delattr(layer, name)
            layer.register_parameter(name, Parameter(getattr(lin, name), requires_grad=False))
        layer.__dict__["_cat_linear"] = lin


# --------------------------------------------------------------------------- tensor parallelism


def _column_pieces(layer: torch.nn.Module, shard_id: Any) -> list[tuple[int, int, int, int]]:
    """Where the rows of one loaded tensor go: ``(src_start, rows, src_rows, dst_start)`` per piece,
    ``src_rows`` being the loaded matrix's row count. ``shard_id`` is vLLM's: q/k/v for
    QKVParallelLinear, a part index for MergedColumnParallelLinear, None for a tensor that is the
    whole layer (also a fused layer stored fused)."""
    rank, tp = layer.tp_rank, layer.tp_size
    if isinstance(layer, QKVParallelLinear):
        hs, vhs = layer.head_size, layer.v_head_size
        full = {"q": layer.total_num_heads * hs, "k": layer.total_num_kv_heads * hs,
                "v": layer.total_num_kv_heads * vhs}
        part = {"q": layer.num_heads * hs, "k": layer.num_kv_heads * hs, "v": layer.num_kv_heads * vhs}
        dst = {"q": 0, "k": part["q"], "v": part["q"] + part["k"]}
        part_rank = {"q": rank, "k": rank // layer.num_kv_head_replicas, "v": rank // layer.num_kv_head_replicas}
        ids = ["q", "k", "v"] if shard_id is None else [shard_id]
    elif isinstance(layer, MergedColumnParallelLinear):
        ids = list(range(len(layer.output_sizes)))
        full = dict(enumerate(layer.output_sizes))
        part = {i: f // tp for i, f in full.items()}
        dst = {i: sum(part[j] for j in range(i)) for i in ids}
        part_rank = dict.fromkeys(ids, rank)
        if isinstance(shard_id, int):
            ids = [shard_id]
        elif isinstance(shard_id, tuple):
            ids = list(shard_id)
    elif isinstance(layer, ColumnParallelLinear):
        full, part = {0: layer.output_size}, {0: layer.output_size_per_partition}
        dst, part_rank, ids = {0: 0}, {0: rank}, [0]
    else:  # replicated
        full, part, dst, part_rank, ids = {0: layer.output_size}, {0: layer.output_size}, {0: 0}, {0: 0}, [0]
    src_rows = sum(full[i] for i in ids)
    pieces, base = [], 0
    for i in ids:
        pieces.append((base + part_rank[i] * part[i], part[i], src_rows, dst[i]))
        base += full[i]
    return pieces


def _packed_shape(kind: str, n: int, k: int, s: LinearSettings) -> tuple[int, ...]:
    """Shape of the ``kind`` array of an ``[n, k]`` matrix (docs/format.md of cat-kernels)."""
    n_groups = 1 if s.group_size == -1 else k // s.group_size
    if kind == "qweight":
        return (-(-n // 16), -(-k // 32), s.bits, 16)
    if kind == "scales":
        return (n, n_groups)
    return (-(-n // 16), -(-(n_groups * s.bits) // 32), 16)


def _split_name(layer: torch.nn.Module) -> str:
    return f"tensor_parallel_size={layer.tp_size}, rank {layer.tp_rank}"


def _check_layout(layer: torch.nn.Module, prefix: str, s: LinearSettings, k_full: int, k_part: int,
                  n_part: int) -> None:
    """Refuse, when vLLM builds the layer, a split the packed format cannot hold."""
    if isinstance(layer, RowParallelLinear):
        for r in range(layer.tp_size):
            problem = _packed.col_slice_problem(r * k_part, k_part, k_full, s.group_size)
            if problem:
                raise ValueError(
                    f"caterpillar: {prefix}: tensor_parallel_size={layer.tp_size} splits in_features={k_full} "
                    f"into {k_part} columns per rank, and rank {r}'s {problem}: a shard of the input dimension "
                    f"must start on a group (group_size={s.group_size}) and on a {_packed.BLOCK_COLS}-column "
                    "packing boundary; use a tensor-parallel size that splits it so"
                )
        return
    ids = ["q", "k", "v"] if isinstance(layer, QKVParallelLinear) else (
        list(range(len(layer.output_sizes))) if isinstance(layer, MergedColumnParallelLinear) else [None])
    for sid in ids:
        for src, rows, src_rows, dst in _column_pieces(layer, sid):
            problem = _packed.row_slice_problem(src, rows, src_rows) or _packed.row_slice_problem(dst, rows, n_part)
            if problem:
                part = "" if sid is None else f" part {sid!r}:"
                raise ValueError(
                    f"caterpillar: {prefix}:{part} with {_split_name(layer)} the {problem}: a shard of the "
                    f"output dimension (and each part of a fused layer) must start on a {_packed.TILE_ROWS}-row "
                    "packing tile; use a tensor-parallel size that splits it so"
                )


def _load(layer: torch.nn.Module, prefix: str, s: LinearSettings, kind: str, param: Parameter,
          loaded: torch.Tensor, shard_id: Any = None) -> None:
    """vLLM's ``weight_loader`` for one packed parameter: copy the part of the checkpoint tensor
    ``loaded`` that belongs to this rank into its place."""
    where = f"caterpillar: {prefix}.{kind}"
    expected = param.dtype
    if loaded.dtype != expected:
        # never re-round: a scale in another dtype is another weight
        raise ValueError(f"{where}: the checkpoint tensor is {loaded.dtype}, expected {expected} "
                         "(quantization_config's bits/scale_dtype do not match the tensors)")
    n_part, k_part = layer.cat_shape
    if isinstance(layer, RowParallelLinear):
        k_full = layer.input_size
        _check_full_shape(where, loaded, _packed_shape(kind, n_part, k_full, s))
        src = _packed.cols(kind, loaded, layer.tp_rank * k_part, k_part, k_full, bits=s.bits, group_size=s.group_size)
        _copy(where, param.data, src, f"columns [{layer.tp_rank * k_part}, {(layer.tp_rank + 1) * k_part})")
        return
    for src_start, rows, src_rows, dst_start in _column_pieces(layer, shard_id):
        _check_full_shape(where, loaded, _packed_shape(kind, src_rows, k_part, s))
        try:
            src = _packed.rows(kind, loaded, src_start, rows, src_rows)
            dst = _packed.rows(kind, param.data, dst_start, rows, n_part)
        except ValueError as e:
            raise ValueError(f"{where} (shard {shard_id!r}, {_split_name(layer)}): {e}") from e
        _copy(where, dst, src, f"rows [{src_start}, {src_start + rows}) of shard {shard_id!r}")


def _check_full_shape(where: str, loaded: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(loaded.shape) != expected:
        raise ValueError(f"{where}: the checkpoint tensor has shape {tuple(loaded.shape)}, expected {expected} "
                         "(config.json's bits/group_size do not match the tensors, or the checkpoint is for "
                         "another model)")


def _copy(where: str, dst: torch.Tensor, src: torch.Tensor, what: str) -> None:
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"{where}: {what} of the checkpoint tensor have packed shape {tuple(src.shape)}, "
                         f"but the layer holds {tuple(dst.shape)} (config.json's bits/group_size do not "
                         "match the tensors, or the checkpoint is for another model)")
    dst.copy_(src)


def register_method() -> None:
    """Register :class:`CaterpillarConfig` as vLLM's ``caterpillar`` method (idempotent)."""
    register_quantization_config(QUANT_METHOD)(CaterpillarConfig)
