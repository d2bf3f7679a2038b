"""IGR checkpoint -> ONNX graphs -> ONNX Runtime models or TensorRT plans, with their manifest."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BuildError": "export.errors",
    "BuildOptions": "export.build",
    "ReadinessError": "export.readiness",
    "build": "export.build",
    "check_readiness": "export.readiness",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name == "check_readiness":
        return importlib.import_module("export.readiness").check
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
