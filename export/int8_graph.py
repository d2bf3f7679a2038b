"""Static QDQ quantisation of one fp32 ONNX graph for ONNX Runtime on the CPU (``export/quantize.py``
decides which graphs; this module only quantises one).

Settings (ONNX Runtime's quantisation docs, "Data type selection" and the FAQ):

* QDQ format; weights int8, symmetric, per output channel; activations uint8, asymmetric, per
  tensor (U8S8), ranges from the 99.999th percentile of the calibration histograms.
* Why uint8 activations: off ARM, ONNX Runtime fuses QDQ groups into integer kernels
  (QLinearConv, QLinearMatMul) only for uint8 activations; int8 activations are rewritten to uint8
  at load by its QDQ S8-to-U8 pass, which in ONNX Runtime 1.32 fails on opset >= 21 graphs
  ("output_dtype INT8 does not match y_zero_point type UINT8"). u8 x s8 is what AVX-512 VNNI's
  VPDPBUSD computes, accumulating in 32 bits, so nothing saturates. Without VNNI (AVX2, AVX-512
  without VNNI) ONNX Runtime uses VPMADDUBSW, whose 16-bit sums can saturate: build on such a
  host with ``reduce_range`` (7-bit weights), which the build suggests when it sees no VNNI.
* Only Conv, MatMul and Gemm are quantised: the compute. Normalisation, softmax, the fused
  attention and elementwise ops stay fp32, and so does every Conv/MatMul/Gemm that reads a graph
  input or writes a graph output (the denoiser's conv_in and conv_out, the cross-attention K/V
  projections of the text and IP tokens, GarmNet's reference K/V projections): a small share of
  the compute that keeps each graph's inputs and outputs at full precision.
* MatMul and Gemm outputs are not quantised (``FLOAT_OUTPUT_OPS``): each feeds a float op, and ONNX
  Runtime then runs them as integer kernels with a float output (MatMulIntegerToFloat, QGemm)
  instead of QLinearMatMul + DequantizeLinear. On the small demo denoiser this made an int8 step 5%
  faster (one thread, 40 interleaved runs) and removed one rounding per projection.
* The **output stage** (``output_stage_nodes``) can be kept fp32 as well: the Conv/MatMul/Gemm nodes
  working at the resolution of an image-shaped graph output, e.g. the VAE decoder's convolutions at
  full resolution (conv_out, a graph edge, is fp32 anyway). Rounding there lands on the pixels with
  nothing after it to smooth it out. On the small demo model's decoder (4 held-out pairs, LPIPS against the fp32
  decode, one thread): all int8 0.0088 at 35.5 ms, output stage fp32 0.0042 at 45.2 ms, all fp32
  66.0 ms. ``export/quantize.py`` tries it for a graph whose full int8 version fails.

Why these choices, measured on the small demo model's denoiser (8 held-out inputs over the 25
steps, 2 held-out pairs; output error as defined in ``Int8Limits``): MinMax ranges with every
Conv/MatMul/Gemm quantised gave an output error of 0.154; percentile ranges 0.047; percentile
ranges with the graph-edge nodes kept fp32 0.031, and restored garments at SSIM 0.994-0.997 and
PSNR 40-45 dB against fp32. With MinMax the restored garments fell to SSIM 0.86-0.93.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export import onnx_export
from export.build import BuildError

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
# Every MatMul/Gemm here feeds a float op (attention, a residual Add, GEGLU's Split), so a quantised
# output would only be dequantised again: without it ONNX Runtime runs MatMulIntegerToFloat and QGemm
# with a float output, one rounding less and two nodes fewer per projection. A Conv keeps its output
# Q/DQ: QLinearConv is the only integer convolution ONNX Runtime has.
FLOAT_OUTPUT_OPS = ("MatMul", "Gemm")
_HIST_CHUNK = 8  # calibration inputs per histogram update (1 past protobuf's limit): bounds the activations held


@dataclass(frozen=True)
class Quantized:
    """One quantised graph: its files, and the output stage it has (kept fp32 or not)."""

    files: list[Path]
    output_stage: tuple[str, ...]  # the graph's output-stage nodes (output_stage_nodes)
    output_stage_fp32: bool  # whether they were kept fp32 in this file


class _Feeds:
    """ONNX Runtime's calibration data reader over recorded feeds (with the range the strided
    calibration loop sets)."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        self.set_range(0, len(self._feeds))

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._feeds[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _stride(n: int, limit: int = _HIST_CHUNK) -> int:
    """The largest divisor of n not above ``limit`` (ONNX Runtime's strided calibration needs one)."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def edge_nodes(model) -> list[str]:
    """Names of the quantisable nodes that read a graph input or write a graph output."""
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in QUANTIZED_OPS and (set(n.input) & inputs or set(n.output) & outputs)
    ]


def output_stage_nodes(model) -> list[str]:
    """Names of the quantisable nodes, graph-edge nodes aside, whose output has the spatial size of a
    rank-4 graph output (the last two dims, static): the stage that writes an image-shaped output at
    its own resolution. Empty for graphs whose outputs are tokens or K/V tensors."""
    from export.ort_attention import _shapes

    shapes = _shapes(model)
    sizes = set()
    for o in model.graph.output:
        dims = shapes.get(o.name) or []
        if len(dims) == 4 and None not in dims[2:]:
            sizes.add(tuple(dims[2:]))
    if not sizes:
        return []
    edges = set(edge_nodes(model))
    return [
        n.name
        for n in model.graph.node
        if n.op_type in QUANTIZED_OPS
        and n.name not in edges
        and len(dims := shapes.get(n.output[0]) or []) == 4
        and tuple(dims[2:]) in sizes
    ]


def quantize_graph(
    src: Path,
    dst: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    tmp: Path,
    reduce_range: bool = False,
    output_stage_fp32: bool = False,
) -> Quantized:
    """Static QDQ quantisation of the fp32 ONNX ``src`` on ``feeds``, written to ``dst``; with
    ``output_stage_fp32`` the output stage stays fp32 besides the graph-edge nodes."""
    import onnx

    if not feeds:
        raise BuildError(f"no calibration inputs were recorded for {src.name}")
    large = onnx_export._size(src) > onnx_export.EXTERNAL_DATA_BYTES
    pre = tmp / f"{dst.stem}.pre.onnx"
    if not pre.is_file():  # a graph's output-stage version reuses the preparation of its first one
        _prepare(src, pre, large)
    prepared = onnx.load(str(pre), load_external_data=False)
    keep, stage = edge_nodes(prepared), output_stage_nodes(prepared)
    for old in onnx_export._files_of(dst):
        old.unlink()
    with contextlib.redirect_stdout(io.StringIO()):  # the calibrators narrate their progress on stdout
        _quantize_static(pre, dst, feeds, keep + stage if output_stage_fp32 else keep, large, reduce_range)
    return Quantized(onnx_export._files_of(dst), tuple(stage), output_stage_fp32 and bool(stage))


def _prepare(src: Path, pre: Path, large: bool) -> None:
    """``src`` as calibration sees it, written to ``pre``: the fp32 CPU engines' rewrites around ONNX
    Runtime's recommended preparation."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # the fp32 engines' group norms (export.ort_groupnorm), rewritten before ONNX Runtime's preparation
    # expands them into their function body
    rewritten = src.with_name(f"{src.stem}.cpu.onnx")  # beside its source: external data stays where it is
    try:
        # ONNX Runtime's recommended preparation: its basic graph optimisations and shape inference
        quant_pre_process(
            str(rewritten if onnx_export.rewrite_for_cpu(src, rewritten, attention=False) else src),
            str(pre),
            skip_symbolic_shape=True,
            save_as_external_data=large,
            all_tensors_to_one_file=True,
            external_data_location=pre.name + ".data",
        )
    finally:
        rewritten.unlink(missing_ok=True)
    # the fp32 engines' attention (export.ort_attention), rewritten before calibration sees the graph
    fused = pre.with_name(f"{pre.stem}.fused.onnx")
    if onnx_export.rewrite_for_cpu(pre, fused, group_norm=False):
        fused.replace(pre)


def _quantize_static(pre: Path, dst: Path, feeds, keep: list[str], large: bool, reduce_range: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(pre),
        str(dst),
        _Feeds(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OPS),
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=keep,
        use_external_data_format=large,
        calibrate_method=CalibrationMethod.Percentile,
        extra_options={
            "CalibStridedMinMax": _stride(len(feeds), 1 if large else _HIST_CHUNK),
            "CalibPercentile": 99.999,
            "OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUT_OPS),
        },
    )


def count_qdq(path: Path) -> int:
    """QuantizeLinear + DequantizeLinear nodes of an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
