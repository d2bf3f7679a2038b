"""TensorRT readiness check and the device-independent parts of the plan builder, on small hand-built graphs.

Oversized tensors exist only as shapes: no test allocates them.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from export import readiness, tensorrt_build
from export.readiness import ReadinessError, check, require_ready

# ---------------------------------------------------------------- graph builders


def _model(nodes, inputs, outputs, initializers=(), opset=18, **kw) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset), *kw.pop("extra_opsets", [])], **kw)


def _out(name, dtype=T.FLOAT):
    return h.make_tensor_value_info(name, dtype, None)


def _scores_model(dtype=T.FLOAT) -> onnx.ModelProto:
    """(b, 8, n, 64) x (b, 8, 64, m) with symbolic dims: the size depends on the shapes asked about."""
    a = h.make_tensor_value_info("a", dtype, ["b", 8, "n", 64])
    b = h.make_tensor_value_info("b", dtype, ["b", 8, 64, "m"])
    return _model([h.make_node("MatMul", ["a", "b"], ["s"], name="big_matmul")], [a, b], [_out("s", dtype)])


def _attention_mmsm(dtype=T.FLOAT) -> onnx.ModelProto:
    """Opset-18 MatMul-Softmax-MatMul attention."""
    q = h.make_tensor_value_info("q", dtype, ["b", 8, "n", 40])
    k = h.make_tensor_value_info("k", dtype, ["b", 8, "m", 40])
    v = h.make_tensor_value_info("v", dtype, ["b", 8, "m", 40])
    nodes = [
        h.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2], name="k_t"),
        h.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        h.make_node("Softmax", ["scores"], ["probs"], axis=-1, name="softmax"),
        h.make_node("MatMul", ["probs", "v"], ["o"], name="pv"),
    ]
    return _model(nodes, [q, k, v], [_out("o", dtype)])


def _attention_op(q_rank=4, opset=23) -> onnx.ModelProto:
    q_dims = ["b", 8, "n", 40] if q_rank == 4 else ["b", "n", 320]
    kv_dims = ["b", 8, "m", 40] if q_rank == 4 else ["b", "m", 320]
    q = h.make_tensor_value_info("q", T.FLOAT16, q_dims)
    k = h.make_tensor_value_info("k", T.FLOAT16, kv_dims)
    v = h.make_tensor_value_info("v", T.FLOAT16, kv_dims)
    heads = {} if q_rank == 4 else {"q_num_heads": 8, "kv_num_heads": 8}
    node = h.make_node("Attention", ["q", "k", "v"], ["o"], name="fused_attn", **heads)
    return _model([node], [q, k, v], [_out("o", T.FLOAT16)], opset=opset)


# SD1.5 at 1024x768, level 1 (latent 128x96): a cond row attends 12288 queries to 2 x 12288 keys.
SD15_LEVEL1 = {"q": (1, 8, 12288, 40), "k": (1, 8, 24576, 40), "v": (1, 8, 24576, 40)}


def _group_norm(cast_to_fp32: bool) -> onnx.ModelProto:
    x = h.make_tensor_value_info("x", T.FLOAT16, [1, 32, 8, 8])
    stat_dtype = np.float32 if cast_to_fp32 else np.float16
    scale = nh.from_array(np.ones(32, stat_dtype), "scale")
    bias = nh.from_array(np.zeros(32, stat_dtype), "bias")
    if cast_to_fp32:
        nodes = [
            h.make_node("Cast", ["x"], ["x32"], to=T.FLOAT, name="to_fp32"),
            h.make_node("GroupNormalization", ["x32", "scale", "bias"], ["y32"], num_groups=4, name="gn"),
            h.make_node("Cast", ["y32"], ["y"], to=T.FLOAT16, name="to_fp16"),
        ]
    else:
        nodes = [h.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=4, name="gn")]
    return _model(nodes, [x], [_out("y", T.FLOAT16)], [scale, bias], opset=21)


def _kinds(report) -> list[str]:
    return [p.kind for p in report.problems]


# ---------------------------------------------------------------- tensor sizes


def test_oversized_tensor_is_flagged_with_its_node():
    report = check(_scores_model(), {"a": (1, 8, 50000, 64), "b": (1, 8, 64, 50000)})
    assert not report.ok
    [p] = report.problems
    assert (p.kind, p.node, p.op) == ("tensor_too_large", "big_matmul", "MatMul")
    assert "20,000,000,000" in p.detail
    assert report.largest[0] == ("s", "big_matmul", (1, 8, 50000, 50000), 20_000_000_000)


def test_same_graph_at_a_small_shape_passes():
    report = check(_scores_model(), {"a": (1, 8, 64, 64), "b": (1, 8, 64, 64)})
    assert report.ok and report.problems == ()
    assert report.ops == {"MatMul": 1} and report.opset == 18


def test_max_elements_is_the_threshold():
    shapes = {"a": (1, 8, 128, 64), "b": (1, 8, 64, 128)}  # inputs 65536 elements each, scores 131072
    assert check(_scores_model(), shapes, max_elements=131072).ok
    assert _kinds(check(_scores_model(), shapes, max_elements=131071)) == ["tensor_too_large"]


def test_sd15_level1_attention_scores_are_caught_and_the_fused_op_passes():
    report = check(_attention_mmsm(), SD15_LEVEL1)
    too_large = [p for p in report.problems if p.kind == "tensor_too_large"]
    assert [p.node for p in too_large] == ["qk", "softmax"]
    assert "2,415,919,104" in too_large[0].detail  # 8 x 12288 x 24576
    fused = check(_attention_op(), SD15_LEVEL1)
    assert fused.ok, fused.format()
    assert max(n for *_, n in fused.largest) == 8 * 24576 * 40


def test_unknown_shapes_are_warnings_only():
    report = check(_attention_mmsm())  # symbolic dims, no shapes given
    assert report.ok
    assert {p.kind for p in report.problems} == {"dynamic_shape"}
    assert {p.node for p in report.problems} == {"qk", "softmax", "pv"}
    assert report.warnings == report.problems and report.blocking == ()


# ---------------------------------------------------------------- operators


def test_onnx_runtime_contrib_op_is_flagged():
    x = h.make_tensor_value_info("x", T.FLOAT, [2, 4])
    w = nh.from_array(np.ones((4, 4), np.float32), "w")
    node = h.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft", name="ort_fused")
    model = _model([node], [x], [_out("y")], [w], extra_opsets=[h.make_opsetid("com.microsoft", 1)])
    report = check(model)
    [p] = [p for p in report.problems if p.kind == "unsupported_op"]
    assert (p.node, p.op) == ("ort_fused", "com.microsoft::FusedMatMul")
    assert "ONNX Runtime" in p.detail
    assert report.ops == {"com.microsoft::FusedMatMul": 1}


def test_op_missing_from_tensorrt_list_is_flagged():
    x = h.make_tensor_value_info("x", T.FLOAT, [6])
    model = _model([h.make_node("Unique", ["x"], ["y"], name="uniq")], [x], [_out("y")])
    [p] = check(model).problems
    assert (p.kind, p.node, p.op) == ("unsupported_op", "uniq", "Unique")


def test_unsupported_op_inside_a_subgraph_is_flagged():
    x = h.make_tensor_value_info("x", T.FLOAT, [6])
    cond = h.make_tensor_value_info("c", T.BOOL, [])
    then_g = h.make_graph([h.make_node("Unique", ["x"], ["u"], name="uniq")], "then", [], [_out("u")])
    else_g = h.make_graph([h.make_node("Identity", ["x"], ["i"], name="ident")], "else", [], [_out("i")])
    node = h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="branch")
    report = check(_model([node], [cond, x], [_out("y")]))
    [p] = [p for p in report.problems if p.kind == "unsupported_op"]
    assert p.node == "branch/then_branch/uniq"


def test_local_functions_are_inlined_before_the_op_check():
    # The dynamo exporter can leave model-local functions; TensorRT's parser inlines them, so must we.
    fn = h.make_function(
        "pkg.local", "ScaledSoftmax", ["x"], ["y"], [h.make_node("Softmax", ["x"], ["y"], axis=-1)],
        [h.make_opsetid("", 18)],
    )  # fmt: skip
    x = h.make_tensor_value_info("x", T.FLOAT, [2, 4])
    node = h.make_node("ScaledSoftmax", ["x"], ["y"], domain="pkg.local", name="call")
    model = _model([node], [x], [_out("y")], extra_opsets=[h.make_opsetid("pkg.local", 1)], functions=[fn])
    report = check(model)
    assert report.ok, report.format()
    assert report.ops == {"Softmax": 1}


@pytest.mark.parametrize(
    ("trt_version", "ok"), [((10, 8), False), ((10, 13), False), ((10, 14), True), ((11, 0), True)]
)
def test_attention_op_needs_tensorrt_10_14(trt_version, ok):
    report = check(_attention_op(), SD15_LEVEL1, trt_version=trt_version)
    assert report.ok is ok
    if not ok:
        [p] = report.problems
        assert (p.kind, p.node, p.op) == ("unsupported_op", "fused_attn", "Attention")
        assert "10.14" in p.detail


def test_attention_with_3d_inputs_is_flagged():
    report = check(_attention_op(q_rank=3), {"q": (1, 64, 320), "k": (1, 64, 320), "v": (1, 64, 320)})
    assert not report.ok
    assert all(p.kind == "unsupported_op" and "4-D" in p.detail for p in report.problems)


def test_opset_beyond_the_parser_range_is_flagged():
    report = check(_attention_op(opset=25), SD15_LEVEL1)
    assert any(p.node == "<model>" and p.op == "opset 25" for p in report.problems)


# ---------------------------------------------------------------- fp16


def test_fp16_group_norm_without_cast_is_flagged():
    report = check(_group_norm(cast_to_fp32=False))
    [p] = report.problems
    assert (p.kind, p.node, p.op) == ("fp16_overflow_risk", "gn", "GroupNormalization")
    assert not report.ok


def test_fp16_group_norm_between_casts_is_not_flagged():
    report = check(_group_norm(cast_to_fp32=True))
    assert report.ok and report.problems == (), report.format()


def test_shapes_are_inferred_past_group_norm():
    # onnx has no shape inference for GroupNormalization; without help every later tensor would be unknown.
    model = _group_norm(cast_to_fp32=False)
    model.graph.node.append(h.make_node("Relu", ["y"], ["r"], name="after_gn"))
    model.graph.output[0].name = "r"
    report = check(model, fp16=False)
    assert ("r", "after_gn", (1, 32, 8, 8), 2048) in report.largest


def test_fp16_checks_can_be_switched_off():
    assert check(_group_norm(cast_to_fp32=False), fp16=False).ok


def test_fp16_softmax_is_flagged_and_fp32_softmax_is_not():
    small = {"q": (1, 8, 16, 40), "k": (1, 8, 16, 40), "v": (1, 8, 16, 40)}
    fp16 = check(_attention_mmsm(T.FLOAT16), small)
    assert [(p.kind, p.node) for p in fp16.problems] == [("fp16_overflow_risk", "softmax")]
    assert check(_attention_mmsm(T.FLOAT), small).ok  # no fp16 tensor: auto-detect leaves fp16 checks off


def test_layer_norm_stash_type_counts_only_for_weakly_typed_builds():
    x = h.make_tensor_value_info("x", T.FLOAT16, [1, 16, 320])
    scale = nh.from_array(np.ones(320, np.float16), "scale")
    node = h.make_node("LayerNormalization", ["x", "scale"], ["y"], axis=-1, stash_type=1, name="ln")
    model = _model([node], [x], [_out("y", T.FLOAT16)], [scale], opset=18)
    assert _kinds(check(model)) == ["fp16_overflow_risk"]
    assert check(model, strongly_typed=False).ok


# ---------------------------------------------------------------- require_ready, inputs, files


def test_require_ready_raises_naming_the_first_node():
    model = _attention_mmsm()
    with pytest.raises(ReadinessError, match=r"node 'qk' \(MatMul\).*and 1 more problem\)") as e:
        require_ready(model, SD15_LEVEL1)
    assert len(e.value.report.blocking) == 2
    assert "\n" not in str(e.value)
    assert require_ready(model, {"q": (1, 8, 16, 40), "k": (1, 8, 16, 40), "v": (1, 8, 16, 40)}).ok


def test_input_shape_errors_name_the_input():
    with pytest.raises(ValueError, match=r"'nope'"):
        check(_scores_model(), {"nope": (1,)})
    with pytest.raises(
        ValueError, match=r"input 'a': given shape \(1, 4, 8, 64\), but the ONNX expects \(b, 8, n, 64\)"
    ):
        check(_scores_model(), {"a": (1, 4, 8, 64)})


def test_caller_model_keeps_its_weights():
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 64])
    w = nh.from_array(np.ones((64, 8192), np.float32), "w")  # past the small-initializer limit: stubbed
    model = _model([h.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [x], [_out("y")], [w])
    before = model.SerializeToString()
    report = check(model)
    assert report.ok and report.largest[0][:3] == ("y", "mm", (1, 8192))
    assert model.SerializeToString() == before


def _external_model(tmp_path):
    """Weights and a Reshape target both in external data, as a large export writes them."""
    x = h.make_tensor_value_info("x", T.FLOAT, ["b", 64])
    w = nh.from_array(np.ones((64, 4096), np.float32), "w")
    target = nh.from_array(np.array([0, 64, 64], np.int64), "target")
    nodes = [
        h.make_node("MatMul", ["x", "w"], ["y"], name="proj"),
        h.make_node("Reshape", ["y", "target"], ["z"], name="split_heads"),
        h.make_node("Softmax", ["z"], ["p"], axis=-1, name="softmax"),
    ]
    model = _model(nodes, [x], [_out("p")], [w, target])
    path = tmp_path / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    return path


def test_external_data_model_is_checked_from_its_path(tmp_path):
    path = _external_model(tmp_path)
    report = check(path, {"x": (2, 64)})
    assert report.ok, report.format()
    shapes = {t: s for t, _, s, _ in report.largest}
    assert shapes["z"] == (2, 64, 64)  # the Reshape target was read from the external file
    assert shapes["y"] == (2, 4096)


def test_external_data_outside_the_model_folder_is_not_read(tmp_path):
    path = _external_model(tmp_path)
    model = onnx.load(path, load_external_data=False)
    target = next(t for t in model.graph.initializer if t.name == "target")
    (tmp_path.parent / "outside.bin").write_bytes(np.array([0, 64, 64], np.int64).tobytes())
    for e in target.external_data:
        if e.key == "location":
            e.value = "../outside.bin"
        elif e.key == "offset":
            e.value = "0"
    onnx.save(model, path)
    report = check(path, {"x": (2, 64)})
    assert "z" not in {t for t, *_ in report.largest}
    assert [(p.kind, p.node) for p in report.problems] == [("dynamic_shape", "softmax")]


def test_cli_exit_codes(tmp_path, capsys):
    path = tmp_path / "scores.onnx"
    onnx.save(_scores_model(), path)
    assert readiness.main([str(path), "--shape", "a=1x8x50000x64", "--shape", "b=1x8x64x50000"]) == 1
    out = capsys.readouterr().out
    assert "NOT READY" in out and "big_matmul" in out
    assert readiness.main([str(path), "--shape", "a=1x8x64x64", "--shape", "b=1x8x64x64"]) == 0
    assert "READY for TensorRT" in capsys.readouterr().out


# ---------------------------------------------------------------- tensorrt_build without TensorRT


def test_plan_name():
    assert tensorrt_build.plan_name("denoiser", "fp16", "sm_90", "10.14.1.48") == "denoiser.fp16.sm_90.trt10.14.plan"
    assert tensorrt_build.plan_name("vae_decoder", "fp32", "sm_80", "11.0") == "vae_decoder.fp32.sm_80.trt11.0.plan"
    for bad in [("den/oiser", "fp16", "sm_90", "10.14"), ("d", "fp16", "90", "10.14"), ("d", "fp16", "sm_90", "x")]:
        with pytest.raises(ValueError):
            tensorrt_build.plan_name(*bad)


def test_profile_shapes_static_min_opt_max():
    x = h.make_tensor_value_info("sample", T.FLOAT16, ["2b", 4, 128, 96])
    t = h.make_tensor_value_info("timestep", T.FLOAT, [1])
    model = _model([h.make_node("Identity", ["sample"], ["y"])], [x, t], [_out("y")])
    profile = tensorrt_build.profile_shapes(model, {"sample": (2, 4, 128, 96)})
    assert profile == {"sample": ((2, 4, 128, 96),) * 3, "timestep": ((1,),) * 3}
    assert tensorrt_build.has_dynamic_inputs(model)


def test_profile_shapes_errors():
    x = h.make_tensor_value_info("sample", T.FLOAT16, ["2b", 4, 128, 96])
    model = _model([h.make_node("Identity", ["sample"], ["y"])], [x], [_out("y")])
    with pytest.raises(ValueError, match=r"input 'sample' has dynamic dims \(2b, 4, 128, 96\): give its shape"):
        tensorrt_build.profile_shapes(model, {})
    with pytest.raises(ValueError, match=r"input 'sample': given shape \(2, 4, 64, 48\), but the ONNX expects"):
        tensorrt_build.profile_shapes(model, {"sample": (2, 4, 64, 48)})
    with pytest.raises(ValueError, match=r"input 'sample': given shape \(2, 4, 128\)"):
        tensorrt_build.profile_shapes(model, {"sample": (2, 4, 128)})
    with pytest.raises(ValueError, match=r"\['latent'\].*inputs are \['sample'\]"):
        tensorrt_build.profile_shapes(model, {"latent": (1, 4, 128, 96)})
    with pytest.raises(ValueError, match="positive"):
        tensorrt_build.profile_shapes(model, {"sample": (0, 4, 128, 96)})


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_require_tensorrt_without_tensorrt():
    with pytest.raises(RuntimeError, match=r"^TensorRT is not installed: pip install 'igr-sdk\[tensorrt\]'"):
        tensorrt_build.require_tensorrt()


def test_require_tensorrt_when_import_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(RuntimeError, match="TensorRT is not installed") as e:
        tensorrt_build.require_tensorrt()
    assert "\n" not in str(e.value)


def test_build_plan_checks_shapes_before_needing_tensorrt(tmp_path, monkeypatch):
    path = tmp_path / "scores.onnx"
    onnx.save(_scores_model(), path)
    with pytest.raises(ValueError, match="input 'a'"):
        tensorrt_build.build_plan(path, tmp_path / "x.plan", {"a": (1, 4, 8, 64), "b": (1, 8, 64, 8)})
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(RuntimeError, match="TensorRT is not installed"):
        tensorrt_build.build_plan(path, tmp_path / "x.plan", {"a": (1, 8, 8, 64), "b": (1, 8, 64, 8)})
    assert not (tmp_path / "x.plan").exists()


def test_gpu_info_without_cuda_python_or_torch(monkeypatch):
    monkeypatch.setattr(tensorrt_build, "_cudart", lambda: None)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(RuntimeError, match="neither cuda-python nor torch"):
        tensorrt_build.gpu_info()


def test_gpu_info_reads_cuda_python_properties():
    # Stand-in for cuda-python's runtime module: checks our use of its (err, value) tuples, not the real API.
    ok = object()
    fake = types.SimpleNamespace(
        cudaError_t=types.SimpleNamespace(cudaSuccess=ok),
        cudaGetDeviceCount=lambda: (ok, 1),
        cudaGetDeviceProperties=lambda i: (
            ok,
            types.SimpleNamespace(name=b"NVIDIA H100 80GB HBM3\0\0", major=9, minor=0),
        ),
    )
    assert tensorrt_build._gpu_info_cudart(fake, 0) == ("NVIDIA H100 80GB HBM3", "sm_90")
    none = types.SimpleNamespace(**{**vars(fake), "cudaGetDeviceCount": lambda: (ok, 0)})
    with pytest.raises(RuntimeError, match="no CUDA device"):
        tensorrt_build._gpu_info_cudart(none, 0)


def test_atomic_write_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.plan"
    tensorrt_build._atomic_write(target, memoryview(b"plan-bytes"))
    assert target.read_bytes() == b"plan-bytes"
    assert [p.name for p in target.parent.iterdir()] == ["a.plan"]


# ---------------------------------------------------------------- build_plan against a stand-in TensorRT
# These check build_plan's own control flow (flags, profile, timing cache, atomic write, error text) against a
# minimal fake of the TensorRT 10 Python API. They say nothing about the real TensorRT, which has not run here.


def _fake_tensorrt(version: str, *, parse_ok: bool = True):
    calls: dict = {"flags": [], "profiles": [], "pool": None, "caches": []}

    class Severity:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        pass

    ILogger.Severity = Severity

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs = flags, []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class ParserError:
        def node(self):
            return 3

        def node_name(self):
            return "node_Unique_3"

        def node_operator(self):
            return "Unique"

        def desc(self):
            return "no importer registered for op: Unique"

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            if not parse_ok:
                self.num_errors = 1
                return False
            for vi in onnx.load(path, load_external_data=False).graph.input:
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
                self.network.inputs.append(Tensor(vi.name, dims))
            return True

        def get_error(self, i):
            return ParserError()

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+timed"

        def combine(self, other, ignore_mismatch):
            calls["caches"].append(("combine", other.data))
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (lo, opt, hi)

    class Config:
        builder_optimization_level = None

        def set_memory_pool_limit(self, pool, size):
            calls["pool"] = (pool, size)

        def set_flag(self, flag):
            calls["flags"].append(flag)

        def add_optimization_profile(self, profile):
            calls["profiles"].append(profile.shapes)

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            calls["caches"].append(("loaded", cache.data))
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return Network(flags)

        def create_builder_config(self):
            calls["config"] = Config()
            return calls["config"]

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"PLAN"

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.ILogger, trt.Builder, trt.OnnxParser = ILogger, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=3)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16")
    return trt, calls


@pytest.fixture
def fake_trt(monkeypatch):
    def install(version="10.14.1.48", **kw):
        trt, calls = _fake_tensorrt(version, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(tensorrt_build, "gpu_info", lambda device=0: ("Fake GPU", "sm_90"))
        return calls

    return install


def test_build_plan_flow_with_fake_tensorrt(tmp_path, fake_trt):
    calls = fake_trt()
    onnx_path = tmp_path / "scores.onnx"
    onnx.save(_scores_model(), onnx_path)
    shapes = {"a": (1, 8, 16, 64), "b": (1, 8, 64, 16)}
    cache = tmp_path / "timing.cache"
    info = tensorrt_build.build_plan(
        onnx_path, tmp_path / "p.plan", shapes, optimization_level=4, timing_cache=cache, workspace_gb=2
    )
    assert (tmp_path / "p.plan").read_bytes() == b"PLAN"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.plan", "scores.onnx", "timing.cache"]
    assert calls["network_flags"] == 1 << 3  # STRONGLY_TYPED
    assert calls["flags"] == []  # no FP16 flag on a strongly typed network
    assert calls["profiles"] == [{name: (s, s, s) for name, s in shapes.items()}]
    assert calls["pool"] == ("workspace", 2 << 30)
    assert calls["config"].builder_optimization_level == 4
    assert cache.read_bytes() == b"+timed"
    assert info["gpu"] == "Fake GPU" and info["sm"] == "sm_90" and info["plan_bytes"] == 4
    assert info["tensorrt_version"] == "10.14.1.48" and info["input_shapes"] == {
        "a": [1, 8, 16, 64],
        "b": [1, 8, 64, 16],
    }

    # Second build: the saved cache is loaded and, having not changed on disk meanwhile, written back.
    calls["caches"].clear()
    tensorrt_build.build_plan(onnx_path, tmp_path / "p.plan", shapes, timing_cache=cache)
    assert calls["caches"] == [("loaded", b"+timed")]
    assert cache.read_bytes() == b"+timed+timed"


def test_build_plan_static_onnx_needs_no_profile(tmp_path, fake_trt):
    calls = fake_trt()
    x = h.make_tensor_value_info("x", T.FLOAT16, [1, 4, 8, 8])
    onnx_path = tmp_path / "static.onnx"
    onnx.save(_model([h.make_node("Identity", ["x"], ["y"])], [x], [_out("y", T.FLOAT16)]), onnx_path)
    tensorrt_build.build_plan(onnx_path, tmp_path / "s.plan", {"x": (1, 4, 8, 8)})
    assert calls["profiles"] == []


def test_build_plan_weakly_typed(tmp_path, fake_trt):
    onnx_path = tmp_path / "scores.onnx"
    onnx.save(_scores_model(), onnx_path)
    shapes = {"a": (1, 8, 16, 64), "b": (1, 8, 64, 16)}
    calls = fake_trt("10.14.1.48")
    tensorrt_build.build_plan(onnx_path, tmp_path / "w.plan", shapes, strongly_typed=False)
    assert calls["network_flags"] == 0 and calls["flags"] == ["fp16"]
    fake_trt("11.0.0.1")
    with pytest.raises(RuntimeError, match="no FP16 builder flag"):
        tensorrt_build.build_plan(onnx_path, tmp_path / "w11.plan", shapes, strongly_typed=False)


def test_build_plan_reports_parser_errors_with_node_names(tmp_path, fake_trt):
    fake_trt(parse_ok=False)
    onnx_path = tmp_path / "scores.onnx"
    onnx.save(_scores_model(), onnx_path)
    with pytest.raises(RuntimeError, match=r"node 3 'node_Unique_3' \(Unique\): no importer registered"):
        tensorrt_build.build_plan(onnx_path, tmp_path / "x.plan", {"a": (1, 8, 16, 64), "b": (1, 8, 64, 16)})
    assert not (tmp_path / "x.plan").exists()
