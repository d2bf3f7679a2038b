"""Export the full-size `sd15` preset (random weights) at 1024x768 on CPU and report what it costs.

    python benchmarks/export_sd15.py --work /tmp/igr-sd15 [--json out.json] [--keep]

Steps: a seeded random sd15 checkpoint; the ONNX Runtime build (fp32 ONNX + optimised models,
without the torch parity check, which the tiny preset covers in the tests); fp16 ONNX of every
graph and the TensorRT readiness check on each at the build shapes. Reports file sizes, time per
step, peak resident memory and the readiness verdicts. Needs ~40 GB of disk and ~20 GB of RAM.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import resource
import shutil
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # `python <folder>/<script>.py` from a checkout (README "Running from the repository"): the repository
    # root replaces this folder on the path, so train/, export/ and benchmarks/ import as packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def _sizes(root: Path) -> dict[str, float]:
    return {
        p.relative_to(root).as_posix(): round(p.stat().st_size / 1e9, 3) for p in sorted(root.rglob("*")) if p.is_file()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/igr-sd15"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the 40 GB of files afterwards")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    import torch

    from export.build import BuildOptions, build
    from export.graphs import GRAPHS, example_inputs, module_for, specs
    from export.onnx_export import export_onnx, to_half
    from export.readiness import check
    from train.checkpoint import load_checkpoint, new_model, save_checkpoint
    from train.config import preset

    report: dict = {"resolution": [1024, 768], "batch": 1, "torch_threads": torch.get_num_threads()}
    ck, eng, fp16 = args.work / "ckpt", args.work / "engines", args.work / "fp16"
    args.work.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    save_checkpoint(new_model(preset("sd15"), seed=0), ck)
    gc.collect()
    report["checkpoint"] = {
        "seconds": round(time.perf_counter() - t, 1),
        "files_gb": _sizes(ck),
        "peak_rss_gb": round(_peak_gb(), 2),
    }

    t = time.perf_counter()
    build(BuildOptions(checkpoint=ck, out=eng, verify=False))
    report["onnxruntime_fp32_build"] = {
        "seconds": round(time.perf_counter() - t, 1),
        "files_gb": _sizes(eng),
        "peak_rss_gb": round(_peak_gb(), 2),
    }
    gc.collect()

    half = to_half(load_checkpoint(ck))
    all_specs = specs(half, 1024, 768, 1, "float16")
    report["fp16_readiness"] = {}
    for g in GRAPHS:
        t = time.perf_counter()
        spec = all_specs[g]
        path = fp16 / f"{g}.fp16.onnx"
        export_onnx(module_for(half, g, 1), spec, example_inputs(spec), path)
        seconds = round(time.perf_counter() - t, 1)
        r = check(path, {s.name: s.shape for s in spec.inputs}, fp16=True)
        report["fp16_readiness"][g] = {
            "export_seconds": seconds,
            "ok": r.ok,
            "problems": [f"{p.kind}: {p.node} ({p.op}) {p.detail}" for p in r.problems][:10],
            "attention_nodes": r.ops.get("Attention", 0),
            "largest_tensor": [list(x) if isinstance(x, tuple) else x for x in r.largest[0]] if r.largest else None,
            "files_gb": {k: v for k, v in _sizes(fp16).items() if k.startswith(g + ".")},
        }
        logging.info("%s fp16: export %.1f s, readiness %s", g, seconds, "READY" if r.ok else "NOT READY")
    report["peak_rss_gb"] = round(_peak_gb(), 2)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)
    if not args.keep:
        shutil.rmtree(args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
