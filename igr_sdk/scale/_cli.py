"""``igr-restore-batch`` (Ray Data) and ``igr-serve`` (Ray Serve)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

from igr_sdk._errors import EngineError, InputError
from igr_sdk.scale._catalogue import CatalogueError

EXIT_ROWS_FAILED = 3


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _resources(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--engines", type=Path, help="engine directory (default: the bundled model)")
    ap.add_argument("--backend", default="auto", help="auto, onnxruntime or tensorrt")
    ap.add_argument("--device", help="cpu, cuda or cuda:N (default: the best available)")
    ap.add_argument("--address", help="a Ray cluster to join (default: start a local Ray)")
    ap.add_argument("--num-cpus", type=_positive_int, help="CPUs of a local Ray (default: all)")
    ap.add_argument("-q", "--quiet", action="store_true", help="log warnings only")


def batch_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="igr-restore-batch",
        description="Restore every person of a catalogue with Ray Data: PNGs plus a results JSON-lines file. "
        "Rerunning skips the rows whose output exists and whose inputs are unchanged.",
        epilog="Example: igr-restore-batch --input data/viton/test --out out/catalogue --actors 2",
    )
    ap.add_argument(
        "--input",
        required=True,
        type=Path,
        help="a VITON-HD or DressCode folder, or a .csv / .jsonl list with the columns person, mask, "
        "category, seed, output (paths relative to the list's folder)",
    )
    ap.add_argument("--out", required=True, type=Path, help="output folder (PNGs mirror the input paths)")
    ap.add_argument(
        "--category",
        help="upper, lower or full: the category of rows that name none (DressCode: the only category folder read)",
    )
    ap.add_argument("--steps", type=_positive_int, default=25, help="DDIM steps (default 25)")
    ap.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the engines')")
    ap.add_argument("--seed", type=int, default=0, help="seed of the rows that give none (default 0)")
    ap.add_argument("--actors", type=_positive_int, default=1, help="restore actors, one Restorer each (default 1)")
    ap.add_argument("--actor-cpus", type=_resources, default=1.0, help="CPUs per actor (default 1)")
    ap.add_argument("--actor-gpus", type=_resources, help="GPUs per actor (default: 1 where the cluster has GPUs)")
    ap.add_argument("--batch-size", type=_positive_int, help="rows per actor call (default: the engines' batch)")
    ap.add_argument("--results", type=Path, help="results file (default: OUT/results.jsonl)")
    _common(ap)
    return ap


def serve_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="igr-serve",
        description="Serve POST /restore (multipart: person, mask, category, seed, steps, guidance -> PNG) and "
        "GET /healthz with Ray Serve, until interrupted.",
        epilog="Example: igr-serve --port 8000 --replicas 2",
    )
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    ap.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    ap.add_argument("--replicas", type=_positive_int, default=1, help="replicas, one Restorer each (default 1)")
    ap.add_argument("--replica-cpus", type=_resources, default=1.0, help="CPUs per replica (default 1)")
    ap.add_argument("--replica-gpus", type=_resources, help="GPUs per replica (default: 1 where the cluster has GPUs)")
    ap.add_argument(
        "--autoscaling",
        type=_json_object,
        help="Ray Serve autoscaling_config as JSON, replacing --replicas, e.g. "
        '\'{"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2}\'',
    )
    ap.add_argument("--max-batch-size", type=_positive_int, help="requests per batch (default: the engines' batch)")
    ap.add_argument("--batch-wait-ms", type=float, default=50.0, help="how long a batch waits to fill (default 50)")
    ap.add_argument("--max-ongoing-requests", type=_positive_int, help="per replica (default: max(8, 2 x batch))")
    ap.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MiB (default 32)")
    ap.add_argument("--max-pixels", type=_positive_int, default=25_000_000, help="largest image (default 25e6)")
    ap.add_argument(
        "--max-steps", type=_positive_int, default=100, help="most DDIM steps a request may ask (default 100)"
    )
    _common(ap)
    return ap


def _logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def batch_main(argv: list[str] | None = None) -> int:
    args = batch_parser().parse_args(argv)
    _logging(args.quiet)
    from igr_sdk.scale._batch import restore_catalogue

    try:
        s = restore_catalogue(
            args.input,
            args.out,
            engines=args.engines,
            category=args.category,
            steps=args.steps,
            guidance_scale=args.guidance,
            seed=args.seed,
            actors=args.actors,
            actor_cpus=args.actor_cpus,
            actor_gpus=args.actor_gpus,
            batch_size=args.batch_size,
            backend=args.backend,
            device=args.device,
            address=args.address,
            num_cpus=args.num_cpus,
            results=args.results,
        )
    except (InputError, EngineError, CatalogueError, ImportError) as e:
        print(f"igr-restore-batch: error: {e}", file=sys.stderr)
        return 2
    print(
        f"{s.rows} rows: {s.restored} restored, {s.skipped} skipped (done before), {s.failed} failed "
        f"in {s.seconds:.1f} s; records in {s.results}",
        file=sys.stderr,
    )
    return EXIT_ROWS_FAILED if s.failed else 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def serve_main(argv: list[str] | None = None) -> int:
    args = serve_parser().parse_args(argv)
    _logging(args.quiet)
    try:
        from igr_sdk.scale import _ray

        serve = _ray.require("ray.serve", "igr-serve")
        from igr_sdk.scale._http import Limits
        from igr_sdk.scale._service import build_app, start_service

        limits = Limits(
            max_body_bytes=int(args.max_body_mb * 1024 * 1024),
            max_pixels=args.max_pixels,
            max_steps=args.max_steps,
            batch_wait_s=args.batch_wait_ms / 1000.0,
        )
        started = _ray.connect(args.address, num_cpus=args.num_cpus)
        gpus = args.replica_gpus if args.replica_gpus is not None else (1.0 if _ray.cluster_gpus() > 0 else 0.0)
        if not args.autoscaling:
            _ray.check_fits(
                "the replicas", args.replicas, args.replica_cpus, gpus, 0.0, local=started and not args.address
            )
        app = build_app(
            args.engines,
            backend=args.backend,
            device=args.device,
            replicas=args.replicas,
            replica_cpus=args.replica_cpus,
            replica_gpus=gpus,
            autoscaling=args.autoscaling,
            max_ongoing_requests=args.max_ongoing_requests,
            max_batch_size=args.max_batch_size,
            limits=limits,
        )
        url = start_service(app, args.host, args.port)
    except (InputError, EngineError, ImportError, ValueError) as e:
        print(f"igr-serve: error: {e}", file=sys.stderr)
        return 2
    print(f"serving POST {url}/restore and GET {url}/healthz; Ctrl-C stops", file=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)  # stop cleanly (Serve and a local Ray) on SIGTERM too
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        _shutdown(serve, started)
    return 0


def _shutdown(serve, started_ray: bool) -> None:
    """Stop Serve, then a Ray this command started; a cluster that is already going down is no error."""
    from igr_sdk.scale import _ray

    steps = [("Serve", serve.shutdown)]
    if started_ray:
        steps.append(("Ray", _ray.require("ray").shutdown))
    for name, stop in steps:
        try:
            stop()
        except Exception as e:  # e.g. the whole process group was signalled and Ray's processes are gone
            logging.getLogger(__name__).warning("%s did not shut down cleanly: %s", name, e)
