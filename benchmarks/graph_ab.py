"""A/B latency of one graph in two engine folders (ONNX Runtime CPU), runs interleaved.

    python benchmarks/graph_ab.py --graph denoiser --a OLD_ENGINES --b NEW_ENGINES [--threads 1] [--repeats 30]

For judging an export change (an optimisation pass, a precision) on its own: both engines get the
same inputs (seeded normal noise, or timestep 500 for integer inputs) and alternate run by run, so
a load change on the machine hits both alike. Reports the medians, min–max, the ratio a/b and the
largest output difference (max |a - b| over max |a|).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p or ".").resolve() != _here)]

import numpy as np

ENGINE = "onnxruntime-cpu"
DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


def _session(folder: Path, graph: str, threads: int):
    import onnxruntime as ort

    manifest = json.loads((folder / "manifest.json").read_text())
    try:
        entry = manifest["graphs"][graph]["engines"][ENGINE]
    except KeyError:
        raise SystemExit(f"{folder}: its manifest has no {ENGINE!r} engine for graph {graph!r}") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(folder / entry["file"]), so, providers=["CPUExecutionProvider"]), entry


def _inputs(entry: dict, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in entry["inputs"]:
        dtype, shape = DTYPES[t["dtype"]], t["shape"]
        if np.issubdtype(dtype, np.integer):
            feeds[t["name"]] = np.full(shape, 500, dtype)
        elif t["name"] == "timestep":
            feeds[t["name"]] = np.full(shape, 500.0, dtype)
        else:
            feeds[t["name"]] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _summary(folder: Path, entry: dict, seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {
        "folder": str(folder),
        "file": entry["file"],
        "median_ms": float(np.median(ms)),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graph", required=True, help="image_encoder, vae_encoder, garmnet, denoiser or vae_decoder")
    ap.add_argument("--a", type=Path, required=True, help="engine folder A (the baseline)")
    ap.add_argument("--b", type=Path, required=True, help="engine folder B")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the report here too")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        ap.error(f"--repeats/--threads must be >= 1 and --warmup >= 0, got {args.repeats}/{args.threads}/{args.warmup}")

    (sa, ea), (sb, eb) = (_session(f, args.graph, args.threads) for f in (args.a, args.b))
    if ea["inputs"] != eb["inputs"]:
        raise SystemExit(f"{args.graph}: the two engines take different inputs: {ea['inputs']} vs {eb['inputs']}")
    feeds = _inputs(ea, args.seed)
    ya, yb = sa.run(None, feeds)[0], sb.run(None, feeds)[0]
    diff = float(np.abs(ya.astype(np.float32) - yb.astype(np.float32)).max() / max(np.abs(ya).max(), 1e-12))
    for _ in range(args.warmup):
        sa.run(None, feeds)
        sb.run(None, feeds)
    times: dict[str, list[float]] = {"a": [], "b": []}
    for _ in range(args.repeats):
        for name, s in (("a", sa), ("b", sb)):
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[name].append(time.perf_counter() - t0)
    side = {k: _summary(folder, entry, times[k]) for k, folder, entry in (("a", args.a, ea), ("b", args.b, eb))}
    report = {
        "graph": args.graph,
        "threads": args.threads,
        "repeats": args.repeats,
        **side,
        "ratio_a_over_b": side["a"]["median_ms"] / side["b"]["median_ms"],
        "max_rel_output_diff": diff,
    }
    print(f"{args.graph}, {args.threads} thread(s), median of {args.repeats} interleaved runs")
    for k in ("a", "b"):
        r = report[k]
        print(f"  {k}: {r['median_ms']:8.2f} ms  ({r['min_ms']:.2f}-{r['max_ms']:.2f})  {r['file']} in {r['folder']}")
    print(f"  a / b = {report['ratio_a_over_b']:.3f}; max |a - b| / max |a| = {diff:.2e}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
