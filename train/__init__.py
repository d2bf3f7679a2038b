"""IGR in PyTorch: model, checkpoints, reference pipeline, data and training.

Names are imported on first use, so numpy-only modules (``train.synthetic``, ``train.datasets``)
stay importable without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "IGRConfig": "train.config",
    "preset": "train.config",
    "IGRModel": "train.model",
    "new_model": "train.checkpoint",
    "save_checkpoint": "train.checkpoint",
    "load_checkpoint": "train.checkpoint",
    "ReferencePipeline": "train.pipeline",
    "from_public_layouts": "train.weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")
