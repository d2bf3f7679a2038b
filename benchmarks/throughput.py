"""Throughput of igr_sdk on one machine: a Restorer in-process against the same Restorer behind Ray.

Systems, measured side by side in one run on the same images (the bundled examples, one seed each):
  inprocess     one ``Restorer`` in this process, one image per ``restore`` call, encoded as PNG
  data_<k>      ``igr_sdk.scale.restore_catalogue`` (Ray Data) with k actors, each one Restorer;
                the job time includes planning, reading and the actors' start, and ``steady`` counts
                only the images after each actor's first one
  serve         ``igr_sdk.scale`` service (Ray Serve, ``--replicas``), ``--clients`` concurrent loopback
                clients posting ``--requests`` requests; p50 / p99 latency per request

Every Restorer gets ``--threads`` intra-op threads, so one actor or replica is comparable to the
in-process Restorer; ``ray_overhead`` is the time per image of a one-worker Ray system over the
in-process one (1.0 = no overhead). Needs ``igr-sdk[ray]``.

    python benchmarks/throughput.py --images 32 --steps 25 --json benchmarks/results/throughput_cpu.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SYSTEMS = ("inprocess", "data", "serve")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=Path, help="engine folder (default: the bundled model)")
    p.add_argument("--images", type=int, default=32, help="images per system (default 32)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of every Restorer (default 1)")
    p.add_argument("--actors", type=_int_list, default=[1, 2], help="Ray Data actor counts (default 1,2)")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (default 1)")
    p.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients (default 8)")
    p.add_argument("--requests", type=int, help="HTTP requests in all (default: --images)")
    p.add_argument("--max-batch-size", type=int, help="Serve request batch (default: the engines' batch)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: enough for the largest pool)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one HTTP request may take (default 600)")
    p.add_argument("--json", type=Path, help="write all results here")
    a = p.parse_args(argv)
    for name in ("images", "steps", "threads", "replicas", "clients"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    a.requests = a.images if a.requests is None else a.requests
    if a.requests < 1 or (a.max_batch_size is not None and a.max_batch_size < 1) or a.timeout <= 0:
        p.error("--requests and --max-batch-size must be >= 1 and --timeout > 0")
    a.systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    unknown = sorted(set(a.systems) - set(SYSTEMS))
    if unknown or not a.systems:
        p.error(f"--systems {unknown or 'empty'}: expected some of {', '.join(SYSTEMS)}")
    return a


def _examples() -> list[dict[str, Any]]:
    from igr_sdk.engines import default_engine_dir

    folder = default_engine_dir() / "examples"
    return [{**e, "folder": folder} for e in json.loads((folder / "examples.json").read_text())]


def _request(i: int) -> dict[str, Any]:
    """The i-th benchmark image: the bundled examples in turn, seed i."""
    examples = _examples()
    e = examples[i % len(examples)]
    return {"person": e["folder"] / e["person"], "mask": e["folder"] / e["mask"], "category": e["category"], "seed": i}


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def bench_inprocess(a) -> dict[str, Any]:
    from igr_sdk import Restorer

    restorer = Restorer.from_dir(a.engines, threads=a.threads)
    reqs = [_request(i) for i in range(a.images)]
    restorer.restore(str(reqs[0]["person"]), str(reqs[0]["mask"]), reqs[0]["category"], steps=a.steps, seed=0)
    t0 = time.perf_counter()
    for r in reqs:
        result = restorer.restore(str(r["person"]), str(r["mask"]), r["category"], steps=a.steps, seed=r["seed"])
        result.image.save(io.BytesIO(), format="PNG")  # as the Ray systems deliver it
    seconds = time.perf_counter() - t0
    return {"images": a.images, "seconds": seconds, "images_per_s": _rate(a.images, seconds)}


def write_catalogue(folder: Path, n: int) -> Path:
    """A JSON-lines list of n rows over copies of the examples (paths must be inside the list's folder)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        r = _request(i)
        for key in ("person", "mask"):
            if not (folder / r[key].name).exists():
                shutil.copy(r[key], folder / r[key].name)
        rows.append(
            {
                "person": r["person"].name,
                "mask": r["mask"].name,
                "category": r["category"],
                "seed": r["seed"],
                "output": f"out_{i:05d}.png",
            }
        )
    path = folder / "catalogue.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def bench_data(a, actors: int, work: Path) -> dict[str, Any]:
    from igr_sdk.scale import restore_catalogue

    listing = write_catalogue(work / "catalogue", a.images)
    arrivals: list[float] = []
    t0 = time.perf_counter()
    s = restore_catalogue(
        listing,
        work / f"out_{actors}",
        engines=a.engines,
        steps=a.steps,
        actors=actors,
        actor_cpus=float(a.threads),
        on_record=lambda rec: arrivals.append(time.perf_counter()),
    )
    seconds = time.perf_counter() - t0
    if s.failed:
        raise RuntimeError(f"Ray Data benchmark: {s.failed} rows failed; see {s.results}")
    steady = None
    if len(arrivals) > actors:
        steady = _rate(len(arrivals) - actors, arrivals[-1] - arrivals[actors - 1])
    return {
        "images": s.restored,
        "actors": actors,
        "seconds": seconds,
        "images_per_s": _rate(s.restored, seconds),
        "steady_images_per_s": steady,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_serve(a) -> dict[str, Any]:
    import requests
    from ray import serve

    from igr_sdk.scale import build_app, start_service

    app = build_app(
        a.engines,
        replicas=a.replicas,
        replica_cpus=float(a.threads),
        threads=a.threads,
        max_batch_size=a.max_batch_size,
    )
    url = start_service(app, "127.0.0.1", _free_port(), name="igr-throughput") + "/restore"
    payloads = []
    for i in range(a.requests):
        r = _request(i)
        files = {"person": r["person"].read_bytes(), "mask": r["mask"].read_bytes()}
        payloads.append((files, {"category": r["category"], "seed": str(r["seed"]), "steps": str(a.steps)}))
    session = threading.local()

    def post(i: int) -> float:
        if not hasattr(session, "s"):
            session.s = requests.Session()
        files, data = payloads[i]
        t = time.perf_counter()
        reply = session.s.post(url, files=files, data=data, timeout=a.timeout)
        if reply.status_code != 200:
            raise RuntimeError(f"request {i}: HTTP {reply.status_code}: {reply.text[:200]}")
        return time.perf_counter() - t

    try:
        with ThreadPoolExecutor(a.clients) as pool:
            list(pool.map(post, range(min(a.clients, a.requests))))  # warm every replica and connection
            t0 = time.perf_counter()
            latencies = list(pool.map(post, range(a.requests)))
            seconds = time.perf_counter() - t0
    finally:
        serve.shutdown()
    ordered = sorted(latencies)
    return {
        "images": a.requests,
        "replicas": a.replicas,
        "clients": a.clients,
        "seconds": seconds,
        "images_per_s": _rate(a.requests, seconds),
        "latency_p50_s": statistics.median(ordered),
        "latency_p99_s": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
    }


def add_overhead(results: dict[str, dict[str, Any]]) -> None:
    """Time per image of a one-worker Ray system over the in-process Restorer's."""
    base = results.get("inprocess", {}).get("images_per_s")
    for name, r in results.items():
        one_worker = r.get("actors") == 1 or r.get("replicas") == 1
        if base and name != "inprocess" and one_worker:
            r["ray_overhead"] = base / r["images_per_s"]
            if r.get("steady_images_per_s"):
                r["ray_overhead_steady"] = base / r["steady_images_per_s"]


def markdown(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    head = "| system | images | images/s | steady images/s | p50 latency | p99 latency | Ray overhead |"
    lines = [f"throughput: {meta}", "", head, "|---|---|---|---|---|---|---|"]

    def fmt(v, unit=""):
        return "-" if v is None else f"{v:.3f}{unit}"

    for name, r in results.items():
        lines.append(
            f"| {name} | {r['images']} | {fmt(r['images_per_s'])} | {fmt(r.get('steady_images_per_s'))} | "
            f"{fmt(r.get('latency_p50_s'), ' s')} | {fmt(r.get('latency_p99_s'), ' s')} | "
            f"{fmt(r.get('ray_overhead'), 'x')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    if "inprocess" in a.systems:
        results["inprocess"] = bench_inprocess(a)
    if {"data", "serve"} & set(a.systems):
        import ray

        workers = max([*a.actors, a.replicas]) * a.threads
        ray.init(num_cpus=a.num_cpus or max(os.cpu_count() or 1, workers + 1), include_dashboard=False)
        try:
            with tempfile.TemporaryDirectory(prefix="igr-throughput-") as tmp:
                if "data" in a.systems:
                    for k in a.actors:
                        results[f"data_{k}"] = bench_data(a, k, Path(tmp))
            if "serve" in a.systems:
                results["serve"] = bench_serve(a)
        finally:
            ray.shutdown()
    add_overhead(results)
    meta = {
        "steps": a.steps,
        "threads": a.threads,
        "images": a.images,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "ray": sys.modules["ray"].__version__ if "ray" in sys.modules else None,
    }
    print(markdown(results, meta))
    if a.json:
        a.json.write_text(json.dumps({"meta": meta, "systems": results}, indent=2))
    return {"meta": meta, "systems": results}


if __name__ == "__main__":
    main()
