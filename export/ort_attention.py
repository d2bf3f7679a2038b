"""ONNX Runtime CPU engines: the ONNX ``Attention`` op (opset 23) rewritten as ONNX Runtime's
``com.microsoft.MultiHeadAttention``.

Both are one fused operation (DESIGN.md section 3), but on the CPU they differ in how: ONNX Runtime's
kernel for the standard op writes the whole (B, H, S, L) score tensor to memory and reads it back
for the softmax and for V, while ``MultiHeadAttention`` runs MLAS's flash attention, tiling the
scores in L2. The denoiser's reference self-attention (S = h*w queries over L = 2*h*w keys, head
dim 8 in the small preset) is about half of a step, and memory-bound in the first form.

The rewrite keeps every tensor name the rest of the graph sees: (B, H, S, d) inputs are moved to
the (B, S, H*d) layout ``MultiHeadAttention`` takes, its output back to (B, H, S, d_v); ONNX
Runtime's transpose optimiser then cancels these against the exporter's own Reshape/Transpose pairs.
Only nodes whose meaning carries over exactly are rewritten: three inputs (no mask, no past), not
causal, no softcap or score outputs, the default or an explicit scale, static head counts equal for
Q, K and V. Anything else stays as it was.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

_DEFAULTS = {"is_causal": 0, "softcap": 0.0, "qk_matmul_output_mode": 0}


def fuse_attention(model) -> int:
    """Rewrite ``model``'s eligible ``Attention`` nodes in place; returns how many were rewritten.

    ``model`` may be loaded without its external data: only shapes are read."""
    from onnx import helper, numpy_helper

    graph = model.graph
    if not any(n.op_type == "Attention" and n.domain in ("", "ai.onnx") for n in graph.node):
        return 0
    shapes = _shapes(model)
    taken = {n for node in graph.node for n in (*node.input, *node.output)} | {i.name for i in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        heads = _eligible(node, shapes)
        if heads is None:
            nodes.append(node)
            continue
        h, dq, dv = heads
        prefix = _fresh(f"{node.name or 'attention'}_mha", taken)
        to_3d = f"{prefix}_to_3d_qk"
        graph.initializer.append(numpy_helper.from_array(np.array([0, 0, h * dq], np.int64), to_3d))
        to_3d_v = f"{prefix}_to_3d_v"
        graph.initializer.append(numpy_helper.from_array(np.array([0, 0, h * dv], np.int64), to_3d_v))
        to_4d = f"{prefix}_to_4d"
        graph.initializer.append(numpy_helper.from_array(np.array([0, 0, h, dv], np.int64), to_4d))
        flat = []
        for role, name, shape in zip("qkv", node.input, (to_3d, to_3d, to_3d_v)):
            moved, out = f"{prefix}_{role}_bshd", f"{prefix}_{role}_bsd"
            nodes.append(helper.make_node("Transpose", [name], [moved], perm=[0, 2, 1, 3]))  # (B, S, H, d)
            nodes.append(helper.make_node("Reshape", [moved, shape], [out]))  # (B, S, H*d)
            flat.append(out)
        attrs = {"num_heads": h}
        scale = _attr(node, "scale")
        if scale is not None:
            attrs["scale"] = float(scale)
        mha = helper.make_node(
            "MultiHeadAttention", flat, [f"{prefix}_out"], name=prefix, domain="com.microsoft", **attrs
        )  # (B, S, H*d_v)
        nodes.append(mha)
        nodes.append(helper.make_node("Reshape", [f"{prefix}_out", to_4d], [f"{prefix}_bshd"]))  # (B, S, H, d_v)
        nodes.append(helper.make_node("Transpose", [f"{prefix}_bshd"], [node.output[0]], perm=[0, 2, 1, 3]))
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        log.debug("rewrote %d Attention nodes as MultiHeadAttention", count)
    return count


def _eligible(node, shapes) -> tuple[int, int, int] | None:
    """(heads, qk head dim, v head dim) where ``node`` can become MultiHeadAttention, else None."""
    if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
        return None
    if len(node.input) != 3 or not all(node.input) or not node.output[0] or any(node.output[1:]):
        return None  # a mask, a past K/V or a score output: left as exported
    for a in node.attribute:
        if a.name == "scale":
            continue
        if a.name not in _DEFAULTS or _attr(node, a.name) != _DEFAULTS[a.name]:
            return None  # causal, softcap, extra outputs, 3D-input head counts: left as exported
    q, k, v = (shapes.get(n) for n in node.input)
    if not (q and k and v) or not all(len(s) == 4 for s in (q, k, v)):
        return None
    if not all(isinstance(d, int) and d > 0 for s in (q, k, v) for d in s[1:4:2]):
        return None  # heads and head dims must be static
    if not (q[1] == k[1] == v[1] and q[3] == k[3]):
        return None  # grouped-query heads or mismatched Q/K: not this rewrite
    return q[1], q[3], v[3]


def _shapes(model) -> dict[str, list]:
    return _shapes_and_types(model)[0]


def _shapes_and_types(model, symbolic: bool = False) -> tuple[dict[str, list], dict[str, int]]:
    """Every tensor's inferred dims and element type; a dim that is not static is None, or with
    ``symbolic`` its symbolic name where it has one. Tensors of unknown rank have no shape entry."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes, types = {}, {i.name: i.data_type for i in model.graph.initializer}
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        t = vi.type.tensor_type
        types[vi.name] = t.elem_type
        if t.HasField("shape"):
            shapes[vi.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) if symbolic else None
                for d in t.shape.dim
            ]
    return shapes, types


def _attr(node, name):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _fresh(base: str, taken: set[str]) -> str:
    name, i = base, 0
    while any(t.startswith(name) for t in taken):
        i += 1
        name = f"{base}{i}"
    taken.add(name)
    return name
