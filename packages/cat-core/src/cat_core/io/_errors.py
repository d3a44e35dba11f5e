"""The one error type of the checkpoint readers."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, corrupt or not of the expected kind."""
