"""export.ort_layout: Reshape/Transpose chains that move no data are removed, and the values stay the same."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.ort_attention import fuse_attention
from export.ort_layout import fold_layout_chains


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _model(nodes, inputs, outputs, consts) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.asarray(v, np.int64), k) for k, v in consts.items()]
    graph = helper.make_graph(nodes, "layout", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def _fold(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    n = fold_layout_chains(folded)
    return folded, n


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _exported_attention(b=2, s=12, heads=4, d=8, kv=24) -> onnx.ModelProto:
    """Projections to attention heads the way the exporter writes them: view, then transpose."""
    c = heads * d
    io = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, s, c]),
        helper.make_tensor_value_info("kv", TensorProto.FLOAT, [b, kv, c]),
    ]
    nodes, names = [], []
    for role, src in (("q", "x"), ("k", "kv"), ("v", "kv")):
        nodes.append(helper.make_node("Relu" if role == "q" else "Neg", [src], [f"{role}_proj"]))
        nodes.append(helper.make_node("Reshape", [f"{role}_proj", f"{role}_heads"], [f"{role}_view"], allowzero=1))
        nodes.append(helper.make_node("Transpose", [f"{role}_view"], [f"{role}_bhsd"], perm=[0, 2, 1, 3]))
        names.append(f"{role}_bhsd")
    nodes += [
        helper.make_node("Attention", names, ["att"], name="sdpa"),  # (B, H, S, d)
        helper.make_node("Transpose", ["att"], ["att_bshd"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["att_bshd", "merged"], ["att_bsc"], allowzero=1),
        helper.make_node("Relu", ["att_bsc"], ["y"]),
    ]
    consts = {
        "q_heads": [b, s, heads, d],
        "k_heads": [b, kv, heads, d],
        "v_heads": [b, kv, heads, d],
        "merged": [b, s, c],
    }
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, s, c])
    return _model(nodes, io, [out], consts)


def _feeds(model, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        i.name: rng.standard_normal([d.dim_value or 3 for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in model.graph.input
    }


def test_attention_reads_its_projections_directly_after_the_rewrite():
    model = _exported_attention()
    feeds = _feeds(model)
    expected = _run(model, feeds)[0]
    assert fuse_attention(model) == 1
    before = _ops(model)
    folded, removed = _fold(model)
    # the exporter's and the rewrite's view/transpose pairs cancel: 4 per Q, K, V and 4 on the output
    assert removed == 16 and len(_ops(folded)) == len(before) - 16
    assert "Reshape" not in _ops(folded) and "Transpose" not in _ops(folded)
    mha = next(n for n in folded.graph.node if n.op_type == "MultiHeadAttention")
    assert list(mha.input) == ["q_proj", "k_proj", "v_proj"]
    relu = folded.graph.node[-1]
    assert relu.input[0] == mha.output[0]
    np.testing.assert_allclose(_run(folded, feeds)[0], expected, rtol=1e-5, atol=1e-5)
    assert fold_layout_chains(folded) == 0  # nothing left to fold


def test_two_transposes_become_one_with_the_composed_permutation():
    io = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])]
    nodes = [
        helper.make_node("Transpose", ["x"], ["a"], perm=[0, 2, 1, 3]),  # (2, 4, 3, 5)
        helper.make_node("Transpose", ["a"], ["b"], perm=[3, 0, 2, 1]),  # (5, 2, 3, 4)
        helper.make_node("Neg", ["b"], ["y"]),
    ]
    model = _model(nodes, io, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {})
    feeds = _feeds(model)
    folded, removed = _fold(model)
    assert removed == 1 and _ops(folded) == ["Transpose", "Neg"]
    perm = list(folded.graph.node[0].attribute[0].ints)
    assert perm == [3, 0, 1, 2]
    expected = -np.transpose(np.transpose(feeds["x"], (0, 2, 1, 3)), (3, 0, 2, 1))
    np.testing.assert_array_equal(_run(model, feeds)[0], expected)
    np.testing.assert_array_equal(_run(folded, feeds)[0], expected)


def test_reshape_of_reshape_keeps_copied_dims_right():
    # the outer shape copies dim 1 (0, allowzero unset) of the *inner* output, which is not x's dim 1
    io = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 4])]
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["a"]),  # (2, 3, 8)
        helper.make_node("Reshape", ["a", "s2"], ["b"]),  # (2, 3, 2, 4)
        helper.make_node("Neg", ["b"], ["y"]),
    ]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    model = _model(nodes, io, out, {"s1": [2, 3, 8], "s2": [0, 0, 2, -1]})
    feeds = _feeds(model)
    folded, removed = _fold(model)
    assert removed == 1 and _ops(folded) == ["Reshape", "Neg"]
    shape = numpy_helper.to_array(next(i for i in folded.graph.initializer if i.name == folded.graph.node[0].input[1]))
    assert shape.tolist() == [2, 3, 2, 4]  # written out: a copied 0 would have read x's 6
    assert folded.graph.node[0].input[0] == "x"
    got = _run(folded, feeds)[0]
    assert got.shape == (2, 3, 2, 4)
    np.testing.assert_array_equal(got, _run(model, feeds)[0])


def test_symbolic_dims_fold_only_where_the_meaning_is_sure():
    io = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6, 4])]
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["a"]),  # (batch, 24)
        helper.make_node("Reshape", ["a", "s2"], ["b"]),  # (batch, 6, 4): the same as x, but copies dim 0
        helper.make_node("Reshape", ["b", "s3"], ["c"]),  # (batch, 2, 3, 4): a copied 0 of b's dims
        helper.make_node("Neg", ["c"], ["y"]),
    ]
    consts = {"s1": [0, -1], "s2": [0, 6, 4], "s3": [0, 2, 3, 4]}
    model = _model(nodes, io, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], consts)
    feeds = _feeds(model)
    folded, removed = _fold(model)
    # each copied dim 0 is `batch` in x as in the reshape it replaces, so all three become one Reshape of x
    assert _ops(folded) == ["Reshape", "Neg"] and removed == 2
    assert folded.graph.node[0].input[0] == "x"
    for batch in (1, 3):
        feeds = {"x": np.arange(batch * 24, dtype=np.float32).reshape(batch, 6, 4)}
        np.testing.assert_array_equal(_run(folded, feeds)[0], _run(model, feeds)[0])


def test_graph_outputs_and_shared_tensors_are_kept():
    io = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])]
    nodes = [
        helper.make_node("Transpose", ["x"], ["a"], perm=[0, 2, 1]),
        helper.make_node("Transpose", ["a"], ["b"], perm=[0, 2, 1]),  # a graph output: stays
        helper.make_node("Transpose", ["a"], ["c"], perm=[0, 2, 1]),  # the identity: goes
        helper.make_node("Neg", ["c"], ["y"]),
    ]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("b", "y", "a")]
    model = _model(nodes, io, outs, {})
    feeds = _feeds(model)
    folded, removed = _fold(model)
    assert removed == 1
    assert [o.name for o in folded.graph.output] == ["b", "y", "a"]
    assert _ops(folded) == ["Transpose", "Transpose", "Neg"]
    assert folded.graph.node[-1].input[0] == "x"
    for got, want in zip(_run(folded, feeds), _run(model, feeds)):
        np.testing.assert_array_equal(got, want)
