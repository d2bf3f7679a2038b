"""An HTTP service with Ray Serve: ``POST /restore`` (multipart) -> the restored garment as PNG.

Each replica holds one ``Restorer``. A request is decoded and checked on arrival (a bad one gets its
4xx at once), then ``@serve.batch`` groups requests into engine batches; the restore runs in a worker
thread so the replica keeps answering ``/healthz`` and queueing requests for the next batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from igr_sdk._errors import InputError
from igr_sdk._manifest import read_manifest
from igr_sdk.scale._http import (
    HTTPError,
    Limits,
    error_response,
    file_field,
    parse_form,
    parse_options,
    status_for,
)
from igr_sdk.scale._images import decode
from igr_sdk.scale._work import ROW_ERRORS, Item, check_item, decode_item, png_bytes, restore_items

log = logging.getLogger(__name__)

APP_NAME = "igr"


@dataclass(frozen=True)
class _Job:
    item: Item
    steps: int
    guidance_scale: float
    arrived: float


@dataclass
class _Reply:
    seed: int
    png: bytes | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: Exception | None = None


@serve.deployment(name="IGRRestore")
class RestoreService:
    """One ``Restorer`` per replica; ``POST /restore`` and ``GET /healthz``."""

    def __init__(
        self,
        engines: str | None = None,
        backend: str = "auto",
        device: str | None = None,
        threads: int | None = None,
        limits: Limits | None = None,
        max_batch_size: int | None = None,
    ):
        from igr_sdk._restorer import Restorer

        self._restorer = Restorer.from_dir(engines, backend=backend, device=device, threads=threads)
        self._limits = limits or Limits()
        m = self._restorer.manifest
        steps = int(m.raw.get("num_inference_steps", 25))
        if steps > self._limits.max_steps:
            log.warning(
                "the engines' default of %d steps is over max_steps; requests default to %d",
                steps,
                self._limits.max_steps,
            )
        self._defaults = {
            "category": m.categories[0],
            "steps": min(steps, self._limits.max_steps),
            "guidance": float(m.raw.get("guidance_scale", 1.5)),
        }
        self._batch = max_batch_size or m.batch
        self._restore_batch.set_max_batch_size(self._batch)
        self._restore_batch.set_batch_wait_timeout_s(self._limits.batch_wait_s)
        log.info(
            "replica ready: %s, engine batch %d, request batches of %d",
            self._restorer.backend.name,
            m.batch,
            self._batch,
        )

    async def __call__(self, request: Request) -> Response:
        try:
            path = request.url.path.rstrip("/") or "/"
            if path == "/healthz":
                if request.method not in ("GET", "HEAD"):
                    return error_response(405, f"{request.method} is not allowed on /healthz; use GET", Allow="GET")
                return JSONResponse(self.health())
            if path != "/restore":
                return error_response(404, f"no route {path!r}; expected POST /restore or GET /healthz")
            if request.method != "POST":
                return error_response(405, f"{request.method} is not allowed on /restore; use POST", Allow="POST")
            return await self._restore(request)
        except HTTPError as e:
            return error_response(e.status, e.message)
        except ROW_ERRORS as e:
            return error_response(status_for(e), str(e))
        except Exception:
            log.exception("restore request failed")
            return error_response(500, "internal error while restoring; the replica's log has the details")

    def health(self) -> dict[str, Any]:
        m = self._restorer.manifest
        return {
            "status": "ok",
            "backend": self._restorer.backend.name,
            "resolution": list(m.resolution),
            "engine_batch": m.batch,
            "max_batch_size": self._batch,
            "categories": list(m.categories),
            "defaults": self._defaults,
        }

    async def _restore(self, request: Request) -> Response:
        arrived = time.perf_counter()
        fields = await parse_form(request, self._limits)
        job = await asyncio.to_thread(self._job, fields, arrived)
        reply = await self._restore_batch(job)
        if reply.error is not None:
            return error_response(status_for(reply.error), str(reply.error))
        timings = {k: round(v, 6) for k, v in reply.timings.items()}
        headers = {
            "X-IGR-Seed": str(reply.seed),
            "X-IGR-Timings": json.dumps(timings, separators=(",", ":")),
            "Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in timings.items() if k != "batch"),
        }
        return Response(reply.png, media_type="image/png", headers=headers)

    def _job(self, fields: dict, arrived: float) -> _Job:
        """Decode and check one request (in a worker thread); InputError for anything wrong with it."""
        person = file_field(fields, "person")
        if person is None:
            raise InputError("missing field 'person': send the person photo as a file part")
        mask = file_field(fields, "mask")
        category, seed, steps, guidance = parse_options(fields, self._defaults, self._limits)
        m = self._restorer.manifest
        if category not in m.categories:
            raise InputError(f"unknown category {category!r}; expected one of {m.categories}")
        px = self._limits.max_pixels
        item = decode_item(
            decode(person, "person", px), decode(mask, "mask", px) if mask is not None else None, category, seed
        )
        check_item(item, m.resolution, m.latent_factor)
        return _Job(item, steps, guidance, arrived)

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.05)
    async def _restore_batch(self, jobs: list[_Job]) -> list[_Reply]:
        return await asyncio.to_thread(self._run, jobs)

    def _run(self, jobs: Sequence[_Job]) -> list[_Reply]:
        """Restore a batch: the jobs that share steps and guidance go through one runtime call."""
        started = time.perf_counter()
        replies: list[_Reply] = [_Reply(job.item.seed) for job in jobs]
        groups: dict[tuple[int, float], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.steps, job.guidance_scale), []).append(i)
        for (steps, guidance), idx in groups.items():
            for i, outcome in zip(idx, restore_items(self._restorer, [jobs[i].item for i in idx], steps, guidance)):
                r = replies[i]
                r.error = outcome.error
                r.png = png_bytes(outcome.image) if outcome.image is not None else None
                r.timings = {"queue": started - jobs[i].arrived, **outcome.timings}
        return replies


def build_app(
    engines: str | Path | None = None,
    *,
    backend: str = "auto",
    device: str | None = None,
    replicas: int = 1,
    replica_cpus: float = 1.0,
    replica_gpus: float = 0.0,
    threads: int | None = None,
    autoscaling: Mapping[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    max_batch_size: int | None = None,
    limits: Limits | None = None,
):
    """The Serve application (``serve.run`` it, or use :func:`start_service`).

    autoscaling: Ray Serve's ``autoscaling_config`` (min_replicas, max_replicas,
    target_ongoing_requests, ...), passed through; it replaces ``replicas``.
    max_batch_size: requests per batch (default: the engines' batch).
    """
    from igr_sdk._default import default_engine_dir

    engine_dir = Path(engines).resolve() if engines is not None else default_engine_dir()
    manifest = read_manifest(engine_dir)  # refuse a bad engine folder here, not in every replica
    batch = max_batch_size or manifest.batch
    for name, value in (("replicas", replicas), ("max_batch_size", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    actor: dict[str, Any] = {"num_cpus": replica_cpus}
    if replica_gpus:
        actor["num_gpus"] = replica_gpus
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        # a replica must hold a full batch of requests at once for batching to fill it
        "max_ongoing_requests": max_ongoing_requests or max(8, 2 * batch),
    }
    if autoscaling:
        options["autoscaling_config"] = dict(autoscaling)
    else:
        options["num_replicas"] = replicas
    threads = threads or max(1, int(replica_cpus))
    return RestoreService.options(**options).bind(
        str(engine_dir) if engines is not None else None, backend, device, threads, limits, batch
    )


def start_service(app, host: str = "127.0.0.1", port: int = 8000, name: str = APP_NAME) -> str:
    """Start Serve's HTTP proxy on ``host:port`` and deploy ``app``; returns the base URL."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=name, route_prefix="/")
    url = f"http://{host}:{port}"
    log.info("serving %s/restore and %s/healthz", url, url)
    return url
