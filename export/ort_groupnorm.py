"""ONNX Runtime CPU engines: ``GroupNormalization`` (opset 21+) rewritten through ``InstanceNormalization``.

ONNX Runtime has no CPU kernel for ``GroupNormalization``: it expands the op's function body into about
a dozen elementwise nodes (two ReduceMeans, Sub, Div, Sqrt, and the Shape/Reshape arithmetic around
them), each a pass over the tensor. Group normalisation of x (N, C, ...) in G groups is instance
normalisation of x viewed as (N, G, C/G * ...), followed by the per-channel affine:

    y = InstanceNormalization(Reshape(x, (N, G, -1)), ones(G), zeros(G)).reshape(x.shape) * scale + bias

which ONNX Runtime runs as one normalisation kernel plus a Mul and an Add: about half the time of the
expanded form in the small preset's UNets and VAE decoder (benchmarks/graph_ab.py). Only nodes whose
meaning carries over exactly are rewritten: opset 21 or later (per-channel scale and bias), float32
input of known rank >= 3, static channel count divisible by ``num_groups``. TensorRT engines keep the
op as exported (TensorRT has its own normalisation layer).
"""

from __future__ import annotations

import logging

import numpy as np

from export.ort_attention import _attr, _fresh, _shapes_and_types

log = logging.getLogger(__name__)

_FLOAT = 1  # onnx.TensorProto.FLOAT


def groupnorm_as_instancenorm(model) -> int:
    """Rewrite ``model``'s eligible ``GroupNormalization`` nodes in place; returns how many were rewritten.

    ``model`` may be loaded without its external data: only shapes and types are read."""
    from onnx import helper, numpy_helper

    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 21 or not any(n.op_type == "GroupNormalization" and n.domain in ("", "ai.onnx") for n in graph.node):
        return 0  # before opset 21 scale and bias were per group: another meaning
    shapes, types = _shapes_and_types(model)
    taken = {n for node in graph.node for n in (*node.input, *node.output)} | {i.name for i in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        plan = _eligible(node, shapes, types)
        if plan is None:
            nodes.append(node)
            continue
        groups, channels, rank = plan
        x, scale, bias = node.input
        p = _fresh(f"{node.name or 'group_norm'}_in", taken)
        consts = {
            f"{p}_grouped": np.array([0, groups, -1], np.int64),  # (N, G, C/G * spatial)
            f"{p}_ones": np.ones(groups, np.float32),
            f"{p}_zeros": np.zeros(groups, np.float32),
            f"{p}_affine": np.array([channels] + [1] * (rank - 2), np.int64),  # (C, 1, ...)
        }
        graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
        eps = _attr(node, "epsilon")
        nodes += [
            helper.make_node("Reshape", [x, f"{p}_grouped"], [f"{p}_x3"]),  # (N, G, L)
            helper.make_node(
                "InstanceNormalization",
                [f"{p}_x3", f"{p}_ones", f"{p}_zeros"],
                [f"{p}_n3"],
                epsilon=1e-5 if eps is None else float(eps),
            ),
            helper.make_node("Shape", [x], [f"{p}_shape"]),
            helper.make_node("Reshape", [f"{p}_n3", f"{p}_shape"], [f"{p}_n"]),  # (N, C, ...)
            helper.make_node("Reshape", [scale, f"{p}_affine"], [f"{p}_scale"]),
            helper.make_node("Reshape", [bias, f"{p}_affine"], [f"{p}_bias"]),
            helper.make_node("Mul", [f"{p}_n", f"{p}_scale"], [f"{p}_scaled"]),
            helper.make_node("Add", [f"{p}_scaled", f"{p}_bias"], [node.output[0]], name=p),
        ]
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        log.debug("rewrote %d GroupNormalization nodes through InstanceNormalization", count)
    return count


def _eligible(node, shapes, types) -> tuple[int, int, int] | None:
    """(groups, channels, rank) where ``node`` can be rewritten, else None."""
    if node.op_type != "GroupNormalization" or node.domain not in ("", "ai.onnx"):
        return None
    if len(node.input) != 3 or not all(node.input) or len(node.output) != 1:
        return None
    groups = _attr(node, "num_groups")
    x = shapes.get(node.input[0])
    if groups is None or not x or len(x) < 3 or types.get(node.input[0]) != _FLOAT:
        return None
    channels = x[1]
    if not isinstance(channels, int) or channels <= 0 or channels % groups:
        return None
    return int(groups), channels, len(x)
