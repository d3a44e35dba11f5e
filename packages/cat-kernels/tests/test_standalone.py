"""cat-kernels must work with numpy alone: no torch import, ever, on the numpy path.

Run in a child process whose import system refuses torch (and CuPy/JAX), so a stray
``import torch`` anywhere in the package fails the test even on a machine where torch exists.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_numpy_only_gemm_without_torch() -> None:
    code = textwrap.dedent(
        """
        import sys
        for name in ("torch", "cupy", "jax"):
            sys.modules[name] = None  # any import of these now raises ImportError
        import numpy as np
        import cat_kernels as ck

        rng = np.random.default_rng()
        n, k, g = 37, 320, 64
        codes = rng.integers(0, 8, (n, k), dtype=np.uint8)
        zeros = rng.integers(0, 8, (n, k // g), dtype=np.uint8)
        scales = (rng.random((n, k // g)) * 0.01 + 1e-3).astype(np.float16)
        x = rng.standard_normal((3, k)).astype(np.float32)
        y = ck.gemm(x, ck.pack(codes, 3), scales, ck.pack_zeros(zeros, 3), g)
        w = (codes.reshape(n, k // g, g).astype(np.float64) - zeros[..., None]) * scales.astype(
            np.float64)[..., None]
        ref = x.astype(np.float64) @ w.reshape(n, k).T
        assert y.shape == (3, n) and y.dtype == np.float32, (y.shape, y.dtype)
        err = np.abs(y - ref).max() / np.abs(ref).max()
        assert err < 1e-5, err
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("ok", err)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok")
