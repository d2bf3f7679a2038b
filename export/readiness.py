"""TensorRT readiness check for an ONNX graph, run on CPU before any engine is built.

It works on graph structure, shapes and dtypes only: weights are never loaded (a model path is read with
``load_external_data=False``; an in-memory model is copied without its large initializers). What it checks:

1. **Operators** (``unsupported_op``). Every node, in subgraphs too, against the operator table of TensorRT
   10.x's ONNX parser (onnx-tensorrt ``docs/operators.md`` for TensorRT 10.15, with the TensorRT release that
   added each newer op taken from the onnx-tensorrt changelog: ``Attention`` needs 10.14,
   ``RMSNormalization``/``RotaryEmbedding``/``TensorScatter`` 10.15, opset-21 ``GroupNormalization`` 10.9).
   Custom domains other than ``""``/``ai.onnx`` are flagged: ONNX Runtime's ``com.microsoft`` fused ops
   (what ORT's graph optimizer writes) exist only in ONNX Runtime, and any other domain needs a TensorRT
   plugin of that name. Model-local functions are inlined first (the parser inlines them too). Also flagged:
   the documented restrictions of ``Attention`` (4-D Q/K/V/mask; no past/present KV, ``qk_matmul_output``,
   ``softcap``) and ``LayerNormalization`` (first output only), and a default-domain opset outside the
   parser's documented range 9..24.
2. **Tensor sizes** (``tensor_too_large``). Graph inputs are fixed to ``input_shapes`` and ONNX shape
   inference runs with data propagation; every graph input and every node output of the main graph whose
   static element count exceeds ``max_elements`` (TensorRT's per-tensor limit, 2^31 - 1) is flagged with the
   node that produces it (GroupNormalization and MeanVarianceNormalization, which onnx cannot infer, are
   treated as shape-preserving so that inference carries on past them). This is what catches an unfused
   MatMul-Softmax-MatMul attention: at 1024x768 the level-1 score tensor of one SD1.5 cond row is
   8 x 12288 x 24576 = 2.4e9 elements.
3. **fp16 overflow** (``fp16_overflow_risk``), on when the model holds fp16 tensors (or ``fp16=True``).
   A node is flagged when its data input (input 0) is known to be fp16 and its op is one of
   GroupNormalization, InstanceNormalization, LayerNormalization, ReduceMean, ReduceSumSquare, Pow (their
   statistics / squares overflow fp16's 65504 on diffusion activations and must be computed in fp32: the
   exporter puts ``Cast(to=FLOAT)`` before them) or Softmax. LayerNormalization's ``stash_type=1`` only
   counts when ``strongly_typed=False``: onnx-tensorrt sets the layer's compute precision from stash_type
   only for weakly typed networks, and this project builds strongly typed plans. bf16 inputs are not
   flagged (bf16 has fp32's range); a node whose input dtype stays unknown is not flagged.
4. **Dynamic shapes** (``dynamic_shape``), a warning: a MatMul/Softmax/Einsum output whose shape is still
   unknown or symbolic after inference, so (2) could not size it. ``ReadinessReport.ok`` ignores this kind.

Shapes and dtypes are checked on the main graph only (not inside If/Loop/Scan bodies).
"""

from __future__ import annotations

import argparse
import logging
import math
import operator
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Literal

import onnx
import onnx.defs
import onnx.inliner
import onnx.shape_inference
from onnx import TensorProto

from export.errors import BuildError
from igr_sdk.contract import trt_version_arg

log = logging.getLogger(__name__)

ProblemKind = Literal["unsupported_op", "tensor_too_large", "fp16_overflow_risk", "dynamic_shape"]
# dynamic_shape is advisory: it says the size check could not run, not that the build will fail.
BLOCKING_KINDS = frozenset({"unsupported_op", "tensor_too_large", "fp16_overflow_risk"})

TRT_MAX_ELEMENTS = 2**31 - 1
DEFAULT_TRT_VERSION = (10, 14)
# The TensorRT 10.15 / 11.x parser documents opsets 9..24.
MIN_OPSET, MAX_OPSET = 9, 24

# Operators TensorRT 10.0's ONNX parser imports natively: the "Supported: Y" rows of onnx-tensorrt's
# docs/operators.md for TensorRT 10.15, minus the ops its changelog lists as added after 10.0 (OP_MIN_TRT).
_TRT10_OPS_TEXT = """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike
    Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
    GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
    GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf
    IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
    MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
    OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
    ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
    ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
    Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
    Transpose Trilu Unsqueeze Upsample Where Xor
"""
TRT10_OPS = frozenset(_TRT10_OPS_TEXT.split())
# Ops the parser gained after 10.0 (onnx-tensorrt changelog): op -> first TensorRT (major, minor).
OP_MIN_TRT: dict[str, tuple[int, int]] = {
    "DeformConv": (10, 1),
    "BlackmanWindow": (10, 4),
    "HammingWindow": (10, 4),
    "HannWindow": (10, 4),
    "STFT": (10, 5),
    "Attention": (10, 14),
    "RMSNormalization": (10, 15),
    "RotaryEmbedding": (10, 15),
    "TensorScatter": (10, 15),
}
# A newer definition of an op the parser already knew: (op, ONNX since_version) -> first TensorRT.
OP_VERSION_MIN_TRT: dict[tuple[str, int], tuple[int, int]] = {("GroupNormalization", 21): (10, 9)}

_DEFAULT_DOMAINS = ("", "ai.onnx")
_ORT_DOMAIN = "com.microsoft"
# Producers whose unknown output shape hides a potential attention-score tensor.
_SCORE_PRODUCERS = frozenset({"MatMul", "Softmax", "Einsum"})
_FP32_STATISTICS_OPS = {
    "GroupNormalization": "its mean/variance over a group overflow fp16 (max 65504)",
    "InstanceNormalization": "its mean/variance overflow fp16 (max 65504)",
    "LayerNormalization": "its mean/variance overflow fp16 (max 65504)",
    "ReduceMean": "it sums in fp16 before dividing, which overflows on large activations",
    "ReduceSumSquare": "squares overflow fp16 once |x| > 256",
    "Pow": "x**2 overflows fp16 once |x| > 256",
    "Softmax": "exp and the row sum run in fp16",
}
# Initializers up to this many elements are kept (or read from external data) so that data propagation
# can see shape/axes constants; everything bigger is a weight, and only its dims matter.
_SMALL_INITIALIZER = 4096
_LARGEST_COUNT = 5
# Ops whose output has the shape and dtype of input 0 but that onnx's shape inference does not cover.
_SHAPE_PRESERVING_UNINFERRED = frozenset({"GroupNormalization", "MeanVarianceNormalization"})

Dims = tuple[int | str | None, ...]


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    node: str
    op: str
    detail: str

    @property
    def blocking(self) -> bool:
        return self.kind in BLOCKING_KINDS

    def __str__(self) -> str:
        return f"{self.kind}: node {self.node!r} ({self.op}): {self.detail}"


@dataclass(frozen=True)
class ReadinessReport:
    """Result of :func:`check`. ``ok`` is False when any problem other than ``dynamic_shape`` was found."""

    ok: bool
    problems: tuple[Problem, ...]
    ops: dict[str, int]
    largest: tuple[tuple[str, str, tuple[int, ...], int], ...]  # (tensor, producing node, shape, elements)
    opset: int

    @property
    def blocking(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.blocking)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if not p.blocking)

    def format(self, max_problems: int = 20) -> str:
        lines = [f"opset {self.opset}, {sum(self.ops.values())} nodes, {len(self.ops)} op types"]
        if self.largest:
            lines.append("largest tensors:")
            for tensor, node, shape, n in self.largest:
                lines.append(f"  {n:>15,}  {'x'.join(map(str, shape)) or 'scalar'}  {tensor} (from {node})")
        if self.problems:
            lines.append(f"problems ({len(self.blocking)} blocking, {len(self.warnings)} warnings):")
            lines += [f"  {p}" for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more")
        lines.append("READY for TensorRT" if self.ok else "NOT READY for TensorRT")
        return "\n".join(lines)


class ReadinessError(BuildError):
    """Raised by :func:`require_ready`; ``report`` holds the full :class:`ReadinessReport`."""

    def __init__(self, message: str, report: ReadinessReport):
        super().__init__(message)
        self.report = report


# ---------------------------------------------------------------- loading without weights


def load_structure(model: str | PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None]:
    """The model proto without external weights, and the folder its external data lives in (None for a proto)."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    return onnx.load(path, load_external_data=False), path.parent


def _dtype_itemsize(data_type: int) -> int | None:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None


def _read_small_external(t: TensorProto, base_dir: Path) -> TensorProto | None:
    """Read one small external initializer (a shape constant, typically); None when it cannot be read safely."""
    info = {e.key: e.value for e in t.external_data}
    itemsize = _dtype_itemsize(t.data_type)
    if "location" not in info or itemsize is None:
        return None
    root = base_dir.resolve()
    path = (root / info["location"]).resolve()
    # The data file is untrusted input: never follow a location out of the model's folder.
    if not path.is_relative_to(root) or not path.is_file():
        log.warning("external data %r of %s is outside %s or missing; not read", info["location"], t.name, root)
        return None
    length = int(info.get("length", itemsize * math.prod(t.dims)))
    with open(path, "rb") as f:
        f.seek(int(info.get("offset", 0)))
        raw = f.read(length)
    if len(raw) != itemsize * math.prod(t.dims):
        return None
    out = TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
    out.raw_data = raw
    return out


def _stub_initializer(t: TensorProto, base_dir: Path | None) -> TensorProto:
    n = math.prod(t.dims)
    if t.data_location == TensorProto.EXTERNAL:
        if n <= _SMALL_INITIALIZER and base_dir is not None:
            loaded = _read_small_external(t, base_dir)
            if loaded is not None:
                return loaded
        stub = TensorProto()
        stub.CopyFrom(t)  # external: no payload in memory, cheap to copy
        return stub
    if n <= _SMALL_INITIALIZER:
        stub = TensorProto()
        stub.CopyFrom(t)
        return stub
    # Shape inference takes dims and dtype from an initializer; marking it external keeps it from
    # ever parsing the (absent) payload.
    stub = TensorProto(name=t.name, data_type=t.data_type, dims=t.dims, data_location=TensorProto.EXTERNAL)
    stub.external_data.add(key="location", value="<weights not loaded>")
    return stub


def shape_only_copy(model: onnx.ModelProto, base_dir: Path | None = None) -> onnx.ModelProto:
    """A copy of ``model`` whose big initializers carry dims and dtype only (the caller's proto is untouched).

    Shape inference serialises the model, so a proto with its weights in memory (and any model past 2 GB)
    must be slimmed first; small external initializers are read from ``base_dir`` so that data propagation
    can follow Reshape targets stored next to the model.
    """
    out = onnx.ModelProto(
        ir_version=model.ir_version,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        domain=model.domain,
        model_version=model.model_version,
    )
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    g, h = model.graph, out.graph
    h.name = g.name
    h.node.extend(g.node)
    h.input.extend(g.input)
    h.output.extend(g.output)
    h.value_info.extend(g.value_info)
    h.initializer.extend(_stub_initializer(t, base_dir) for t in g.initializer)
    return out


# ---------------------------------------------------------------- input shapes


def _tensor_dims(tt: onnx.TypeProto.Tensor) -> Dims | None:
    """Dims of a tensor type: int (static), str (symbolic) or None (unknown); None overall when rank is unknown."""
    if not tt.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) if d.HasField("dim_param") else None
        for d in tt.shape.dim
    )


def _value_dims(vi: onnx.ValueInfoProto) -> Dims | None:
    return _tensor_dims(vi.type.tensor_type)


def _fmt_dims(dims: Dims | None) -> str:
    if dims is None:
        return "unknown"
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def graph_inputs(model: onnx.ModelProto) -> dict[str, Dims | None]:
    """Real graph inputs (initializers listed as inputs by old exporters excluded) and their declared dims."""
    inits = {t.name for t in model.graph.initializer}
    return {vi.name: _value_dims(vi) for vi in model.graph.input if vi.name not in inits}


def resolve_input_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]] | None, *, require_all: bool = False
) -> dict[str, tuple[int, ...]]:
    """Validate ``input_shapes`` against the graph's declared inputs and return a static shape per input.

    Inputs that are not given keep their declared dims when those are all static; with ``require_all`` an
    input with a dynamic dim that is not given is an error (TensorRT needs a shape for it).
    """
    declared = graph_inputs(model)
    given = dict(input_shapes or {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"input_shapes names {unknown}, which the ONNX does not have; its inputs are {list(declared)}")
    resolved: dict[str, tuple[int, ...]] = {}
    for name, dims in declared.items():
        if name not in given:
            if dims is not None and all(isinstance(d, int) and d > 0 for d in dims):
                resolved[name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
            elif require_all:
                raise ValueError(f"input {name!r} has dynamic dims {_fmt_dims(dims)}: give its shape in input_shapes")
            continue
        try:
            shape = tuple(operator.index(d) for d in given[name])  # accepts numpy ints, rejects floats
        except TypeError:
            raise ValueError(f"input {name!r}: shape {given[name]!r} must be a sequence of integers") from None
        if not all(d > 0 for d in shape):
            raise ValueError(f"input {name!r}: shape {shape} must be positive integers")
        if dims is not None:
            mismatch = len(shape) != len(dims) or any(
                isinstance(d, int) and d > 0 and d != s for d, s in zip(dims, shape)
            )
            if mismatch:
                raise ValueError(f"input {name!r}: given shape {shape}, but the ONNX expects {_fmt_dims(dims)}")
        resolved[name] = shape
    return resolved


def _fix_inputs(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> None:
    for vi in model.graph.input:
        if vi.name in shapes:
            shape = vi.type.tensor_type.shape
            shape.ClearField("dim")
            for d in shapes[vi.name]:
                shape.dim.add().dim_value = d
    # Shapes recorded at export time belong to the export shapes; left in place they would clash with
    # (or stand in for) what inference derives from the shapes asked about here.
    model.graph.ClearField("value_info")
    for vi in model.graph.output:
        vi.type.tensor_type.ClearField("shape")


def _for_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which shape-preserving ops that ONNX cannot infer become Identity on their data input.

    onnx 1.23 has no shape inference for GroupNormalization (every UNet resnet block) or
    MeanVarianceNormalization; left alone, every tensor after the first GroupNorm would stay unknown.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)  # already weight-free
    for node in out.graph.node:
        if node.op_type in _SHAPE_PRESERVING_UNINFERRED and node.domain in _DEFAULT_DOMAINS and node.input:
            data = node.input[0]
            node.ClearField("input")
            node.ClearField("attribute")
            node.input.append(data)
            node.op_type = "Identity"
    return out


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # a malformed node must not hide the op and size findings of the rest
        log.warning("ONNX shape inference failed (%s); shapes stay as declared", e)
        return model


# ---------------------------------------------------------------- graph walking


def _node_label(node: onnx.NodeProto, index: int, prefix: str = "") -> str:
    return prefix + (node.name or f"{node.op_type}#{index}")


def _walk(graph: onnx.GraphProto, prefix: str = "") -> Iterator[tuple[str, onnx.NodeProto]]:
    """Every node, subgraph bodies included, with a label that names its parent nodes."""
    for i, node in enumerate(graph.node):
        label = _node_label(node, i, prefix)
        yield label, node
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                yield from _walk(sub, f"{label}/{attr.name}/")


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 0)


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _since_version(op: str, opset: int) -> int | None:
    try:
        return onnx.defs.get_schema(op, max_inclusive_version=opset).since_version
    except Exception:  # op unknown to this onnx build
        return None


def _fmt_version(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


# ---------------------------------------------------------------- the checks


def _op_problems(
    label: str, node: onnx.NodeProto, opset: int, trt_version: tuple[int, int], dims_of: Callable[[str], Dims | None]
) -> list[Problem]:
    op, domain = node.op_type, node.domain
    if domain not in _DEFAULT_DOMAINS:
        if domain == _ORT_DOMAIN:
            why = (
                "ONNX Runtime contrib op (com.microsoft): it runs only in ONNX Runtime; TensorRT's parser has no "
                "importer for it. Build engines from the exporter's plain ONNX, not an ORT-optimised one"
            )
        else:
            why = f"custom domain {domain!r}: TensorRT imports it only through a plugin registered as {op!r}"
        return [Problem("unsupported_op", label, f"{domain}::{op}", why)]
    need = OP_MIN_TRT.get(op)
    since = _since_version(op, opset)
    need = OP_VERSION_MIN_TRT.get((op, since or 0), need)
    if op not in TRT10_OPS and need is None:
        return [Problem("unsupported_op", label, op, "not in TensorRT 10's ONNX operator support list")]
    if need is not None and trt_version < need:
        detail = f"{op}-{since} needs TensorRT >= {_fmt_version(need)}, targeting {_fmt_version(trt_version)}"
        return [Problem("unsupported_op", label, op, detail)]
    return [Problem("unsupported_op", label, op, why) for why in _restrictions(node, dims_of)]


def _restrictions(node: onnx.NodeProto, dims_of: Callable[[str], Dims | None]) -> list[str]:
    """Documented limits of ops the parser otherwise supports (those that matter for this project)."""
    out: list[str] = []
    optional_outputs = [o for o in node.output[1:] if o]
    if node.op_type == "Attention":
        if any(node.input[4:]):
            out.append("past_key/past_value/nonpad_kv_seqlen inputs are not supported by TensorRT")
        if optional_outputs:
            out.append("present_key/present_value/qk_matmul_output outputs are not supported by TensorRT")
        if _attr(node, "softcap", 0.0) or _attr(node, "qk_matmul_output_mode", 0):
            out.append("softcap and qk_matmul_output_mode are not supported by TensorRT")
        for i, role in enumerate(("Q", "K", "V", "attn_mask")):
            dims = dims_of(node.input[i]) if len(node.input) > i and node.input[i] else None
            if dims is not None and len(dims) != 4:
                out.append(f"{role} must be 4-D for TensorRT, got rank {len(dims)}")
    elif node.op_type == "LayerNormalization" and optional_outputs:
        out.append("TensorRT supports only LayerNormalization's first output Y")
    return out


def _fp16_problem(
    label: str, node: onnx.NodeProto, dtype_of: Callable[[str], int | None], strongly_typed: bool
) -> Problem | None:
    op = node.op_type
    if op not in _FP32_STATISTICS_OPS or node.domain not in _DEFAULT_DOMAINS or not node.input:
        return None
    if dtype_of(node.input[0]) != TensorProto.FLOAT16:
        return None
    stash = _attr(node, "stash_type", 1)
    if op == "LayerNormalization" and not strongly_typed and stash == TensorProto.FLOAT:
        return None  # weakly typed: onnx-tensorrt sets fp32 compute precision from stash_type
    detail = f"fp16 input {node.input[0]!r}: {_FP32_STATISTICS_OPS[op]}; keep it in fp32 (Cast to FLOAT before it)"
    if op == "LayerNormalization" and strongly_typed:
        detail += "; stash_type is ignored by onnx-tensorrt in strongly typed networks"
    return Problem("fp16_overflow_risk", label, op, detail)


def _size_problems(
    g: onnx.GraphProto, inputs: Mapping[str, tuple[int, ...]], dims_of: Callable[[str], Dims | None], max_elements: int
) -> tuple[list[Problem], list[tuple[str, str, tuple[int, ...], int]]]:
    """Too-large and unsized tensors among the graph inputs and every node output, with their producers."""
    sized: list[tuple[str, str, str, Dims | None]] = [(n, "<graph input>", "input", dims_of(n)) for n in inputs]
    for i, node in enumerate(g.node):
        label = _node_label(node, i)
        sized += [(out, label, node.op_type, dims_of(out)) for out in node.output if out]
    problems: list[Problem] = []
    known: list[tuple[str, str, tuple[int, ...], int]] = []
    for tensor, label, op, dims in sized:
        if dims is not None and all(isinstance(d, int) for d in dims):
            static = tuple(int(d) for d in dims)  # type: ignore[arg-type]
            n = math.prod(static)
            known.append((tensor, label, static, n))
            if n > max_elements:
                detail = f"{tensor!r} has shape {static} = {n:,} elements > {max_elements:,}"
                if op in _SCORE_PRODUCERS:
                    detail += " (an unfused attention score tensor? export attention as the fused ONNX Attention op)"
                problems.append(Problem("tensor_too_large", label, op, detail))
        elif op in _SCORE_PRODUCERS:
            detail = f"{tensor!r} has shape {_fmt_dims(dims)} after shape inference, so its size is not checked"
            problems.append(Problem("dynamic_shape", label, op, detail))
    return problems, known


def check(
    model: str | PathLike | onnx.ModelProto,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    max_elements: int = TRT_MAX_ELEMENTS,
    fp16: bool | None = None,
    *,
    trt_version: tuple[int, int] = DEFAULT_TRT_VERSION,
    strongly_typed: bool = True,
) -> ReadinessReport:
    """Check that ``model`` can become a TensorRT engine at ``input_shapes`` (see the module docstring)."""
    proto, base_dir = load_structure(model)
    opset = _default_opset(proto)
    shapes = resolve_input_shapes(proto, input_shapes)
    work = shape_only_copy(proto, base_dir)
    if work.functions:
        work = onnx.inliner.inline_local_functions(work)
    if input_shapes is not None:
        _fix_inputs(work, shapes)
    g = work.graph
    inferred = _infer(_for_inference(work)).graph

    types: dict[str, onnx.TypeProto.Tensor] = {}
    for vi in [*inferred.input, *inferred.value_info, *inferred.output]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type
    init_dims = {t.name: tuple(t.dims) for t in g.initializer}
    init_dtype = {t.name: t.data_type for t in g.initializer}

    def dims_of(name: str) -> Dims | None:
        if name in init_dims:
            return init_dims[name]
        tt = types.get(name)
        return None if tt is None else _tensor_dims(tt)

    def dtype_of(name: str) -> int | None:
        if name in init_dtype:
            return init_dtype[name]
        tt = types.get(name)
        return tt.elem_type if tt is not None and tt.elem_type else None

    problems: list[Problem] = []
    ops: Counter[str] = Counter()
    if opset and not MIN_OPSET <= opset <= MAX_OPSET:
        problems.append(
            Problem(
                "unsupported_op",
                "<model>",
                f"opset {opset}",
                f"TensorRT's parser documents opsets {MIN_OPSET}..{MAX_OPSET}; export at opset {MAX_OPSET} or below",
            )
        )
    for label, node in _walk(g):
        ops[node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"] += 1
        problems += _op_problems(label, node, opset, trt_version, dims_of)

    size_problems, known = _size_problems(g, shapes, dims_of, max_elements)
    problems += size_problems

    if fp16 is None:
        fp16 = any(tt.elem_type == TensorProto.FLOAT16 for tt in types.values()) or any(
            dt == TensorProto.FLOAT16 for dt in init_dtype.values()
        )
    if fp16:
        for i, node in enumerate(g.node):
            p = _fp16_problem(_node_label(node, i), node, dtype_of, strongly_typed)
            if p is not None:
                problems.append(p)

    order = {"unsupported_op": 0, "tensor_too_large": 1, "fp16_overflow_risk": 2, "dynamic_shape": 3}
    problems.sort(key=lambda p: order[p.kind])  # stable: graph order within a kind
    known.sort(key=lambda t: t[3], reverse=True)
    report = ReadinessReport(
        ok=not any(p.blocking for p in problems),
        problems=tuple(problems),
        ops=dict(ops.most_common()),
        largest=tuple(known[:_LARGEST_COUNT]),
        opset=opset,
    )
    log.info(
        "TensorRT readiness: %s (%d nodes, %d blocking problems, %d warnings)",
        "ok" if report.ok else "NOT ready",
        sum(ops.values()),
        len(report.blocking),
        len(report.warnings),
    )
    return report


def require_ready(
    model: str | PathLike | onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None, **kwargs
) -> ReadinessReport:
    """:func:`check`, raising :class:`ReadinessError` that names the first blocking node when not ready."""
    report = check(model, input_shapes, **kwargs)
    if not report.ok:
        first, *rest = report.blocking
        what = Path(model).name if not isinstance(model, onnx.ModelProto) else (model.graph.name or "model")
        more = f" (and {len(rest)} more problem{'s' if len(rest) != 1 else ''})" if rest else ""
        raise ReadinessError(f"{what} is not ready for TensorRT: {first}{more}", report)
    return report


# ---------------------------------------------------------------- CLI


def _parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=1x4x128x96, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.readiness", description="Check an ONNX model for TensorRT (CPU only, no weights read)."
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--shape", type=_parse_shape, action="append", default=[], help="NAME=1x4x128x96")
    parser.add_argument("--max-elements", type=int, default=TRT_MAX_ELEMENTS)
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None, help="default: auto-detect")
    parser.add_argument("--trt-version", type=trt_version_arg, default=DEFAULT_TRT_VERSION)
    parser.add_argument("--weakly-typed", action="store_true", help="the plan is built without STRONGLY_TYPED")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = check(
            args.model,
            dict(args.shape) or None,
            args.max_elements,
            args.fp16,
            trt_version=args.trt_version,
            strongly_typed=not args.weakly_typed,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.model}: {report.format()}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
