"""Layer graph: where AWQ scales can be folded in a Hugging Face causal LM.

`discover(model)` finds the stack of decoder blocks and, inside each block, the *scale
groups*: weights that consume the same input tensor (`consumers`), the op that produced
that input (`producer`, with a typed `fold` rule able to absorb 1/s), and the module whose
output measures the quantization loss (`inspect`). The structure is discovered by running
the blocks on real inputs, never from class or architecture names; every fold is checked
numerically before it is reported.

    graph = discover(model)
    print(graph.describe())
    for blk in graph.blocks:
        for group in blk.groups:
            s = group.tie(search_scales(...))      # ties for grouped-query attention
            apply_scales(blk.module, group, s)     # same function, rescaled weights

Fold rules (a closed set): `NormFold` (LayerNorm/RMSNorm, with bias or `(offset + w)`
scaling), `LinearFold` (rows of a preceding linear, possibly a slice of a fused qkv or
gate_up, through attention, a gate or a positively homogeneous activation),
`ActivationFold` (wraps a non-homogeneous activation in `ScaledActivation`).

Consumers no producer can absorb 1/s for (post-norm-only blocks, `h = x + norm(attn(x))`, whose
q/k/v and gate/up read the residual stream) are listed per block as `UnscaledGroup`s with the
reason; AWQ quantizes them without input scaling. Other consumers without a producer raise
GraphError unless `discover(..., strict=False)`; `strict=True` raises for every one.
"""

from ._apply import apply_scales
from ._discover import discover, find_blocks
from ._types import (
    ActivationFold,
    BlockGraph,
    FoldRule,
    GraphError,
    GroupSpec,
    LayerGraph,
    LinearFold,
    NormFold,
    ScaledActivation,
    ScaleGroup,
    UnscaledGroup,
    WeightRef,
)

__all__ = [
    "ActivationFold",
    "BlockGraph",
    "FoldRule",
    "GraphError",
    "GroupSpec",
    "LayerGraph",
    "LinearFold",
    "NormFold",
    "ScaleGroup",
    "ScaledActivation",
    "UnscaledGroup",
    "WeightRef",
    "apply_scales",
    "discover",
    "find_blocks",
]
