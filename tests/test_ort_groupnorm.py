"""export.ort_groupnorm: GroupNormalization runs through InstanceNormalization in CPU engines, with the
same values as torch's group_norm, and only where the meaning carries over."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.ort_groupnorm import groupnorm_as_instancenorm


def _gn_model(shape, groups, *, opset=23, dtype=TensorProto.FLOAT, eps=1e-6, seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    c = shape[1]
    scale = numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "scale")
    bias = numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "bias")
    nodes = [
        helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["gn"], num_groups=groups, epsilon=eps),
        helper.make_node("Relu", ["gn"], ["y"]),  # a consumer: the output name must survive
    ]
    graph = helper.make_graph(
        nodes,
        "group_norm",
        [helper.make_tensor_value_info("x", dtype, list(shape))],
        [helper.make_tensor_value_info("y", dtype, list(shape))],
        [scale, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize(("shape", "groups"), [((2, 32, 8, 6), 8), ((1, 16, 5, 7), 16), ((3, 12, 10), 4)])
def test_rewrite_matches_torch_group_norm(shape, groups):
    model = _gn_model(shape, groups)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32) * 3 + 1
    scale, bias = (torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer)
    expected = torch.relu(torch.nn.functional.group_norm(torch.from_numpy(x), groups, scale, bias, 1e-6)).numpy()

    assert groupnorm_as_instancenorm(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert "GroupNormalization" not in ops and ops.count("InstanceNormalization") == 1
    onnx.checker.check_model(model)
    np.testing.assert_allclose(_run(model, x), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"opset": 18}, "opset 18: scale and bias are per group"),
        ({"dtype": TensorProto.FLOAT16}, "not float32"),
    ],
)
def test_other_meanings_are_left_alone(kwargs, why):
    model = _gn_model((2, 8, 4, 4), 4, **kwargs)
    before = model.SerializeToString()
    assert groupnorm_as_instancenorm(model) == 0, why
    assert model.SerializeToString() == before


def test_unknown_channel_count_is_left_alone():
    model = _gn_model((2, 8, 4, 4), 4)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "C"  # channels no longer static
    assert groupnorm_as_instancenorm(model) == 0


def test_cpu_engines_carry_no_group_norm_expansion(tiny_engines):
    # every tiny graph with group norms runs them as instance norms; the build's parity check against
    # torch has passed for each
    manifest = json.loads((tiny_engines / "manifest.json").read_text())
    for g in ("denoiser", "garmnet", "vae_encoder", "vae_decoder"):
        path = tiny_engines / manifest["graphs"][g]["engines"]["onnxruntime-cpu"]["file"]
        ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
        assert "InstanceNormalization" in ops and "ReduceMean" not in ops, g
