"""ONNX Runtime backend: CPU, or the CUDA execution provider with IO binding.

On CUDA, outputs are bound to device memory (OrtValue) so GarmNet's reference K/V never leave
the GPU between the denoiser's steps.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from igr_sdk._backend import describe_mismatch, require
from igr_sdk._errors import EngineError
from igr_sdk._manifest import Manifest, TensorInfo
from igr_sdk.contract import GRAPHS

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}


def session_options(ort, threads: int | None):
    """The options every ONNX Runtime session of the SDK is opened with (``threads``: intra-op threads,
    None: ONNX Runtime's default, one per physical core)."""
    so = ort.SessionOptions()
    # the portable passes ran offline; the layout passes (NCHWc on CPU) are machine-specific,
    # so they run here, at load (about 7% per denoiser step on the small preset)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
    # Every session has its own intra-op pool, whose threads spin after each call waiting for more
    # work. A request runs six graphs one after another, so the pool of the graph just finished holds
    # the cores the next graph needs: with 2 threads on 2 cores the VAE decoder took 53 ms after the
    # denoiser's 25 steps instead of 29, the VAE encoder and GarmNet nearly twice their time, and the
    # denoiser's own steps gained nothing from spinning (491 against 493 ms; small int8 bundle).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OnnxRuntimeBackend:
    reentrant = True  # InferenceSession.run is thread-safe and IO bindings are per call

    def __init__(self, name: str, sessions: dict, dtypes: dict, device_id: int | None, ort):
        self.name = name
        self._sessions = sessions
        # output names are fixed per session: read them once, not on every denoiser step
        self._outputs = {g: [o.name for o in sess.get_outputs()] for g, sess in sessions.items()}
        self._dtypes = dtypes  # (graph, input name) -> numpy dtype
        self._device_id = device_id
        self._ort = ort

    @classmethod
    def open(
        cls, manifest: Manifest, device: str | int | None = None, threads: int | None = None
    ) -> OnnxRuntimeBackend:
        ort = require("onnxruntime", "onnxruntime")
        available = ort.get_available_providers()
        dev = "cuda" if device is None and "CUDAExecutionProvider" in available else (device or "cpu")
        dev = str(dev)
        device_id = None
        cuda = re.fullmatch(r"cuda(?::(\d+))?", dev.strip().lower())
        if cuda:
            if "CUDAExecutionProvider" not in available:
                raise EngineError(
                    "ONNX Runtime has no CUDA provider here: install 'igr-sdk[onnxruntime-gpu]' "
                    "(never together with onnxruntime), or use device='cpu'"
                )
            device_id = int(cuda.group(1) or 0)
            engine_id = "onnxruntime-cuda"
            providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
            if engine_id not in manifest.engine_ids() and device is None:
                engine_id, providers, device_id = "onnxruntime-cpu", ["CPUExecutionProvider"], None
        elif dev == "cpu":
            engine_id, providers = "onnxruntime-cpu", ["CPUExecutionProvider"]
        else:
            raise EngineError(f"unknown device {device!r} for onnxruntime; expected 'cpu' or 'cuda[:N]'")

        sessions, dtypes = {}, {}
        for g in GRAPHS:
            entry = manifest.engine(g, engine_id)
            manifest.verify(entry)  # hashes before ONNX Runtime parses a byte of it
            so = session_options(ort, threads)
            try:
                sess = ort.InferenceSession(str(entry.path), sess_options=so, providers=providers)
            except Exception as e:  # ORT raises its own exception types for invalid models
                raise EngineError(f"ONNX Runtime cannot load {entry.path.name}: {e}") from None
            for kind, infos in (("inputs", sess.get_inputs()), ("outputs", sess.get_outputs())):
                reported = [TensorInfo(i.name, tuple(i.shape), _ORT_TYPES.get(i.type, i.type)) for i in infos]
                diff = describe_mismatch(entry, reported, kind)
                if diff:
                    raise EngineError(diff)
            sessions[g] = sess
            dtypes.update({(g, t.name): np.dtype(t.dtype) for t in entry.inputs})
        log.info("onnxruntime backend %s (%s)", engine_id, ", ".join(sessions["denoiser"].get_providers()))
        return cls(engine_id, sessions, dtypes, device_id, ort)

    def input_dtype(self, graph: str, name: str) -> np.dtype:
        return self._dtypes[(graph, name)]

    def close(self) -> None:
        """Drop the sessions (and with them their device memory); idempotent. Calls already running finish."""
        if self._sessions:
            log.debug("onnxruntime backend %s closed", self.name)
        self._sessions = {}

    def run(self, graph: str, feeds: dict) -> dict:
        if not self._sessions:
            raise EngineError(f"onnxruntime backend {self.name} is closed")
        sess = self._sessions[graph]
        names = self._outputs[graph]
        if self._device_id is None:
            return dict(zip(names, sess.run(names, feeds)))
        binding = sess.io_binding()
        for k, v in feeds.items():
            if isinstance(v, np.ndarray):
                v = self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), "cuda", self._device_id)
            binding.bind_ortvalue_input(k, v)
        for n in names:
            binding.bind_output(n, "cuda", self._device_id)
        sess.run_with_iobinding(binding)
        return dict(zip(names, binding.get_outputs()))

    def to_host(self, x) -> np.ndarray:
        return x if isinstance(x, np.ndarray) else x.numpy()
