"""export.ort_attention: the ONNX Attention op becomes ONNX Runtime's MultiHeadAttention in CPU engines,
with the same values, and only where the meaning carries over."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from export.ort_attention import fuse_attention


def _attention_model(q_shape, kv_len, dv, *, inputs=3, **attrs) -> onnx.ModelProto:
    b, h, s, d = q_shape
    io = [
        helper.make_tensor_value_info("q", TensorProto.FLOAT, [b, h, s, d]),
        helper.make_tensor_value_info("k", TensorProto.FLOAT, [b, h, kv_len, d]),
        helper.make_tensor_value_info("v", TensorProto.FLOAT, [b, h, kv_len, dv]),
    ]
    names = ["q", "k", "v"]
    if inputs == 4:
        io.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [s, kv_len]))
        names.append("mask")
    # a consumer after the attention, as in the exported graphs: the output name must survive
    nodes = [
        helper.make_node("Attention", names, ["att"], name="sdpa", **attrs),
        helper.make_node("Relu", ["att"], ["y"]),
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, h, s, dv])
    graph = helper.make_graph(nodes, "attention", io, [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in model.graph.input
    }


@pytest.mark.parametrize(
    ("q_shape", "kv_len", "dv", "attrs"),
    [
        ((2, 4, 12, 8), 24, 8, {}),  # the reference self-attention's shape: twice as many keys as queries
        ((1, 2, 7, 16), 5, 4, {}),  # V with its own head dim
        ((2, 4, 12, 8), 24, 8, {"scale": 0.5}),
    ],
)
def test_rewritten_attention_gives_the_same_values(q_shape, kv_len, dv, attrs):
    model = _attention_model(q_shape, kv_len, dv, **attrs)
    feeds = _feeds(model)
    expected = _run(model, feeds)
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    assert fuse_attention(fused) == 1
    ops = [(n.domain, n.op_type) for n in fused.graph.node]
    assert ("com.microsoft", "MultiHeadAttention") in ops and ("", "Attention") not in ops
    mha = next(n for n in fused.graph.node if n.op_type == "MultiHeadAttention")
    assert helper.get_attribute_value(mha.attribute[0]) == q_shape[1]  # num_heads
    np.testing.assert_allclose(_run(fused, feeds), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"is_causal": 1}, "causal"),
        ({"softcap": 30.0}, "softcap"),
        ({"inputs": 4}, "mask"),
    ],
)
def test_attention_whose_meaning_differs_is_left_alone(kw, why):
    model = _attention_model((1, 2, 6, 8), 6, 8, **kw)
    before = model.SerializeToString()
    assert fuse_attention(model) == 0, why
    assert model.SerializeToString() == before


def test_graph_without_attention_is_untouched():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    assert fuse_attention(model) == 0
    assert all(o.domain != "com.microsoft" for o in model.opset_import)


def test_cpu_engines_run_multihead_attention_and_keep_the_plain_onnx(tiny_engines):
    """The built CPU denoiser (which passed the build's parity check against torch) runs the rewritten
    attention; the plain ONNX beside it, which TensorRT and rebuilds read, keeps the standard op."""
    manifest = json.loads((tiny_engines / "manifest.json").read_text())
    entry = manifest["graphs"]["denoiser"]["engines"]["onnxruntime-cpu"]
    assert entry["attention"] == "com.microsoft.MultiHeadAttention"
    engine = onnx.load(str(tiny_engines / entry["file"]), load_external_data=False)
    plain = onnx.load(str(tiny_engines / entry["onnx"]["file"]), load_external_data=False)
    n_plain = sum(n.op_type == "Attention" for n in plain.graph.node)
    assert n_plain > 0
    assert sum(n.op_type == "MultiHeadAttention" for n in engine.graph.node) == n_plain
    assert not any(n.op_type == "Attention" for n in engine.graph.node)
    assert not list(tiny_engines.glob("onnx/*.fused.onnx"))  # the intermediate file is gone


def test_graph_ab_benchmark_compares_one_graph_of_two_folders(tiny_engines, tmp_path):
    from benchmarks import graph_ab

    out = tmp_path / "ab.json"
    report = graph_ab.main(
        [
            "--graph",
            "denoiser",
            "--a",
            str(tiny_engines),
            "--b",
            str(tiny_engines),
            "--repeats",
            "3",
            "--json",
            str(out),
        ]
    )
    assert report["max_rel_output_diff"] == 0.0  # the same engine on the same inputs
    assert report["a"]["median_ms"] > 0 and report["b"]["median_ms"] > 0
    assert json.loads(out.read_text())["ratio_a_over_b"] == report["ratio_a_over_b"]
