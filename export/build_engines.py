"""Build IGR engines from a checkpoint.

    python export/build_engines.py --checkpoint CKPT --out DIR [--backend onnxruntime|tensorrt]
        [--resolution HxW] [--batch B] [--precision fp16|fp32|int8] [--opset 23|18] [--device cpu|cuda]
        [--calibration DIR] [--calibration-pairs N] [--eval-pairs N] [--int8-graphs G,G] [--int8-reduce-range]
        [--int8-lpips-weights PATH ...]

onnxruntime: fp32 ONNX + ONNX Runtime's offline-optimised models (CPU, or CUDA with --device cuda),
each checked against torch before it is recorded. tensorrt: fp16 strongly typed ONNX -> one plan
per graph for this GPU, after the TensorRT readiness check. Both write DIR/manifest.json; a rebuild
keeps whatever the changed options do not affect.

--parser DIR also exports a human parser (a local Hugging Face SegFormer folder) as the engine
folder's optional ``parser`` graph, so restores need no mask; export/parser.py lists the label sets
it knows (fashn, atr, lip, igr) and the mapping-file format for others.

--precision int8 (ONNX Runtime, CPU): the fp32 engines, then static int8 QDQ engines calibrated on
real inputs (synthetic pairs, or --calibration DIR of your own pairs in VITON-HD layout); each
graph stays fp32 where its measured quality falls short (export/quantize.py states the thresholds).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # `python <folder>/<script>.py` from a checkout (README "Running from the repository"): the repository
    # root replaces this folder on the path, so train/, export/ and benchmarks/ import as packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]

from igr_sdk.contract import resolution_arg

_INT8_ARGS = (
    "calibration",
    "calibration_pairs",
    "eval_pairs",
    "int8_graphs",
    "int8_reduce_range",
    "int8_lpips_weights",
)


def _int8_options(args: argparse.Namespace):
    from export.quantize import Int8Options

    kw = {}
    if args.calibration is not None:
        kw["calibration"] = args.calibration
    if args.calibration_pairs is not None:
        kw["pairs"] = args.calibration_pairs
    if args.eval_pairs is not None:
        kw["eval_pairs"] = args.eval_pairs
    if args.int8_graphs:
        kw["graphs"] = tuple(g.strip() for g in args.int8_graphs.split(",") if g.strip())
    if args.int8_lpips_weights:
        kw["lpips_weights"] = tuple(args.int8_lpips_weights)
    return Int8Options(reduce_range=args.int8_reduce_range, **kw)


_PARSER_ARGS = ("parser_labels", "parser_size")


def _parser_options(args: argparse.Namespace, ap: argparse.ArgumentParser):
    extra = [f"--{k.replace('_', '-')}" for k in _PARSER_ARGS if getattr(args, k) is not None]
    if args.parser is None:
        if extra:
            ap.error(f"{', '.join(extra)} only apply with --parser DIR")
        return None
    from export.parser import ParserOptions, parse_size

    try:
        size = None if args.parser_size is None else parse_size(args.parser_size)
    except ValueError as e:
        ap.error(f"--parser-size: {e}")
    return ParserOptions(args.parser, labels=args.parser_labels, size=size)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, type=Path, help="IGR checkpoint folder")
    ap.add_argument("--out", required=True, type=Path, help="engine directory to create or update")
    ap.add_argument("--backend", default="onnxruntime", help="onnxruntime (default) or tensorrt")
    ap.add_argument("--resolution", type=resolution_arg(), help="HxW in pixels (default: the checkpoint's)")
    ap.add_argument("--batch", type=int, default=1, help="requests per engine call (CFG doubles the denoiser's)")
    ap.add_argument("--precision", choices=["fp16", "fp32", "int8"], help="default: fp32 onnxruntime, fp16 tensorrt")
    ap.add_argument("--opset", type=int, default=23, help="23 keeps attention one ONNX node; 18 for TensorRT < 10.14")
    ap.add_argument("--device", default="cpu", help="onnxruntime device: cpu or cuda")
    ap.add_argument("--trt-opt-level", type=int, default=3, help="TensorRT builder optimisation level 0-5")
    ap.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file to read and update")
    ap.add_argument("--no-verify", action="store_true", help="skip the parity check against torch")
    parse = ap.add_argument_group("parser (masks from the photo)")
    parse.add_argument("--parser", type=Path, metavar="DIR", help="a local Hugging Face SegFormer folder to export")
    parse.add_argument("--parser-labels", metavar="SET|MAP.json", help="fashn, atr, lip, igr or a mapping file")
    parse.add_argument("--parser-size", metavar="HxW", help="its input size (default: its preprocessor config's)")
    int8 = ap.add_argument_group("int8 (with --precision int8)")
    int8.add_argument("--calibration", type=Path, help="your own pairs (VITON-HD layout); default: synthetic pairs")
    int8.add_argument("--calibration-pairs", type=int, help="pairs (requests) to calibrate on (default 8)")
    int8.add_argument("--eval-pairs", type=int, help="held-out pairs the int8/fp32 choice is measured on (default 4)")
    int8.add_argument("--int8-graphs", help="comma-separated graphs to try in int8 (default: all five)")
    int8.add_argument("--int8-reduce-range", action="store_true", help="7-bit weights, for CPUs without VNNI")
    int8.add_argument(
        "--int8-lpips-weights",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="LPIPS weights (files or a folder) for the int8/fp32 choice; default: the cache of "
        "benchmarks/fetch_metric_weights.py, and SSIM/PSNR alone where it is empty",
    )
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    int8_args = [f"--{k.replace('_', '-')}" for k in _INT8_ARGS if getattr(args, k) not in (None, False)]
    if int8_args and args.precision != "int8":
        ap.error(f"{', '.join(int8_args)} only apply with --precision int8")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):  # they narrate every optimisation pass
        logging.getLogger(noisy).setLevel(logging.ERROR)

    from export.build import BuildError, BuildOptions, build
    from train.checkpoint import CheckpointError

    int8_opts = _int8_options(args) if args.precision == "int8" else None

    opts = BuildOptions(
        checkpoint=args.checkpoint,
        out=args.out,
        backend=args.backend,
        resolution=args.resolution,
        batch=args.batch,
        precision=args.precision,
        opset=args.opset,
        device=args.device,
        verify=not args.no_verify,
        trt_opt_level=args.trt_opt_level,
        timing_cache=args.timing_cache,
        parser=_parser_options(args, ap),
        int8=int8_opts,
    )
    try:
        build(opts)
    except (BuildError, CheckpointError) as e:  # ReadinessError, missing TensorRT or GPU included
        print(f"build_engines: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
