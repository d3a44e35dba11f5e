"""The ``cat_kernels`` import, done on first use with an error that says which package to install."""

from __future__ import annotations

from typing import Any


def _kernels() -> Any:
    try:
        import cat_kernels
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "cat_core.nn needs the cat-kernels package (pip install cat-kernels); "
            f"importing it failed: {e}"
        ) from e
    return cat_kernels
