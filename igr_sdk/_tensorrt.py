"""TensorRT backend: five deserialized plans, device buffers bound once, optional CUDA graph.

NOT YET RUN ON A GPU IN THIS PROJECT. Everything that touches TensorRT or CUDA is written against the
TensorRT 10.x/11.x Python API and cuda-python's runtime bindings and has only been read, not executed; the
device-independent logic (binding plan, byte sizes, I/O and version checks, sm naming, device parsing) and
the buffer/copy/capture bookkeeping are tested on CPU, the latter with stand-ins for TensorRT and cudart.

How it runs (DESIGN.md section 4):
- ``open`` checks every plan's sha256 before TensorRT reads a byte of it, checks the TensorRT major.minor
  the plan was built with, and compares the engine's I/O tensors with ``manifest.json``.
- One device buffer per graph I/O tensor is allocated at open and bound to its execution context once
  (``set_tensor_address``); addresses never change afterwards. The denoiser's ``ref_k_i``/``ref_v_i``
  inputs are bound to GarmNet's output buffers of the same name, so the reference K/V are written once per
  request and read in place by every denoiser step.
- ``run`` copies numpy feeds host->device into the bound input buffers, skips feeds that are this backend's
  own device tensors already at the bound address, copies other device tensors device->device, enqueues the
  plan on the backend's stream and returns ``_DeviceTensor`` handles to the output buffers. ``to_host``
  copies one back and synchronises.
- ``cuda_graph=True`` captures the denoiser's enqueue in a CUDA graph after one ordinary warm-up run and
  replays it for every later step.

``tensorrt`` and cuda-python are imported inside functions: this module imports on any machine, and
``igr_sdk`` never imports torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from igr_sdk._backend import describe_mismatch, require
from igr_sdk._errors import EngineError
from igr_sdk._manifest import EngineEntry, Manifest, TensorInfo, check_file
from igr_sdk.contract import GRAPHS, parse_trt_version

log = logging.getLogger(__name__)

INSTALL = "pip install 'igr-sdk[tensorrt]'"
REBUILD = "rebuild them on this machine with `python export/build_engines.py --backend tensorrt`"

# GarmNet writes the reference K/V once per request; every denoiser step reads them from the same buffers.
PRODUCER, CONSUMER = "garmnet", "denoiser"
_REF = re.compile(r"ref_[kv]_\d+")

# TensorRT DataType member names -> numpy dtype names (the manifest's vocabulary).
_TRT_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "FP8": "float8",
    "INT4": "int4",
}

Key = tuple[str, str]  # (graph, tensor name)


# ---------------------------------------------------------------- device-independent helpers


def sm_name(major: int, minor: int) -> str:
    """Compute capability as the engine ids spell it: ``sm_name(9, 0) == "sm_90"``, ``(12, 0)`` -> ``sm_120``."""
    for what, v in (("major", major), ("minor", minor)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise EngineError(f"compute capability {what} must be a non-negative integer, got {v!r}")
    if not 1 <= major <= 99 or minor > 9:
        raise EngineError(f"implausible compute capability {major}.{minor}")
    return f"sm_{int(major)}{int(minor)}"


def engine_id_for(sm: str) -> str:
    return f"tensorrt-{sm}"


def choose_engine_id(available: Iterable[str], sm: str, gpu: str = "") -> str:
    """The manifest's engine id for this GPU's architecture, or an error listing what the directory has."""
    wanted = engine_id_for(sm)
    ids = sorted(available)
    if wanted in ids:
        return wanted
    on = f"{gpu} ({sm})" if gpu else sm
    trt_ids = [i for i in ids if i.startswith("tensorrt-")]
    hint = (
        f"its TensorRT plans are for {', '.join(i.removeprefix('tensorrt-') for i in trt_ids)} only"
        if trt_ids
        else "it has no TensorRT plans"
    )
    raise EngineError(
        f"no TensorRT engine for this GPU, {on}: expected engine id {wanted!r}, the manifest has "
        f"{ids}; {hint}. Plans are specific to a GPU architecture: {REBUILD}, or use "
        "backend='onnxruntime'"
    )


def parse_device(device: str | int | None) -> int:
    """CUDA device index from ``None`` (0), ``N``, ``"N"``, ``"cuda"`` or ``"cuda:N"``."""
    if device is None:
        return 0
    if isinstance(device, bool):
        raise EngineError(f"device must be a GPU index or 'cuda[:N]', got {device!r}")
    if isinstance(device, (int, np.integer)):
        if device < 0:
            raise EngineError(f"GPU index must be >= 0, got {device}")
        return int(device)
    if isinstance(device, str):
        s = device.strip().lower()
        if s == "cpu":
            raise EngineError("TensorRT runs on a CUDA GPU, not device='cpu': use backend='onnxruntime' for the CPU")
        m = re.fullmatch(r"cuda(?::(\d+))?|(\d+)", s)
        if m:
            return int(m.group(1) or m.group(2) or 0)
    raise EngineError(f"unknown device {device!r} for TensorRT; expected a GPU index, 'cuda' or 'cuda:N'")


def trt_major_minor(version: str) -> tuple[int, int]:
    try:
        return parse_trt_version(version)
    except ValueError as e:
        raise EngineError(str(e)) from None


def check_trt_version(plan_version: str | None, installed: str, what: str = "this plan") -> None:
    """Refuse a plan built by another TensorRT major.minor: serialized engines are not portable across them.

    A manifest entry without a recorded version (not written by export/build.py) is let through with a
    warning; TensorRT itself then rejects an incompatible plan at deserialization.
    """
    have = trt_major_minor(installed)
    if plan_version is None:
        log.warning("%s records no TensorRT version; trying TensorRT %s", what, installed)
        return
    built = trt_major_minor(plan_version)
    if built != have:
        raise EngineError(
            f"{what} was built with TensorRT {plan_version}, but TensorRT {installed} is installed; "
            f"a plan loads only in the TensorRT {built[0]}.{built[1]} that built it: install "
            f"tensorrt=={built[0]}.{built[1]}.* or {REBUILD}"
        )


def nbytes(shape: Sequence[int], dtype: str | np.dtype) -> int:
    """Bytes of a dense tensor; refuses dynamic (-1) or empty dimensions and dtypes numpy cannot hold."""
    dims = tuple(shape)
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise EngineError(f"shape {list(dims)} has a non-integer dimension {d!r}")
        if d < 0:
            raise EngineError(
                f"shape {list(dims)} has a dynamic dimension; the plans here are built with static shapes"
            )
        if d == 0:
            raise EngineError(f"shape {list(dims)} is empty")
    try:
        item = np.dtype(dtype).itemsize
    except TypeError:
        raise EngineError(
            f"dtype {dtype!r} has no numpy equivalent; expected float32, float16, int32 or int64"
        ) from None
    return int(np.prod(dims, dtype=np.int64)) * item if dims else item


def dtype_name(trt_dtype: Any) -> str:
    """numpy name of a ``tensorrt.DataType`` member (``DataType.HALF`` -> ``"float16"``)."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    return _TRT_DTYPES.get(str(name).upper(), str(name).lower())


def engine_io(engine: Any, input_mode: Any) -> dict[str, list[TensorInfo]]:
    """The I/O tensors a deserialized engine reports, split by ``engine.get_tensor_mode``."""
    out: dict[str, list[TensorInfo]] = {"inputs": [], "outputs": []}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        info = TensorInfo(
            name, tuple(int(d) for d in engine.get_tensor_shape(name)), dtype_name(engine.get_tensor_dtype(name))
        )
        out["inputs" if engine.get_tensor_mode(name) == input_mode else "outputs"].append(info)
    return out


def check_io(entry: EngineEntry, reported: Mapping[str, Sequence[TensorInfo]]) -> None:
    """Raise naming every tensor where the engine (``{"inputs": [...], "outputs": [...]}``) and the manifest
    disagree in name, shape or dtype."""
    diffs = [d for kind in ("inputs", "outputs") if (d := describe_mismatch(entry, list(reported[kind]), kind))]
    if diffs:
        raise EngineError("\n".join(diffs) + f"\nthe engine file does not belong to this manifest: {REBUILD}")


@dataclass(frozen=True)
class Binding:
    graph: str
    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int
    buffer: Key  # whose allocation this tensor uses: (graph, name) itself, or GarmNet's output it aliases


@dataclass(frozen=True)
class BindingPlan:
    bindings: dict[str, dict[str, Binding]]  # graph -> tensor name -> binding (inputs first, manifest order)
    buffers: dict[Key, int]  # allocations to make: (graph, tensor) -> bytes
    aliases: dict[str, Key]  # denoiser input -> the GarmNet output buffer it is bound to

    @property
    def total_bytes(self) -> int:
        return sum(self.buffers.values())


def binding_plan(entries: Mapping[str, EngineEntry]) -> BindingPlan:
    """Which tensors own a device buffer, which alias another, and how many bytes each needs.

    Every denoiser input named ``ref_k_i``/``ref_v_i`` is bound to GarmNet's output of the same name, which
    must exist with the same shape and dtype; every such GarmNet output must be read by the denoiser.
    """
    bindings: dict[str, dict[str, Binding]] = {}
    buffers: dict[Key, int] = {}
    aliases: dict[str, Key] = {}
    for g, entry in entries.items():
        if entry.graph != g:
            raise EngineError(f"manifest entry for graph {g!r} describes graph {entry.graph!r}")
        own: dict[str, Binding] = {}
        for is_input, infos in ((True, entry.inputs), (False, entry.outputs)):
            for t in infos:
                if t.name in own:
                    raise EngineError(f"{g}: tensor {t.name!r} is listed twice in manifest.json")
                try:
                    size = nbytes(t.shape, t.dtype)
                except EngineError as e:
                    raise EngineError(f"{g}: tensor {t.name!r}: {e}") from None
                own[t.name] = Binding(
                    g, t.name, is_input, tuple(int(d) for d in t.shape), np.dtype(t.dtype), size, (g, t.name)
                )
        bindings[g] = own

    if PRODUCER in bindings and CONSUMER in bindings:
        produced = {n: b for n, b in bindings[PRODUCER].items() if not b.is_input and _REF.fullmatch(n)}
        consumed = {n: b for n, b in bindings[CONSUMER].items() if b.is_input and _REF.fullmatch(n)}
        for name, b in consumed.items():
            src = produced.get(name)
            if src is None:
                raise EngineError(
                    f"{CONSUMER} input {name!r} has no {PRODUCER} output of that name to read; "
                    f"{PRODUCER} outputs {sorted(produced)}"
                )
            if (src.shape, src.dtype) != (b.shape, b.dtype):
                raise EngineError(
                    f"{CONSUMER} input {name!r} is {list(b.shape)} {b.dtype}, but {PRODUCER} "
                    f"writes it as {list(src.shape)} {src.dtype}; the engines are from different builds"
                )
            bindings[CONSUMER][name] = Binding(CONSUMER, name, True, b.shape, b.dtype, b.nbytes, src.buffer)
            aliases[name] = src.buffer
        unread = sorted(set(produced) - set(consumed))
        if unread:
            raise EngineError(
                f"{PRODUCER} outputs {unread}, which the {CONSUMER} has no inputs for; the engines are "
                "from different builds"
            )

    for g, own in bindings.items():
        for b in own.values():
            if b.buffer == (g, b.name):
                buffers[b.buffer] = b.nbytes
    return BindingPlan(bindings, buffers, aliases)


# ---------------------------------------------------------------- CUDA runtime (cuda-python)


def load_cudart() -> Any:
    """cuda-python's runtime module under either layout, or an EngineError saying what to install."""
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # older layout, gone in cuda-python 13

        return cudart
    except ImportError:
        raise EngineError(
            f"cuda-python is not installed (TensorRT's Python API needs it for device memory): {INSTALL}"
        ) from None


def _error_name(err: Any) -> str:
    return str(getattr(err, "name", err))


class _Cuda:
    """The few cudart calls the backend makes, each return code checked (cuda-python returns ``(err, *values)``)."""

    def __init__(self, rt: Any):
        self.rt = rt
        self._ok = rt.cudaError_t.cudaSuccess

    def call(self, name: str, *args: Any) -> Any:
        result = getattr(self.rt, name)(*args)
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._ok:
            raise EngineError(f"CUDA call {name} failed: {_error_name(err)}")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def device_count(self) -> int:
        try:
            return int(self.call("cudaGetDeviceCount"))
        except EngineError as e:  # no driver / no device: say so plainly
            raise EngineError(f"no usable CUDA GPU here ({e}); TensorRT needs one: use backend='onnxruntime'") from None

    def device_info(self, index: int) -> tuple[str, int, int]:
        prop = self.call("cudaGetDeviceProperties", index)
        name = prop.name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
        return str(name).strip(), int(prop.major), int(prop.minor)

    def memcpy(self, dst: int, src: int, size: int, kind: str, stream: Any) -> None:
        self.call("cudaMemcpyAsync", dst, src, size, getattr(self.rt.cudaMemcpyKind, kind), stream)


# ---------------------------------------------------------------- the backend


@dataclass(frozen=True)
class _DeviceTensor:
    """A tensor in one of the backend's bound device buffers.

    Valid until that buffer is next written (the next run of the graph that produced it, or a feed copied
    into it); using it afterwards raises instead of reading someone else's data.
    """

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    buffer: Key
    version: int
    owner: int  # id() of the backend that allocated the buffer

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)

    def __repr__(self) -> str:
        return f"_DeviceTensor({self.buffer[0]}.{self.buffer[1]}, {list(self.shape)} {self.dtype}, 0x{self.ptr:x})"


_TRT_LOGGER: tuple[Any, Any] | None = None  # (tensorrt module, its logger)


def trt_logger(trt: Any) -> Any:
    """One TensorRT logger per process, forwarding to ``logging`` (TensorRT keeps the first it is given)."""
    global _TRT_LOGGER
    if _TRT_LOGGER is None or _TRT_LOGGER[0] is not trt:
        sev = trt.ILogger.Severity
        levels = {
            sev.INTERNAL_ERROR: logging.CRITICAL,
            sev.ERROR: logging.ERROR,
            sev.WARNING: logging.WARNING,
            sev.INFO: logging.INFO,
            sev.VERBOSE: logging.DEBUG,
        }

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):
                level = levels.get(severity, logging.INFO)
                if log.isEnabledFor(level):
                    log.log(level, "TensorRT: %s", msg)

        _TRT_LOGGER = (trt, _Logger())
    return _TRT_LOGGER[1]


def _read_verified(entry: EngineEntry) -> bytes:
    """The plan's bytes, hashed in memory: the bytes checked are the bytes deserialized, so a file swapped
    between a check and a read cannot slip through."""
    for path, digest in entry.data:
        check_file(path, digest)
    if not entry.path.is_file():
        raise EngineError(f"engine file {str(entry.path)!r} is missing")
    data = entry.path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != entry.sha256:
        raise EngineError(
            f"engine file {str(entry.path)!r} does not match its manifest hash "
            f"(sha256 {got[:12]}..., expected {entry.sha256[:12]}...): it was modified or corrupted"
        )
    return data


class TensorRTBackend:
    """Runs the five graphs of an engine directory with TensorRT on one CUDA GPU.

    Not re-entrant: TensorRT execution contexts are not, and the bound buffers hold one request's tensors
    (GarmNet's reference K/V among them). ``run`` and ``to_host`` serialise on the backend's own lock, which
    keeps single calls safe; keeping two *requests* from interleaving (one's garmnet run overwriting the
    other's reference K/V between denoiser steps) is the caller's job, and a tensor overwritten that way
    raises EngineError instead of being read.
    """

    def __init__(
        self,
        name: str,
        plan: BindingPlan,
        contexts: Mapping[str, Any],
        cuda: _Cuda,
        device: int = 0,
        *,
        cuda_graph: bool = False,
        pinned: bool = False,
        gpu: str = "",
        keepalive: Sequence[Any] = (),
    ):
        """Allocate and bind every buffer of ``plan`` (use ``open``; this is the device-facing half)."""
        self.name = name
        self.plan = plan
        self.gpu = gpu
        self._cuda = cuda
        self._device = device
        self._contexts = dict(contexts)
        self._keepalive = list(keepalive)  # runtime and engines: must outlive the contexts
        self._lock = threading.Lock()
        self._pinned = pinned
        self._buffers: dict[Key, int] = {}
        self._writes: dict[Key, int] = dict.fromkeys(plan.buffers, 0)
        self._staging: dict[Key, tuple[int, np.ndarray]] = {}  # pinned host copies of inputs fed from numpy
        self._staged: dict[str, Any] = {}  # graph -> event after its last host->device copies
        self._capture = {CONSUMER} if cuda_graph else set()
        self._graph_execs: dict[str, Any] = {}
        self._stream = None
        self._closed = False
        try:
            cuda.call("cudaSetDevice", device)
            self._stream = cuda.call("cudaStreamCreate")
            self._stream_handle = int(self._stream)
            for key, size in plan.buffers.items():
                self._buffers[key] = cuda.call("cudaMalloc", size)
            for g, own in plan.bindings.items():
                ctx = self._contexts[g]
                for b in own.values():
                    if not ctx.set_tensor_address(b.name, self._buffers[b.buffer]):
                        raise EngineError(f"TensorRT refused the device address for {g}.{b.name}")
        except BaseException:
            self.close()
            raise
        log.info(
            "tensorrt backend %s on GPU %d %s: %.1f MB of bound I/O buffers, %d denoiser inputs aliased to "
            "garmnet outputs%s",
            name,
            device,
            gpu,
            plan.total_bytes / 1e6,
            len(plan.aliases),
            ", CUDA graph for the denoiser" if cuda_graph else "",
        )

    # --- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(
        cls, manifest: Manifest, device: str | int | None = None, *, cuda_graph: bool = False, pinned: bool = False
    ) -> TensorRTBackend:
        """The ``tensorrt-sm_XY`` engines of ``manifest`` for GPU ``device`` (index, "cuda" or "cuda:N").

        cuda_graph: capture the denoiser step in a CUDA graph after its first run and replay it.
        pinned: stage host->device copies through page-locked memory (faster copies, more host memory).
        """
        try:
            trt = require("tensorrt", "tensorrt")
        except OSError as e:  # the wheel is there but libnvinfer is not loadable
            raise EngineError(
                f"tensorrt is installed but its libraries failed to load ({e}): {INSTALL} on a "
                "host with an NVIDIA driver"
            ) from None
        cuda = _Cuda(load_cudart())
        engine_id, gpu = "a TensorRT engine", "this GPU"
        engines: dict[str, Any] = {}
        contexts: dict[str, Any] = {}
        try:
            index = parse_device(device)
            count = cuda.device_count()
            if index >= count:
                raise EngineError(f"CUDA device {index} requested; this machine has {count} GPU(s) (0..{count - 1})")
            cuda.call("cudaSetDevice", index)
            gpu, major, minor = cuda.device_info(index)
            sm = sm_name(major, minor)
            engine_id = choose_engine_id(manifest.engine_ids(), sm, gpu)
            entries = {g: manifest.engine(g, engine_id) for g in GRAPHS}
            plan = binding_plan(entries)  # before any GPU memory is spent on a manifest that cannot work
            runtime = trt.Runtime(trt_logger(trt))
            for g, entry in entries.items():
                built_on = entry.raw.get("sm")
                if built_on is not None and built_on != sm:
                    raise EngineError(f"{entry.path.name} is listed under {engine_id} but records sm {built_on!r}")
                if entry.raw.get("gpu") and entry.raw["gpu"] != gpu:
                    log.info("%s was built on %s; running on %s (same %s)", entry.path.name, entry.raw["gpu"], gpu, sm)
                data = _read_verified(entry)  # hashes before TensorRT parses a byte of it
                check_trt_version(entry.raw.get("trt_version"), trt.__version__, entry.path.name)
                engine = runtime.deserialize_cuda_engine(data)
                del data
                if engine is None:
                    raise EngineError(
                        f"TensorRT {trt.__version__} could not deserialize {entry.path.name} (its "
                        f"errors are in the log); {REBUILD}"
                    )
                check_io(entry, engine_io(engine, trt.TensorIOMode.INPUT))
                engines[g] = engine
                ctx = engine.create_execution_context()
                if ctx is None:
                    raise EngineError(
                        f"TensorRT could not create an execution context for {entry.path.name} (out of GPU memory?)"
                    )
                contexts[g] = ctx
            return cls(
                engine_id,
                plan,
                contexts,
                cuda,
                index,
                cuda_graph=cuda_graph,
                pinned=pinned,
                gpu=gpu,
                keepalive=(runtime, engines),
            )
        except EngineError:
            raise
        except Exception as e:  # a TensorRT or cuda-python API this code was not written against:
            # still an EngineError, so that backend="auto" falls back to ONNX Runtime
            raise EngineError(f"TensorRT backend could not open {engine_id} on {gpu}: {type(e).__name__}: {e}") from e
        finally:
            contexts.clear()  # on failure: contexts go before the engines they came from

    # --- Backend protocol ------------------------------------------------------------------------
    def input_dtype(self, graph: str, name: str) -> np.dtype:
        b = self._binding(graph, name)
        if not b.is_input:
            raise EngineError(f"{graph}.{name} is an output, not an input")
        return b.dtype

    def run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, _DeviceTensor]:
        own = self._graph(graph)
        inputs = [b for b in own.values() if b.is_input]
        missing = sorted(b.name for b in inputs if b.name not in feeds)
        unknown = sorted(set(feeds) - {b.name for b in inputs})
        if missing or unknown:
            raise EngineError(
                f"{graph} takes inputs {[b.name for b in inputs]}; "
                + "; ".join(
                    s for s in (f"missing {missing}" if missing else "", f"unknown {unknown}" if unknown else "") if s
                )
            )
        with self._lock:
            self._require_open()
            self._cuda.call("cudaSetDevice", self._device)  # the calling thread's current device may differ
            self._load_inputs(graph, inputs, feeds)
            self._execute(graph)
            out = {}
            for b in own.values():
                if not b.is_input:
                    self._writes[b.buffer] += 1
                    out[b.name] = _DeviceTensor(
                        self._buffers[b.buffer], b.shape, b.dtype, b.buffer, self._writes[b.buffer], id(self)
                    )
            return out

    def to_host(self, x: Any) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        if not isinstance(x, _DeviceTensor):
            raise EngineError(
                f"to_host expects a numpy array or a tensor this backend returned, got {type(x).__name__}"
            )
        with self._lock:
            self._require_open()
            self._check_current(x)
            self._cuda.call("cudaSetDevice", self._device)
            host = np.empty(x.shape, dtype=x.dtype)
            self._cuda.memcpy(host.ctypes.data, x.ptr, host.nbytes, "cudaMemcpyDeviceToHost", self._stream)
            self._cuda.call("cudaStreamSynchronize", self._stream)
            return host

    # --- lifetime --------------------------------------------------------------------------------
    def close(self) -> None:
        """Free every buffer, graph and stream; idempotent. Tensors returned earlier become invalid."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            cuda, errors = self._cuda, []

            def attempt(name: str, *args: Any) -> None:
                try:
                    cuda.call(name, *args)
                except Exception as e:  # keep freeing the rest; report once at the end
                    errors.append(str(e))

            if self._stream is not None:
                attempt("cudaStreamSynchronize", self._stream)
            for exe in self._graph_execs.values():
                attempt("cudaGraphExecDestroy", exe)
            self._graph_execs.clear()
            self._contexts.clear()  # contexts before the engines they belong to, both before the runtime
            self._keepalive.clear()
            for ptr in self._buffers.values():
                attempt("cudaFree", ptr)
            self._buffers.clear()
            for ptr, _ in self._staging.values():
                attempt("cudaFreeHost", ptr)
            self._staging.clear()
            for ev in self._staged.values():
                attempt("cudaEventDestroy", ev)
            self._staged.clear()
            if self._stream is not None:
                attempt("cudaStreamDestroy", self._stream)
                self._stream = None
            if errors:
                log.warning("tensorrt backend %s: errors while closing: %s", self.name, "; ".join(errors))

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        # At interpreter exit cuda-python may already be torn down; nothing useful can be done then.
        try:
            if not getattr(self, "_closed", True):
                self.close()
        except Exception:
            pass

    # --- internals -------------------------------------------------------------------------------
    def _require_open(self) -> None:
        if self._closed:
            raise EngineError(f"tensorrt backend {self.name} is closed")

    def _graph(self, graph: str) -> dict[str, Binding]:
        try:
            return self.plan.bindings[graph]
        except KeyError:
            raise EngineError(f"unknown graph {graph!r}; expected one of {list(self.plan.bindings)}") from None

    def _binding(self, graph: str, name: str) -> Binding:
        own = self._graph(graph)
        if name not in own:
            raise EngineError(f"{graph} has no tensor {name!r}; it has {list(own)}")
        return own[name]

    def _check_current(self, x: _DeviceTensor) -> None:
        if x.owner != id(self) or self._buffers.get(x.buffer) != x.ptr:
            raise EngineError(f"{x!r} was not returned by this backend")
        if self._writes[x.buffer] != x.version:
            raise EngineError(
                f"{x!r} has been overwritten since it was returned (a later {x.buffer[0]} run or "
                "feed): the TensorRT backend holds one request's tensors at a time"
            )

    def _check_feeds(self, graph: str, inputs: list[Binding], feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Every feed checked before the first byte is copied, so a bad feed leaves no buffer half-updated."""
        checked = {}
        for b in inputs:
            x = feeds[b.name]
            if isinstance(x, _DeviceTensor):
                self._check_current(x)
                what = "a device tensor "
            elif isinstance(x, np.ndarray):
                what = ""
            else:
                raise EngineError(
                    f"{graph} input {b.name!r} must be a numpy array or a tensor this backend "
                    f"returned, got {type(x).__name__}"
                )
            if tuple(x.shape) != b.shape or x.dtype != b.dtype:
                raise EngineError(
                    f"{graph} input {b.name!r} must be {list(b.shape)} {b.dtype}, got {what}{list(x.shape)} {x.dtype}"
                )
            checked[b.name] = x if isinstance(x, _DeviceTensor) else np.ascontiguousarray(x)
        return checked

    def _load_inputs(self, graph: str, inputs: list[Binding], feeds: Mapping[str, Any]) -> None:
        feeds = self._check_feeds(graph, inputs, feeds)
        cuda, staged_any = self._cuda, False
        if self._pinned and graph in self._staged:
            # The previous run's copies may still be reading this graph's staging memory.
            cuda.call("cudaEventSynchronize", self._staged[graph])
        for b in inputs:
            x = feeds[b.name]
            dst = self._buffers[b.buffer]
            if isinstance(x, _DeviceTensor):
                if x.ptr == dst:
                    continue  # already where the plan reads it (the reference K/V, every step)
                cuda.memcpy(dst, x.ptr, b.nbytes, "cudaMemcpyDeviceToDevice", self._stream)
            elif self._pinned:
                cuda.memcpy(dst, self._stage(b, x), b.nbytes, "cudaMemcpyHostToDevice", self._stream)
                staged_any = True
            else:
                # From pageable memory cudaMemcpyAsync returns only once the source has been read, so the
                # array may be freed as soon as this returns.
                cuda.memcpy(dst, x.ctypes.data, b.nbytes, "cudaMemcpyHostToDevice", self._stream)
            self._writes[b.buffer] += 1  # invalidates earlier handles to this buffer (an aliased ref_k_i too)
        if staged_any:
            if graph not in self._staged:
                self._staged[graph] = cuda.call("cudaEventCreate")
            cuda.call("cudaEventRecord", self._staged[graph], self._stream)

    def _stage(self, b: Binding, x: np.ndarray) -> int:
        key = (b.graph, b.name)
        if key not in self._staging:
            ptr = self._cuda.call("cudaMallocHost", b.nbytes)
            view = np.frombuffer((ctypes.c_ubyte * b.nbytes).from_address(ptr), dtype=b.dtype).reshape(b.shape)
            self._staging[key] = (ptr, view)
        ptr, view = self._staging[key]
        np.copyto(view, x)
        return ptr

    def _enqueue(self, graph: str) -> None:
        if not self._contexts[graph].execute_async_v3(self._stream_handle):
            raise EngineError(f"TensorRT failed to run {graph} (its errors are in the log)")

    def _execute(self, graph: str) -> None:
        exe = self._graph_execs.get(graph)
        if exe is not None:
            self._cuda.call("cudaGraphLaunch", exe, self._stream)
            return
        self._enqueue(graph)  # the warm-up run TensorRT needs before a capture, and this call's result
        if graph in self._capture:
            self._capture.discard(graph)
            self._capture_graph(graph)

    def _capture_graph(self, graph: str) -> None:
        """Record ``graph``'s enqueue as a CUDA graph for every later run.

        Valid only because nothing it records can move: every I/O address was bound once at open, GarmNet's
        reference K/V included, and shapes are static. Feeds are copied outside the graph, into those same
        addresses. Re-binding any address would require a new capture.
        """
        cuda, rt = self._cuda, self._cuda.rt
        try:
            cuda.call("cudaStreamSynchronize", self._stream)  # capture from an idle stream
            # thread-local: other threads (another library's CUDA work) are not disturbed by the capture
            cuda.call("cudaStreamBeginCapture", self._stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
            ok = False
            try:
                ok = self._contexts[graph].execute_async_v3(self._stream_handle)
            finally:
                g = cuda.call("cudaStreamEndCapture", self._stream)  # always leave capture mode
            if not ok:
                raise EngineError("execute_async_v3 failed during capture")
            try:
                exe = cuda.call("cudaGraphInstantiateWithFlags", g, 0)
            finally:
                cuda.call("cudaGraphDestroy", g)  # the executable graph keeps its own copy
            self._graph_execs[graph] = exe
            log.info("captured %s in a CUDA graph", graph)
        except Exception as e:  # an optimisation only: never fail a request because capture did
            log.warning("CUDA graph capture of %s failed (%s); running it without a graph", graph, e)
