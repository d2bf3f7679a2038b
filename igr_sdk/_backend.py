"""The one small protocol every engine backend implements, and how ``backend="auto"`` chooses.

A backend holds the five graphs of one engine directory. Arrays it returns may live on its device
(``DeviceArray`` is whatever the backend uses); the runtime keeps GarmNet's reference K/V that way
for every denoiser step and only moves the small per-step tensors through the host.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Protocol

import numpy as np

from igr_sdk._errors import EngineError
from igr_sdk._manifest import EngineEntry, Manifest, TensorInfo

DeviceArray = Any


class Backend(Protocol):
    name: str  # the manifest engine id it runs, e.g. "onnxruntime-cpu"

    def run(self, graph: str, feeds: dict[str, np.ndarray | DeviceArray]) -> dict[str, DeviceArray]: ...

    def to_host(self, x: DeviceArray) -> np.ndarray: ...

    def input_dtype(self, graph: str, name: str) -> np.dtype: ...


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or say exactly what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EngineError(f"{module} is not installed: pip install 'igr-sdk[{extra}]'") from None


def describe_mismatch(entry: EngineEntry, reported: list[TensorInfo], kind: str) -> str | None:
    """A readable difference between the manifest's I/O list and what an engine reports."""
    expected = {t.name: t for t in (entry.inputs if kind == "inputs" else entry.outputs)}
    got = {t.name: t for t in reported}
    lines = []
    for name in sorted(set(expected) | set(got)):
        e, g = expected.get(name), got.get(name)
        if e is None:
            lines.append(f"  {name}: in the engine, not in the manifest")
        elif g is None:
            lines.append(f"  {name}: in the manifest, not in the engine")
        elif (tuple(e.shape), e.dtype) != (tuple(g.shape), g.dtype):
            lines.append(f"  {name}: manifest {list(e.shape)} {e.dtype}, engine {list(g.shape)} {g.dtype}")
    if not lines:
        return None
    return f"{entry.path.name} {kind} disagree with manifest.json:\n" + "\n".join(lines)


def open_backend(
    manifest: Manifest, backend: str = "auto", device: str | int | None = None, threads: int | None = None
) -> Backend:
    if backend not in ("auto", "onnxruntime", "tensorrt"):
        raise EngineError(f"unknown backend {backend!r}; expected 'auto', 'onnxruntime' or 'tensorrt'")
    ids = manifest.engine_ids()
    if backend == "tensorrt" or (
        backend == "auto"
        and any(i.startswith("tensorrt-") for i in ids)
        and importlib.util.find_spec("tensorrt") is not None
    ):
        from igr_sdk._tensorrt import TensorRTBackend

        try:
            return TensorRTBackend.open(manifest, device)
        except EngineError:
            if backend == "tensorrt":
                raise
    from igr_sdk._onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend.open(manifest, device, threads)
