"""Quantized linear layers backed by the ``cat-kernels`` packed format.

``QuantLinear`` keeps a weight in the layout of ``packages/cat-kernels/docs/format.md`` and runs
``y = x @ W.T + b`` through the ``cat::gemm`` torch custom op, so the module works under
``torch.compile`` and CUDA graphs (the op has a fake/meta implementation) and its result is what
the kernels compute: ``W = float32(q - z) * float32(s)``.

    from cat_core.nn import replace_linears, memory_report
    replace_linears(model, result.tensors)     # {module name: QuantizedTensor}
    model.generate(...)
    print(memory_report(model)["ratio"])
"""

from __future__ import annotations

# The underscored names, aliased to mark them re-exported, are internals that cat_core.awq,
# cat_core.io and the tests import from this path.
from cat_core.nn._fuse import fuse_shared_inputs
from cat_core.nn._head import HEAD_CHOICES, quantize_head
from cat_core.nn._linear import SUPPORTED_DTYPES, QuantLinear, set_int8_activations
from cat_core.nn._memory import memory_report
from cat_core.nn._routing import CPU_GEMM_MAX_M, CUDA_GEMM_MAX_M, cpu_gemm_max_m, cuda_gemm_max_m
from cat_core.nn._routing import _eager_fast_path as _eager_fast_path
from cat_core.nn._surgery import _is_conv1d as _is_conv1d
from cat_core.nn._surgery import _linear_at as _linear_at
from cat_core.nn._surgery import _module_at as _module_at
from cat_core.nn._surgery import _set_module as _set_module
from cat_core.nn._surgery import linear_shape, replace_linears

__all__ = [
    "QuantLinear", "replace_linears", "memory_report", "CPU_GEMM_MAX_M", "CUDA_GEMM_MAX_M", "cpu_gemm_max_m", "cuda_gemm_max_m",
    "SUPPORTED_DTYPES", "linear_shape", "quantize_head", "HEAD_CHOICES", "fuse_shared_inputs",
    "set_int8_activations",
]
