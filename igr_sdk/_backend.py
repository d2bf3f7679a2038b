"""The one small protocol every engine backend implements, and how ``backend="auto"`` chooses.

A backend holds the five graphs of one engine directory. Arrays it returns may live on its device
(``DeviceArray`` is whatever the backend uses); the runtime keeps GarmNet's reference K/V that way
for every denoiser step and only moves the small per-step tensors through the host.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any, Protocol

import numpy as np

from igr_sdk._errors import EngineError
from igr_sdk._manifest import EngineEntry, Manifest, TensorInfo

log = logging.getLogger(__name__)

DeviceArray = Any
BACKENDS = ("auto", "onnxruntime", "tensorrt")


class Backend(Protocol):
    name: str  # the manifest engine id it runs, e.g. "onnxruntime-cpu"
    # True when two requests may run at once; False when its engines bind fixed buffers (TensorRT),
    # so that the runtime serves one engine batch at a time
    reentrant: bool

    def run(self, graph: str, feeds: dict[str, np.ndarray | DeviceArray]) -> dict[str, DeviceArray]: ...

    def to_host(self, x: DeviceArray) -> np.ndarray: ...

    def input_dtype(self, graph: str, name: str) -> np.dtype: ...

    def close(self) -> None:
        """Release engines and device memory; idempotent. The backend refuses to run afterwards."""


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
    manifest: Manifest,
    backend: str = "auto",
    device: str | int | None = None,
    threads: int | None = None,
    *,
    cuda_graph: bool = False,
    pinned: bool = False,
) -> Backend:
    """The backend ``backend`` names; "auto" tries TensorRT when the directory has plans and TensorRT is
    installed, and otherwise (saying why in the log) ONNX Runtime.

    cuda_graph and pinned are TensorRT options; ONNX Runtime has no use for them.
    """
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; expected 'auto', 'onnxruntime' or 'tensorrt'")
    trt_options = {"cuda_graph": bool(cuda_graph), "pinned": bool(pinned)}
    wanted = [k for k, v in trt_options.items() if v]
    if backend == "onnxruntime" and wanted:
        raise EngineError(f"{' and '.join(wanted)} are TensorRT options; backend='onnxruntime' does not take them")
    reason = _tensorrt_unavailable(manifest) if backend == "auto" else None
    if backend == "tensorrt" or (backend == "auto" and reason is None):
        from igr_sdk._tensorrt import TensorRTBackend

        try:
            return TensorRTBackend.open(manifest, device, **trt_options)
        except EngineError as e:
            if backend == "tensorrt":
                raise
            reason = f"TensorRT could not open its plans: {e}"
    if backend == "auto":
        # plans that end up unused deserve a warning; a directory without any, a note
        level = logging.WARNING if manifest_has_tensorrt(manifest) else logging.INFO
        log.log(level, "backend='auto' chose ONNX Runtime: %s", reason)
        if wanted:
            log.log(level, "%s apply to TensorRT only; ONNX Runtime runs without them", " and ".join(wanted))
    from igr_sdk._onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend.open(manifest, device, threads)


def manifest_has_tensorrt(manifest: Manifest) -> bool:
    return any(i.startswith("tensorrt-") for i in manifest.engine_ids())


def _tensorrt_unavailable(manifest: Manifest) -> str | None:
    """Why backend="auto" does not try TensorRT, or None when it should."""
    if not manifest_has_tensorrt(manifest):
        return "the engine directory has no TensorRT plans"
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install 'igr-sdk[tensorrt]')"
    return None
