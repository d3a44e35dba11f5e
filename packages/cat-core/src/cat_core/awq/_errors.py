from __future__ import annotations

__all__ = ["AWQError"]


class AWQError(RuntimeError):
    """The search met a non-finite value or an unusable model; the message says where."""
