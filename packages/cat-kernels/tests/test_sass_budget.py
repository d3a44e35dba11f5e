"""SASS budget of the CUDA GEMV (issue 15), checked in CI without a GPU.

tools/sass_budget.py compiles the gemm kernel files for sm_89 and sm_90, reads the SASS and the
ptxas report, and fails when the v2 GEMV's main loop exceeds its instructions-per-weight budget
(3 at 4 bits with float16 x, 3.5 with bfloat16 x, 4 at 3 bits) or a GEMV kernel spills. Runs
wherever nvcc is installed (the CUDA build needs it anyway); cuobjdump comes from the PyPI
package nvidia-cuda-cuobjdump (setup.sh).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "sass_budget.py"


def _tool():
    if "sass_budget" in sys.modules:
        return sys.modules["sass_budget"]
    spec = importlib.util.spec_from_file_location("sass_budget", TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sass_budget"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_gemv_sass_budget():
    sb = _tool()
    if sb.find_tool("nvcc") is None:
        pytest.skip("nvcc not found: no CUDA kernels are built here, so there is no SASS to check")
    assert sb.find_tool("cuobjdump"), (
        "cuobjdump not found: pip install nvidia-cuda-cuobjdump "
        "(tools/setup.sh installs it into .venv and .venv-kernels)"
    )
    kernels = sb.run(["89", "90"], sorted((sb.CUDA_DIR).glob("gemv_v2*.cu")))
    names = {k.name for k in kernels}
    assert any("gemv_v2_kernel<4, false, 4>" in n for n in names), f"v2 GEMV kernels not found in {sorted(names)[:5]}"
    budgeted = [k for k in kernels if sb.budget_for(k.name) is not None]
    assert budgeted and all(k.loop_instr > 0 for k in budgeted), "main loop not found"
    errors = sb.check(kernels)
    assert not errors, "SASS budget exceeded:\n" + "\n".join(errors) + "\n\n" + sb.table(kernels)


def test_main_loop_finder_counts_the_innermost_loop():
    sb = _tool()
    sass = [(0x00, "MOV R1, c[0x0][0x28]"), (0x10, "IADD3 R2, R2, 0x1, RZ"),
            (0x20, "FFMA R3, R3, R4, R5"), (0x30, "FFMA R3, R3, R4, R5"),
            (0x40, "@P0 BRA 0x20"),  # inner loop: 0x20..0x40, 3 instructions
            (0x50, "ISETP.NE.AND P1, PT, R2, R6, PT"), (0x60, "@P1 BRA 0x10"),  # outer loop
            (0x70, "EXIT")]
    n, mix = sb.main_loop(sass)
    assert n == 3 and mix.startswith("FFMA 2")
