"""Build IGR engines from a checkpoint.

    python export/build_engines.py --checkpoint CKPT --out DIR [--backend onnxruntime|tensorrt]
        [--resolution HxW] [--batch B] [--precision fp16|fp32] [--opset 23|18] [--device cpu|cuda]

onnxruntime: fp32 ONNX + ONNX Runtime's offline-optimised models (CPU, or CUDA with --device cuda),
each checked against torch before it is recorded. tensorrt: fp16 strongly typed ONNX -> one plan
per graph for this GPU, after the TensorRT readiness check. Both write DIR/manifest.json; a rebuild
keeps whatever the changed options do not affect.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _resolution(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution {text!r} is not HxW, e.g. 1024x768") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, type=Path, help="IGR checkpoint folder")
    ap.add_argument("--out", required=True, type=Path, help="engine directory to create or update")
    ap.add_argument("--backend", default="onnxruntime", help="onnxruntime (default) or tensorrt")
    ap.add_argument("--resolution", type=_resolution, help="HxW in pixels (default: the checkpoint's)")
    ap.add_argument("--batch", type=int, default=1, help="requests per engine call (CFG doubles the denoiser's)")
    ap.add_argument("--precision", choices=["fp16", "fp32"], help="default: fp32 onnxruntime, fp16 tensorrt")
    ap.add_argument("--opset", type=int, default=23, help="23 keeps attention one ONNX node; 18 for TensorRT < 10.14")
    ap.add_argument("--device", default="cpu", help="onnxruntime device: cpu or cuda")
    ap.add_argument("--trt-opt-level", type=int, default=3, help="TensorRT builder optimisation level 0-5")
    ap.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file to read and update")
    ap.add_argument("--no-verify", action="store_true", help="skip the parity check against torch")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):  # they narrate every optimisation pass
        logging.getLogger(noisy).setLevel(logging.ERROR)

    from export.build import BuildError, BuildOptions, build
    from train.checkpoint import CheckpointError

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
    )
    try:
        build(opts)
    except (BuildError, CheckpointError) as e:
        print(f"build_engines: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if "TensorRT" in str(e) or "CUDA" in str(e):  # missing TensorRT / GPU: one line, not a traceback
            print(f"build_engines: error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
