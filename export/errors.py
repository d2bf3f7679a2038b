"""The errors an engine build reports as one line that says what to do, instead of a traceback."""

from __future__ import annotations


class BuildError(RuntimeError):
    """A build option or environment problem (no TensorRT, no GPU, a graph TensorRT cannot take)."""
