"""ONNX Runtime CPU engines: layout chains that move no data, removed.

The exporter writes attention heads as view/transpose pairs, ``(B, S, C) -> (B, S, H, d) -> (B, H, S,
d)``, and ``export.ort_attention`` moves them back to the ``(B, S, H*d)`` layout ``MultiHeadAttention``
takes. Between a projection and its attention that leaves ``Reshape -> Transpose -> Transpose ->
Reshape``, which is the identity: ONNX Runtime's transpose optimiser cancels the transposes once they
are adjacent, but not the reshapes, and not at all once quantisation has put Q/DQ pairs between them.
In the small preset's denoiser that was some 340 reshapes and 60 transposes per step, each a kernel
launch (about 2 ms of a 33 ms int8 step on one thread).

Three rules, applied until nothing changes, each exact:

- ``Transpose(p)`` of ``Transpose(q)``: one ``Transpose(q o p)``, or nothing where that is the identity;
- ``Reshape`` of ``Reshape``: the outer one alone, reading the inner one's input (a reshape only
  regroups dims of the row-major order, so the data order is the same). A ``0`` in the outer shape
  (``allowzero`` unset) copies a dim of its own input: that is kept where the inner reshape's input
  has the same dim there (the same size or the same symbolic name), else the outer's output shape
  must be static and is written out in its place;
- ``Reshape`` whose inferred output shape equals its input's (both fully known, static or the same
  symbolic dims): nothing.

A node's input is only rewired, never a graph input or output renamed; nodes left without consumers
are dropped.
"""

from __future__ import annotations

import logging

import numpy as np

from export.ort_attention import _attr, _fresh, _shapes_and_types

log = logging.getLogger(__name__)


def fold_layout_chains(model) -> int:
    """Remove identity Reshape/Transpose chains from ``model`` in place; returns how many nodes went.

    ``model`` may be loaded without its external data: only shapes and small shape constants are read.
    """
    before = len(model.graph.node)
    while _fold_once(model):
        pass
    removed = before - len(model.graph.node)
    if removed:
        log.debug("removed %d layout nodes that move no data", removed)
    return removed


def _fold_once(model) -> bool:
    from onnx import helper, numpy_helper

    graph = model.graph
    shapes = _symbolic_shapes(model)
    consts = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    changed = False

    def source(name: str) -> str:
        """What ``name`` reads through nodes this pass has bypassed."""
        while name in bypass:
            name = bypass[name]
        return name

    bypass: dict[str, str] = {}  # tensor -> the tensor it equals
    for node in graph.node:
        node.input[:] = [source(i) for i in node.input]
        if node.domain not in ("", "ai.onnx") or node.output[0] in outputs:
            continue
        inner = producer.get(node.input[0]) if node.input else None
        if node.op_type == "Transpose" and inner is not None and inner.op_type == "Transpose":
            # without perm a transpose reverses its dims, which needs the rank: left alone
            p, q = _attr(node, "perm"), _attr(inner, "perm")
            if p is None or q is None or len(p) != len(q):
                continue
            composed = [q[i] for i in p]
            if composed == list(range(len(composed))):
                bypass[node.output[0]] = inner.input[0]
            else:
                node.input[0] = inner.input[0]
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("perm", composed))
            changed = True
        elif node.op_type == "Reshape":
            out, src = shapes.get(node.output[0]), shapes.get(node.input[0])
            if _known(out) and out == src:
                bypass[node.output[0]] = node.input[0]
                changed = True
            elif inner is not None and inner.op_type == "Reshape":
                target = _const(consts, node.input[1], numpy_helper)
                if target is None:
                    continue
                copied = [i for i, d in enumerate(target) if d == 0] if not _attr(node, "allowzero") else []
                if copied and not _same_dims(shapes.get(inner.input[0]), shapes.get(node.input[0]), copied):
                    if not (out and all(isinstance(d, int) and d > 0 for d in out)):
                        continue
                    name = _fresh(f"{node.output[0]}_shape", set(consts))
                    consts[name] = numpy_helper.from_array(np.array(out, np.int64), name)
                    graph.initializer.append(consts[name])
                    node.input[1] = name
                node.input[0] = inner.input[0]
                changed = True
    if changed:
        _drop_dead(graph)
    return changed


def _drop_dead(graph) -> None:
    live = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in live for o in node.output if o):
            kept.append(node)
            live.update(i for i in node.input if i)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    used = [i for i in graph.initializer if i.name in live]
    if len(used) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(used)


def _symbolic_shapes(model) -> dict[str, list]:
    """Every tensor's inferred dims: an int, a symbolic name, or None where unknown.

    ONNX's shape inference does not know ``MultiHeadAttention``; its output, (B, S, v hidden) for
    3D inputs, is declared so that inference carries on past it."""
    import onnx
    from onnx import helper

    shapes, types = _shapes_and_types(model, symbolic=True)
    declared = []
    for n in model.graph.node:
        if n.op_type != "MultiHeadAttention" or n.domain != "com.microsoft" or len(n.input) < 3:
            continue
        q, v = shapes.get(n.input[0]), shapes.get(n.input[2])
        if n.output[0] not in shapes and q and v and len(q) == len(v) == 3:
            elem = types.get(n.input[0]) or onnx.TensorProto.FLOAT
            declared.append(helper.make_tensor_value_info(n.output[0], elem, [*q[:2], v[2]]))
    if not declared:
        return shapes
    with_attention = onnx.ModelProto()
    with_attention.CopyFrom(model)
    with_attention.graph.value_info.extend(declared)
    return _shapes_and_types(with_attention, symbolic=True)[0]


def _same_dims(a, b, dims: list[int]) -> bool:
    """Whether shapes ``a`` and ``b`` are known and equal at each of ``dims``."""
    if a is None or b is None or max(dims) >= min(len(a), len(b)):
        return False
    return all(a[i] is not None and a[i] == b[i] for i in dims)


def _known(shape) -> bool:
    return shape is not None and all(d is not None for d in shape)


def _const(consts, name: str, numpy_helper) -> list[int] | None:
    t = consts.get(name)
    return None if t is None else [int(v) for v in numpy_helper.to_array(t).reshape(-1)]
