"""TensorRT backend: device-independent logic on CPU, and the buffer/copy/capture bookkeeping against
stand-ins for ``tensorrt`` and cuda-python's ``cudart`` (host memory playing device memory).

Only ``test_real_tensorrt_restore`` touches TensorRT and a GPU; it is skipped where either is absent.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import json
import logging
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from igr_sdk import _tensorrt as T
from igr_sdk._errors import EngineError
from igr_sdk._manifest import GRAPHS, EngineEntry, Manifest, TensorInfo

F16, F32 = "float16", "float32"
SM = "sm_90"
TRT_VERSION = "10.14.1.48"

# Small I/O of the five graphs, same names and roles as DESIGN.md section 3 (B=1, latent 2x2).
REFS = {"ref_k_0": (1, 4, 8), "ref_k_1": (1, 2, 8), "ref_v_0": (1, 4, 8), "ref_v_1": (1, 2, 8)}
IO = {
    "image_encoder": ([("garment_crop", (1, 3, 4, 4), F16)], [("ip_tokens", (1, 2, 4), F16)]),
    "vae_encoder": ([("image", (1, 3, 16, 16), F16)], [("latent", (1, 4, 2, 2), F16)]),
    "garmnet": (
        [("person_latent", (1, 4, 2, 2), F16), ("mask", (1, 1, 2, 2), F16), ("text_embeds", (1, 3, 4), F16)],
        [(n, s, F16) for n, s in REFS.items()],
    ),
    "denoiser": (
        [
            ("sample", (2, 4, 2, 2), F16),
            ("timestep", (1,), F32),
            ("text_embeds", (2, 3, 4), F16),
            ("ip_tokens", (2, 2, 4), F16),
            *[(n, s, F16) for n, s in REFS.items()],
        ],
        [("noise_pred", (2, 4, 2, 2), F16)],
    ),
    "vae_decoder": ([("latent", (1, 4, 2, 2), F16)], [("image", (1, 3, 16, 16), F16)]),
}


def _infos(spec):
    return tuple(TensorInfo(n, tuple(s), d) for n, s, d in spec)


def _entry(graph, io=None, engine_id=f"tensorrt-{SM}"):
    ins, outs = io or IO[graph]
    return EngineEntry(graph, engine_id, Path(f"/x/{graph}.plan"), "0" * 64, (), "fp16", _infos(ins), _infos(outs), {})


def _entries(**override):
    return {g: _entry(g, override.get(g)) for g in GRAPHS}


# ---------------------------------------------------------------- pure functions


def test_binding_plan_aliases_every_reference_tensor_to_garmnet():
    plan = T.binding_plan(_entries())
    assert set(plan.aliases) == set(REFS)
    for name in REFS:
        assert plan.aliases[name] == ("garmnet", name)
        assert plan.bindings["denoiser"][name].buffer == ("garmnet", name)
        assert ("denoiser", name) not in plan.buffers  # no buffer of its own
        assert plan.bindings["denoiser"][name].is_input and not plan.bindings["garmnet"][name].is_input
    # everything else owns a buffer; same-named tensors of different graphs never share one
    assert plan.bindings["denoiser"]["text_embeds"].buffer == ("denoiser", "text_embeds")
    assert plan.bindings["garmnet"]["text_embeds"].buffer == ("garmnet", "text_embeds")
    assert plan.bindings["vae_decoder"]["latent"].buffer != plan.bindings["vae_encoder"]["latent"].buffer
    n_tensors = sum(len(i) + len(o) for i, o in IO.values())
    assert len(plan.buffers) == n_tensors - len(REFS)
    assert plan.buffers[("garmnet", "ref_k_0")] == 1 * 4 * 8 * 2
    assert plan.buffers[("denoiser", "timestep")] == 4
    assert plan.total_bytes == sum(plan.buffers.values())
    assert plan.bindings["denoiser"]["timestep"].dtype == np.float32


def _denoiser_with(name, shape=None, dtype=None):
    ins, outs = IO["denoiser"]
    ins = [(n, shape or s, dtype or d) if n == name else (n, s, d) for n, s, d in ins]
    return ins, outs


@pytest.mark.parametrize(
    "shape, dtype, expect",
    [
        ((1, 4, 16), None, r"ref_v_0.*\[1, 4, 16\] float16.*\[1, 4, 8\] float16"),
        (None, F32, r"ref_v_0.*\[1, 4, 8\] float32.*\[1, 4, 8\] float16"),
    ],
)
def test_binding_plan_refuses_disagreeing_reference_tensors(shape, dtype, expect):
    with pytest.raises(EngineError, match=expect):
        T.binding_plan(_entries(denoiser=_denoiser_with("ref_v_0", shape, dtype)))


def test_binding_plan_refuses_unmatched_reference_tensors():
    ins, outs = IO["denoiser"]
    extra = ([*ins, ("ref_k_2", (1, 2, 8), F16)], outs)
    with pytest.raises(EngineError, match="denoiser input 'ref_k_2' has no garmnet output"):
        T.binding_plan(_entries(denoiser=extra))
    fewer = ([t for t in ins if t[0] != "ref_k_1"], outs)
    with pytest.raises(EngineError, match=r"garmnet outputs \['ref_k_1'\], which the denoiser has no inputs for"):
        T.binding_plan(_entries(denoiser=fewer))


def test_binding_plan_refuses_dynamic_or_unknown_tensors():
    _, outs = IO["vae_decoder"]
    with pytest.raises(EngineError, match=r"vae_decoder: tensor 'latent': .*dynamic dimension"):
        T.binding_plan(_entries(vae_decoder=([("latent", (-1, 4, 2, 2), F16)], outs)))
    with pytest.raises(EngineError, match="vae_decoder: tensor 'latent': dtype 'no_such_dtype' has no numpy"):
        T.binding_plan(_entries(vae_decoder=([("latent", (1, 4, 2, 2), "no_such_dtype")], outs)))


def test_nbytes():
    assert T.nbytes((2, 4, 128, 96), "float16") == 2 * 4 * 128 * 96 * 2
    assert T.nbytes((1,), "float32") == 4
    assert T.nbytes((3, 5), np.dtype("int64")) == 120
    assert T.nbytes((), "float32") == 4
    # one cond row's level-1 score tensor at 1024x768 (DESIGN.md): counts beyond 2^31 stay exact
    assert T.nbytes((8, 12288, 24576), "float16") == 8 * 12288 * 24576 * 2
    for bad, msg in (((2, -1), "dynamic"), ((2, 0), "empty"), ((2.0, 3), "non-integer")):
        with pytest.raises(EngineError, match=msg):
            T.nbytes(bad, "float16")


def test_trt_version_check_messages(caplog):
    T.check_trt_version("10.14.1.48", "10.14.0.1")  # same major.minor: fine
    with pytest.raises(EngineError) as e:
        T.check_trt_version("10.13.3.9", "10.14.1.48", "denoiser.fp16.sm_90.trt10.13.plan")
    msg = str(e.value)
    assert "denoiser.fp16.sm_90.trt10.13.plan was built with TensorRT 10.13.3.9" in msg
    assert "TensorRT 10.14.1.48 is installed" in msg
    assert "tensorrt==10.13.*" in msg and "export/build_engines.py --backend tensorrt" in msg
    with pytest.raises(EngineError, match="built with TensorRT 11.0"):
        T.check_trt_version("11.0.0", "10.14.1")
    with pytest.raises(EngineError, match="not a TensorRT version: 'ten'"):
        T.check_trt_version("ten", "10.14.1")
    with caplog.at_level(logging.WARNING, logger="igr_sdk._tensorrt"):
        T.check_trt_version(None, "10.14.1", "x.plan")
    assert "x.plan records no TensorRT version" in caplog.text


def test_sm_naming_and_engine_choice():
    assert T.sm_name(9, 0) == "sm_90"
    assert T.sm_name(8, 6) == "sm_86"
    assert T.sm_name(12, 0) == "sm_120"
    for bad in ((-1, 0), (9, 10), (True, 0), (9.0, 0)):
        with pytest.raises(EngineError):
            T.sm_name(*bad)
    ids = {"onnxruntime-cpu", "tensorrt-sm_80", "tensorrt-sm_90"}
    assert T.choose_engine_id(ids, "sm_90") == "tensorrt-sm_90"
    with pytest.raises(EngineError) as e:
        T.choose_engine_id(ids, "sm_86", "NVIDIA A10")
    msg = str(e.value)
    assert "NVIDIA A10 (sm_86)" in msg and "'tensorrt-sm_86'" in msg
    assert "['onnxruntime-cpu', 'tensorrt-sm_80', 'tensorrt-sm_90']" in msg and "sm_80, sm_90 only" in msg
    with pytest.raises(EngineError, match="it has no TensorRT plans"):
        T.choose_engine_id({"onnxruntime-cpu"}, "sm_90")


def test_parse_device():
    assert T.parse_device(None) == 0
    assert T.parse_device(1) == 1
    assert T.parse_device(np.int64(2)) == 2
    assert T.parse_device("cuda") == 0
    assert T.parse_device("cuda:3") == 3
    assert T.parse_device("1") == 1
    with pytest.raises(EngineError, match="not device='cpu'.*onnxruntime"):
        T.parse_device("cpu")
    for bad in ("gpu", "cuda:", ":1", -1, True, 1.0):
        with pytest.raises(EngineError):
            T.parse_device(bad)


def test_dtype_names_and_io_check():
    assert T.dtype_name(FakeTrt.DataType.HALF) == "float16"
    assert T.dtype_name(FakeTrt.DataType.FLOAT) == "float32"
    assert T.dtype_name("DataType.INT64") == "int64"
    entry = _entry("vae_decoder")
    T.check_io(entry, {"inputs": list(entry.inputs), "outputs": list(entry.outputs)})
    with pytest.raises(EngineError) as e:
        T.check_io(
            entry,
            {
                "inputs": [TensorInfo("latent", (1, 4, 4, 4), F16)],
                "outputs": [TensorInfo("pixels", (1, 3, 16, 16), F16)],
            },
        )
    msg = str(e.value)
    assert "latent: manifest [1, 4, 2, 2] float16, engine [1, 4, 4, 4] float16" in msg
    assert "image: in the manifest, not in the engine" in msg and "pixels: in the engine, not in the manifest" in msg


def test_module_imports_without_torch_or_tensorrt():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['tensorrt'] = None; import igr_sdk._tensorrt; "
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# ---------------------------------------------------------------- stand-ins for tensorrt and cudart


class FakeCudart:
    """cuda-python's runtime API shape: every call returns (cudaError_t, *values); host memory as "device"."""

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2
        cudaErrorNoDevice = 100
        cudaErrorStreamCaptureUnsupported = 900

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToHost = 0
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeGlobal = 0
        cudaStreamCaptureModeThreadLocal = 1

    class Stream:
        def __int__(self):
            return 0x5EED

    def __init__(self, count=1, major=9, minor=0, name=b"NVIDIA H100 80GB HBM3\0\0"):
        self.count, self.major, self.minor, self.name = count, major, minor, name
        self.device, self.host = {}, {}  # ptr -> ctypes buffer
        self.calls = []
        self.fail = {}  # call name -> error code
        self.capturing, self.captured, self.graphs = False, [], {}
        self.streams = 0
        self.copies = []  # (kind, dst, src, bytes)

    def _r(self, name, *values):
        self.calls.append(name)
        err = self.fail.get(name, self.cudaError_t.cudaSuccess)
        return (err, *values) if err == self.cudaError_t.cudaSuccess else (err, *(None for _ in values))

    def _inside(self, mem, ptr, n):
        return any(p <= ptr and ptr + n <= p + ctypes.sizeof(b) for p, b in mem.items())

    def cudaGetDeviceCount(self):
        return self._r("cudaGetDeviceCount", self.count)

    def cudaSetDevice(self, i):
        assert 0 <= i < self.count
        return self._r("cudaSetDevice")

    def cudaGetDeviceProperties(self, i):
        return self._r(
            "cudaGetDeviceProperties", types.SimpleNamespace(major=self.major, minor=self.minor, name=self.name)
        )

    def _alloc(self, mem, name, n):
        if name in self.fail:
            return self._r(name, None)
        buf = ctypes.create_string_buffer(n)
        mem[ctypes.addressof(buf)] = buf
        return self._r(name, ctypes.addressof(buf))

    def cudaMalloc(self, n):
        return self._alloc(self.device, "cudaMalloc", n)

    def cudaMallocHost(self, n):
        return self._alloc(self.host, "cudaMallocHost", n)

    def cudaFree(self, p):
        del self.device[p]
        return self._r("cudaFree")

    def cudaFreeHost(self, p):
        del self.host[p]
        return self._r("cudaFreeHost")

    def cudaStreamCreate(self):
        self.streams += 1
        return self._r("cudaStreamCreate", self.Stream())

    def cudaStreamDestroy(self, s):
        self.streams -= 1
        return self._r("cudaStreamDestroy")

    def cudaStreamSynchronize(self, s):
        return self._r("cudaStreamSynchronize")

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        assert isinstance(stream, self.Stream) and not self.capturing
        k = self.cudaMemcpyKind
        assert self._inside(self.device, dst, n) == (kind in (k.cudaMemcpyHostToDevice, k.cudaMemcpyDeviceToDevice))
        assert self._inside(self.device, src, n) == (kind in (k.cudaMemcpyDeviceToHost, k.cudaMemcpyDeviceToDevice))
        ctypes.memmove(dst, src, n)
        self.copies.append((kind.name.removeprefix("cudaMemcpy"), dst, src, n))
        return self._r("cudaMemcpyAsync")

    def cudaEventCreate(self):
        return self._r("cudaEventCreate", object())

    def cudaEventRecord(self, ev, s):
        return self._r("cudaEventRecord")

    def cudaEventSynchronize(self, ev):
        return self._r("cudaEventSynchronize")

    def cudaEventDestroy(self, ev):
        return self._r("cudaEventDestroy")

    def cudaStreamBeginCapture(self, s, mode):
        r = self._r("cudaStreamBeginCapture")
        self.capturing = r[0] == self.cudaError_t.cudaSuccess
        return r

    def cudaStreamEndCapture(self, s):
        self.capturing = False
        graph, self.captured = self.captured, []
        return self._r("cudaStreamEndCapture", graph)

    def cudaGraphInstantiateWithFlags(self, graph, flags):
        exe = object()
        self.graphs[exe] = list(graph)
        return self._r("cudaGraphInstantiateWithFlags", exe)

    def cudaGraphDestroy(self, g):
        return self._r("cudaGraphDestroy")

    def cudaGraphExecDestroy(self, exe):
        del self.graphs[exe]
        return self._r("cudaGraphExecDestroy")

    def cudaGraphLaunch(self, exe, s):
        for op in self.graphs[exe]:
            op()
        return self._r("cudaGraphLaunch")


def _view(ptr, shape, dtype):
    n = T.nbytes(shape, dtype)
    return np.frombuffer((ctypes.c_ubyte * n).from_address(ptr), dtype=dtype).reshape(shape)


# What each stand-in engine computes, simple enough to check by hand.
def _compute(graph, x):
    if graph == "image_encoder":
        return {"ip_tokens": x["garment_crop"].mean()}
    if graph == "vae_encoder":
        return {"latent": x["image"].mean()}
    if graph == "garmnet":
        base = x["person_latent"].mean() + x["mask"].mean()
        return {n: base + i + 10 * (n[4] == "v") for i, n in enumerate(sorted(REFS))}
    if graph == "denoiser":
        return {"noise_pred": x["sample"] * x["timestep"][0] + sum(x[n].astype(np.float32).mean() for n in REFS)}
    return {"image": x["latent"].mean()}


class FakeContext:
    def __init__(self, engine):
        self.engine, self.addresses, self.runs = engine, {}, 0

    def set_tensor_address(self, name, ptr):
        assert name in self.engine.io
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, handle):
        rt = self.engine.rt
        assert handle == 0x5EED and set(self.addresses) == set(self.engine.io)
        self.runs += 1
        if rt.capturing:
            rt.captured.append(self._compute)
        else:
            self._compute()
        return True

    def _compute(self):
        io = self.engine.io
        arrays = {n: _view(self.addresses[n], io[n]["shape"], T.dtype_name(io[n]["dtype"])) for n in io}
        inputs = {n: a.copy() for n, a in arrays.items() if io[n]["mode"] == FakeTrt.TensorIOMode.INPUT}
        for n, v in _compute(self.engine.graph, inputs).items():
            arrays[n][...] = v


class FakeEngine:
    def __init__(self, spec, rt):
        self.graph, self.rt = spec["graph"], rt
        self.io = {
            t["name"]: {
                "shape": tuple(t["shape"]),
                "dtype": FakeTrt.DataType[t["dtype"]],
                "mode": FakeTrt.TensorIOMode[t["mode"]],
            }
            for t in spec["io"]
        }
        self.names = list(self.io)
        self.contexts = []

    num_io_tensors = property(lambda self: len(self.names))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.io[name]["mode"]

    def get_tensor_shape(self, name):
        return list(self.io[name]["shape"])  # trt.Dims iterates like this

    def get_tensor_dtype(self, name):
        return self.io[name]["dtype"]

    def create_execution_context(self):
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


class FakeTrt(types.ModuleType):
    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3
            VERBOSE = 4

        def __init__(self):
            pass

    class TensorIOMode(enum.Enum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    class DataType(enum.Enum):
        FLOAT = 0
        HALF = 1
        INT32 = 3

    def __init__(self, rt, version=TRT_VERSION):
        super().__init__("tensorrt")
        self.__version__ = version
        self.rt = rt
        self.engines = {}  # graph -> FakeEngine, in deserialization order
        trt = self

        class Runtime:
            def __init__(self, logger):
                assert isinstance(logger, trt.ILogger)

            def deserialize_cuda_engine(self, data):
                try:
                    spec = json.loads(bytes(data))
                except ValueError:
                    return None
                trt.engines[spec["graph"]] = FakeEngine(spec, trt.rt)
                return trt.engines[spec["graph"]]

        self.Runtime = Runtime


_TRT_NAMES = {F16: "HALF", F32: "FLOAT"}


def _plan_bytes(graph, io=None):
    ins, outs = io or IO[graph]
    tensors = [
        {"name": n, "shape": list(s), "dtype": _TRT_NAMES[d], "mode": m}
        for m, spec in (("INPUT", ins), ("OUTPUT", outs))
        for n, s, d in spec
    ]
    return json.dumps({"graph": graph, "io": tensors}).encode()


def write_engine_dir(root: Path, sm=SM, trt_version=TRT_VERSION, plans=None) -> Manifest:
    """An engine directory whose "plans" are JSON the stand-in TensorRT deserializes."""
    graphs = {}
    for g in GRAPHS:
        name = f"{g}.fp16.{sm}.trt10.14.plan"
        data = (plans or {}).get(g) or _plan_bytes(g)
        (root / name).write_bytes(data)
        ins, outs = IO[g]
        graphs[g] = {
            "engines": {
                f"tensorrt-{sm}": {
                    "file": name,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "data": [],
                    "precision": "fp16",
                    "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in ins],
                    "outputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in outs],
                    "gpu": "NVIDIA H100 80GB HBM3",
                    "sm": sm,
                    "trt_version": trt_version,
                }
            }
        }
    return Manifest(root, {"graphs": graphs})


@pytest.fixture
def fakes(monkeypatch):
    rt = FakeCudart()
    trt = FakeTrt(rt)
    cuda_pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda_pkg.bindings, bindings.runtime = bindings, rt
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    return types.SimpleNamespace(rt=rt, trt=trt)


@pytest.fixture
def manifest(tmp_path):
    return write_engine_dir(tmp_path)


def _feeds(graph, rng, **given):
    ins, _ = IO[graph]
    return {n: given[n] if n in given else rng.standard_normal(s).astype(d) for n, s, d in ins}


def _request(be, rng):
    """The Restorer's order of calls: latent on the device into garmnet, its K/V into every denoiser step."""
    latent = be.run("vae_encoder", _feeds("vae_encoder", rng))["latent"]
    refs = be.run("garmnet", _feeds("garmnet", rng, person_latent=latent))
    return latent, refs


# ---------------------------------------------------------------- open, run, close against the stand-ins


def test_open_binds_reference_kv_in_place_and_runs(fakes, manifest):
    rt, trt = fakes.rt, fakes.trt
    be = T.TensorRTBackend.open(manifest)
    assert be.name == "tensorrt-sm_90" and be.gpu == "NVIDIA H100 80GB HBM3"
    assert list(trt.engines) == list(GRAPHS)
    garm, den = trt.engines["garmnet"].contexts[0], trt.engines["denoiser"].contexts[0]
    for n in REFS:  # the binding plan: one buffer, bound to both graphs
        assert den.addresses[n] == garm.addresses[n]
    assert den.addresses["text_embeds"] != garm.addresses["text_embeds"]
    assert be.input_dtype("denoiser", "timestep") == np.float32
    assert be.input_dtype("garmnet", "mask") == np.float16

    rng = np.random.default_rng(0)
    person = rng.standard_normal((1, 3, 16, 16)).astype(F16)
    latent = be.run("vae_encoder", {"image": person})["latent"]
    assert isinstance(latent, T._DeviceTensor) and latent.shape == (1, 4, 2, 2)
    np.testing.assert_allclose(be.to_host(latent), person.mean(), rtol=1e-3)

    rt.copies.clear()
    mask = np.ones((1, 1, 2, 2), F16)
    refs = be.run("garmnet", _feeds("garmnet", rng, person_latent=latent, mask=mask))
    d2d = [c for c in rt.copies if c[0] == "DeviceToDevice"]
    assert d2d == [("DeviceToDevice", garm.addresses["person_latent"], latent.ptr, 32)]
    assert sorted(refs) == sorted(REFS)

    fixed = {n: rng.standard_normal(s).astype(d) for n, s, d in IO["denoiser"][0] if n in ("text_embeds", "ip_tokens")}
    for step in range(3):
        rt.copies.clear()
        sample = rng.standard_normal((2, 4, 2, 2)).astype(F16)
        t = np.array([10.0 * (step + 1)], F32)
        out = be.run("denoiser", {"sample": sample, "timestep": t, **fixed, **refs})
        # only the per-step host tensors move; the reference K/V are read where garmnet wrote them
        assert sorted(c[0] for c in rt.copies) == ["HostToDevice"] * 4
        assert not {c[1] for c in rt.copies} & {den.addresses[n] for n in REFS}
        expected = sample.astype(np.float32) * t[0] + sum(be.to_host(refs[n]).astype(np.float32).mean() for n in REFS)
        np.testing.assert_allclose(be.to_host(out["noise_pred"]), expected, rtol=2e-3, atol=2e-3)
    assert den.runs == 3 and "cudaGraphLaunch" not in rt.calls

    be.close()
    assert rt.device == {} and rt.streams == 0
    be.close()  # idempotent
    with pytest.raises(EngineError, match="is closed"):
        be.run("vae_decoder", _feeds("vae_decoder", rng))


def test_stale_and_foreign_tensors_are_refused(fakes, manifest):
    be = T.TensorRTBackend.open(manifest)
    rng = np.random.default_rng(1)
    _, refs = _request(be, rng)
    _request(be, rng)  # a second request overwrites the reference K/V
    feeds = _feeds("denoiser", rng, **refs)
    with pytest.raises(EngineError, match=r"garmnet\.ref_k_0.*overwritten since it was returned"):
        be.run("denoiser", feeds)
    with pytest.raises(EngineError, match="overwritten"):
        be.to_host(refs["ref_v_1"])
    # a numpy feed into an aliased denoiser input writes garmnet's buffer: its handles go stale too
    _, refs = _request(be, rng)
    be.run("denoiser", _feeds("denoiser", rng))
    with pytest.raises(EngineError, match="overwritten"):
        be.to_host(refs["ref_k_0"])
    other = T.TensorRTBackend.open(manifest)
    latent = other.run("vae_encoder", _feeds("vae_encoder", rng))["latent"]
    with pytest.raises(EngineError, match="was not returned by this backend"):
        be.run("garmnet", _feeds("garmnet", rng, person_latent=latent))
    with pytest.raises(EngineError, match="numpy array or a tensor this backend returned, got list"):
        be.to_host([1, 2])


def test_bad_feeds_are_refused_before_anything_is_copied(fakes, manifest):
    rt = fakes.rt
    be = T.TensorRTBackend.open(manifest)
    rng = np.random.default_rng(2)
    feeds = _feeds("denoiser", rng)
    rt.copies.clear()
    with pytest.raises(
        EngineError,
        match=r"denoiser input 'ip_tokens' must be \[2, 2, 4\] float16, got \[2, 2, 4\] "
        r"float32",
    ):
        be.run("denoiser", {**feeds, "ip_tokens": feeds["ip_tokens"].astype(F32)})
    with pytest.raises(EngineError, match=r"must be \[1\] float32, got \[\] float32"):
        be.run("denoiser", {**feeds, "timestep": np.array(3, F32)})
    with pytest.raises(EngineError, match=r"missing \['sample'\]; unknown \['x'\]"):
        be.run("denoiser", {**{k: v for k, v in feeds.items() if k != "sample"}, "x": feeds["sample"]})
    with pytest.raises(EngineError, match="unknown graph 'unet'"):
        be.run("unet", {})
    with pytest.raises(EngineError, match="garmnet has no tensor 'sample'"):
        be.input_dtype("garmnet", "sample")
    latent = be.run("vae_encoder", _feeds("vae_encoder", rng))["latent"]
    rt.copies.clear()
    with pytest.raises(EngineError, match=r"'mask' must be \[1, 1, 2, 2\] float16, got a device tensor \[1, 4, 2, 2\]"):
        be.run("garmnet", _feeds("garmnet", rng, mask=latent))
    assert rt.copies == []


def test_cuda_graph_captures_the_denoiser_once_and_replays_it(fakes, manifest):
    rt, trt = fakes.rt, fakes.trt
    be = T.TensorRTBackend.open(manifest, cuda_graph=True)
    rng = np.random.default_rng(3)
    _, refs = _request(be, rng)
    den = trt.engines["denoiser"].contexts[0]
    outs = []
    for _ in range(4):
        feeds = _feeds("denoiser", rng, **refs)
        got = be.to_host(be.run("denoiser", feeds)["noise_pred"]).astype(np.float32)
        ref_mean = sum(be.to_host(refs[n]).astype(np.float32).mean() for n in REFS)
        np.testing.assert_allclose(
            got, feeds["sample"].astype(np.float32) * feeds["timestep"][0] + ref_mean, rtol=2e-3, atol=2e-3
        )
        outs.append(got)
    # warm-up run + one enqueue recorded during capture; the other three steps are graph launches
    assert den.runs == 2 and rt.calls.count("cudaGraphLaunch") == 3
    assert rt.calls.count("cudaStreamBeginCapture") == 1 and rt.calls.count("cudaGraphDestroy") == 1
    assert trt.engines["garmnet"].contexts[0].runs == 1  # only the denoiser is captured
    be.close()
    assert rt.graphs == {}


def test_failed_capture_falls_back_to_plain_runs(fakes, manifest, caplog):
    rt = fakes.rt
    rt.fail["cudaStreamBeginCapture"] = rt.cudaError_t.cudaErrorStreamCaptureUnsupported
    be = T.TensorRTBackend.open(manifest, cuda_graph=True)
    rng = np.random.default_rng(4)
    _, refs = _request(be, rng)
    with caplog.at_level(logging.WARNING, logger="igr_sdk._tensorrt"):
        for _ in range(3):
            be.to_host(be.run("denoiser", _feeds("denoiser", rng, **refs))["noise_pred"])
    assert "CUDA graph capture of denoiser failed" in caplog.text
    assert "cudaStreamBeginCapture failed: cudaErrorStreamCaptureUnsupported" in caplog.text
    assert rt.calls.count("cudaStreamBeginCapture") == 1 and "cudaGraphLaunch" not in rt.calls
    assert not rt.capturing


def test_pinned_staging_gives_the_same_results(fakes, manifest):
    rt = fakes.rt
    results = []
    for pinned in (False, True):
        be = T.TensorRTBackend.open(manifest, pinned=pinned)
        rng = np.random.default_rng(5)
        _, refs = _request(be, rng)
        results.append(
            [be.to_host(be.run("denoiser", _feeds("denoiser", rng, **refs))["noise_pred"]) for _ in range(3)]
        )
        if pinned:
            # one page-locked buffer per input fed from the host, reused every step
            assert rt.calls.count("cudaMallocHost") == len(rt.host) == 1 + 2 + 4
            assert rt.calls.count("cudaEventSynchronize") == 2
        be.close()
    assert rt.host == {}
    np.testing.assert_array_equal(np.stack(results[0]), np.stack(results[1]))


def test_open_refuses_a_gpu_without_engines(fakes, manifest):
    fakes.rt.major, fakes.rt.minor = 8, 0
    with pytest.raises(EngineError, match=r"NVIDIA H100 80GB HBM3 \(sm_80\).*'tensorrt-sm_80'.*\['tensorrt-sm_90'\]"):
        T.TensorRTBackend.open(manifest)
    with pytest.raises(EngineError, match=r"CUDA device 2 requested; this machine has 1 GPU"):
        T.TensorRTBackend.open(manifest, "cuda:2")
    fakes.rt.fail["cudaGetDeviceCount"] = fakes.rt.cudaError_t.cudaErrorNoDevice
    with pytest.raises(EngineError, match="no usable CUDA GPU.*cudaGetDeviceCount failed: cudaErrorNoDevice"):
        T.TensorRTBackend.open(manifest)


def test_open_checks_hashes_before_deserializing(fakes, manifest):
    plan = manifest.root / manifest.raw["graphs"]["garmnet"]["engines"]["tensorrt-sm_90"]["file"]
    plan.write_bytes(plan.read_bytes().replace(b"ref_k_0", b"ref_k_9"))
    with pytest.raises(EngineError, match="garmnet.fp16.sm_90.trt10.14.plan' does not match its manifest hash"):
        T.TensorRTBackend.open(manifest)
    assert "garmnet" not in fakes.trt.engines  # TensorRT never saw the tampered bytes
    plan.unlink()
    with pytest.raises(EngineError, match="is missing"):
        T.TensorRTBackend.open(manifest)


def test_open_checks_the_tensorrt_version(fakes, tmp_path):
    manifest = write_engine_dir(tmp_path, trt_version="10.8.0.43")
    with pytest.raises(
        EngineError,
        match=r"image_encoder.*built with TensorRT 10\.8\.0\.43, but TensorRT 10\.14\.1"
        r"\.48 is installed",
    ):
        T.TensorRTBackend.open(manifest)
    assert fakes.trt.engines == {}


def test_open_compares_engine_io_with_the_manifest(fakes, tmp_path):
    ins, outs = IO["denoiser"]
    wrong = ([(n, (2, 4, 4, 4), d) if n == "sample" else (n, s, d) for n, s, d in ins], outs)
    manifest = write_engine_dir(tmp_path, plans={"denoiser": _plan_bytes("denoiser", wrong)})
    with pytest.raises(EngineError) as e:
        T.TensorRTBackend.open(manifest)
    assert "denoiser.fp16.sm_90.trt10.14.plan inputs disagree with manifest.json" in str(e.value)
    assert "sample: manifest [2, 4, 2, 2] float16, engine [2, 4, 4, 4] float16" in str(e.value)


def test_open_reports_an_undeserializable_plan(fakes, tmp_path):
    manifest = write_engine_dir(tmp_path, plans={"vae_decoder": b"not a plan"})
    with pytest.raises(EngineError, match=r"could not deserialize vae_decoder\.fp16\.sm_90\.trt10\.14\.plan"):
        T.TensorRTBackend.open(manifest)


def test_failed_allocation_frees_what_was_allocated(fakes, manifest):
    rt = fakes.rt
    real = rt.cudaMalloc
    n = {"left": 5}

    def malloc(size):
        n["left"] -= 1
        return real(size) if n["left"] > 0 else (rt.cudaError_t.cudaErrorMemoryAllocation, None)

    rt.cudaMalloc = malloc
    with pytest.raises(EngineError, match="CUDA call cudaMalloc failed: cudaErrorMemoryAllocation"):
        T.TensorRTBackend.open(manifest)
    assert rt.device == {} and rt.streams == 0


def test_cudart_is_found_under_either_layout(fakes, monkeypatch):
    assert T.load_cudart() is fakes.rt
    old = types.ModuleType("cuda")
    old.cudart = fakes.rt
    monkeypatch.setitem(sys.modules, "cuda", old)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    assert T.load_cudart() is fakes.rt
    monkeypatch.setitem(sys.modules, "cuda", None)
    with pytest.raises(EngineError, match=r"cuda-python is not installed.*pip install 'igr-sdk\[tensorrt\]'"):
        T.load_cudart()


def test_open_without_tensorrt_says_what_to_install(monkeypatch, manifest):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if it were not installed
    with pytest.raises(EngineError, match=r"pip install 'igr-sdk\[tensorrt\]'"):
        T.TensorRTBackend.open(manifest)


def test_open_on_this_machine_without_tensorrt(manifest):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(EngineError, match=r"tensorrt is not installed: pip install 'igr-sdk\[tensorrt\]'"):
        T.TensorRTBackend.open(manifest)


# ---------------------------------------------------------------- the real thing, where there is a GPU


def _cuda_gpu_or_skip():
    try:
        rt = T.load_cudart()
    except EngineError:
        pytest.skip("cuda-python is not installed")
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess or count == 0:
        pytest.skip("no CUDA GPU")


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.slow
def test_real_tensorrt_restore(tmp_path, request, person_and_mask):
    pytest.importorskip("tensorrt")
    _cuda_gpu_or_skip()
    # fixtures fetched only now: building them costs minutes that a skipped test should not spend
    tiny_checkpoint = request.getfixturevalue("tiny_checkpoint")
    tiny_engines = request.getfixturevalue("tiny_engines")
    from export.build import BuildOptions, build
    from igr_sdk import Restorer
    from igr_sdk._manifest import read_manifest

    out = tmp_path / "trt"
    build(BuildOptions(checkpoint=tiny_checkpoint, out=out, backend="tensorrt"))
    manifest = read_manifest(out)
    with np.load(manifest.resolve(manifest.raw["constants"]["file"]), allow_pickle=False) as z:
        constants = {k: z[k] for k in ("prompt_embeds", "uncond_ip_tokens")}
    person, mask = person_and_mask

    images = {}
    for cuda_graph in (False, True):
        with T.TensorRTBackend.open(manifest, cuda_graph=cuda_graph) as be:
            assert be.name.startswith("tensorrt-sm_")
            r = Restorer(manifest, be, constants)
            images[cuda_graph] = np.asarray(r.restore(person, mask, "upper", steps=4, seed=3).image, np.int16)
    assert images[False].shape == (64, 48, 3)
    # the same kernels on the same addresses, replayed: identical
    np.testing.assert_array_equal(images[False], images[True])
    # fp16 TensorRT against fp32 ONNX Runtime on the CPU: close, not equal
    cpu = Restorer.from_dir(tiny_engines, backend="onnxruntime", device="cpu")
    ref = np.asarray(cpu.restore(person, mask, "upper", steps=4, seed=3).image, np.int16)
    assert np.abs(images[False] - ref).mean() < 3


def test_unexpected_api_errors_become_engine_errors(fakes, manifest):
    # backend="auto" falls back to ONNX Runtime on EngineError only: an API this code was not written
    # against must not escape as a TypeError
    def runtime(logger):
        raise TypeError("Runtime(): incompatible constructor arguments")

    fakes.trt.Runtime = runtime
    with pytest.raises(EngineError, match="could not open tensorrt-sm_90 on NVIDIA H100.*TypeError: Runtime"):
        T.TensorRTBackend.open(manifest)
