"""Restore a catalogue with Ray Data: plan -> read, hash and decode (tasks) -> restore (an actor pool,
one ``Restorer`` per actor, fed full engine batches) -> PNGs beside a results JSON-lines file.

The driver is the only writer of the results file, one record per row once its batch has finished;
actors write the PNGs (atomically, so a batch that Ray retries after losing its actor rewrites the
same files). Rows whose output exists and whose inputs hash as the results file recorded are skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from igr_sdk._errors import InputError
from igr_sdk._manifest import read_manifest
from igr_sdk._preprocess import check_request
from igr_sdk._scheduler import schedule_timesteps
from igr_sdk.scale import _ray
from igr_sdk.scale._catalogue import Row, compact, done_hashes, plan
from igr_sdk.scale._images import MAX_FILE_BYTES, MAX_PIXELS, decode, read_bounded
from igr_sdk.scale._work import Item, check_item, decode_item, restore_items

log = logging.getLogger(__name__)

RESULTS_NAME = "results.jsonl"
_PLACEHOLDER_PERSON = np.zeros((1, 1, 3), dtype=np.uint8)  # pixels of a row that failed before decoding
_PLACEHOLDER_MASK = np.zeros((1, 1), dtype=np.uint8)


@dataclass(frozen=True)
class BatchSummary:
    rows: int  # rows of the catalogue, including those that failed planning
    restored: int
    failed: int
    skipped: int  # restored by an earlier run with the same inputs
    results: Path
    seconds: float


@dataclass(frozen=True)
class _ReadOptions:
    out_dir: str
    engine_key: str
    steps: int
    guidance_scale: float
    resolution: tuple[int, int]
    latent_factor: int
    max_file_bytes: int
    max_pixels: int


def engine_key(engine_dir: Path) -> str:
    """The engines' identity: the manifest hashes every file the runtime reads."""
    return hashlib.sha256((engine_dir / "manifest.json").read_bytes()).hexdigest()


def input_hash(opts: _ReadOptions, row: Row, person: bytes, mask: bytes | None) -> str:
    """Everything that decides a row's output: engines, options, category, seed and the input bytes."""
    h = hashlib.sha256()
    header = {
        "engines": opts.engine_key,
        "steps": opts.steps,
        "guidance_scale": opts.guidance_scale,
        "category": row.category,
        "seed": row.seed,
        "mask_labels": list(row.mask_labels),
    }
    h.update(json.dumps(header, sort_keys=True).encode())
    for data in (person, mask or b""):
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _row_from(item: dict[str, Any]) -> Row:
    fields = json.loads(item["row"])
    fields["mask_labels"] = tuple(fields["mask_labels"])
    return Row(**fields)


def read_row(item: dict[str, Any], opts: _ReadOptions) -> list[dict[str, Any]]:
    """Read, hash and decode one row; [] when an earlier run already restored these same inputs."""
    row = _row_from(item)
    rec = row.record()
    try:
        person = read_bounded(row.person, "person image", opts.max_file_bytes)
        mask = read_bounded(row.mask, "mask", opts.max_file_bytes) if row.mask else None
        rec["input_hash"] = input_hash(opts, row, person, mask)
        if item["done"] == rec["input_hash"] and (Path(opts.out_dir) / row.output).is_file():
            return []
        decoded = decode_item(
            decode(person, "person image", opts.max_pixels),
            decode(mask, "mask", opts.max_pixels) if mask is not None else None,
            row.category,
            row.seed,
            row.mask_labels,
        )
        check_item(decoded, opts.resolution, opts.latent_factor)
    except Exception as e:  # any failure to read one row fails that row, never the job
        if not isinstance(e, InputError):
            log.warning("row %d (%s) could not be read", row.index, row.input, exc_info=True)
        message = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
        rec.update(error=message, error_type=type(e).__name__)
        return [{"record": json.dumps(rec), "person": _PLACEHOLDER_PERSON, "mask": _PLACEHOLDER_MASK}]
    return [{"record": json.dumps(rec), "person": decoded.person, "mask": decoded.mask.astype(np.uint8)}]


def write_png(image, path: Path) -> None:
    """Write atomically: a reader (or a retried batch) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


class RestoreWorker:
    """A Ray Data actor: one ``Restorer``, restoring each batch of rows it is given in one call."""

    def __init__(
        self,
        engines: str | None,
        backend: str,
        device: str | None,
        threads: int,
        out_dir: str,
        steps: int,
        guidance_scale: float,
    ):
        from igr_sdk._restorer import Restorer

        self._restorer = Restorer.from_dir(engines, backend=backend, device=device, threads=threads)
        self._out = Path(out_dir)
        self._steps = steps
        self._guidance = guidance_scale
        self._worker = f"{socket.gethostname()}:{os.getpid()}"
        log.info("restore worker %s ready (%s)", self._worker, self._restorer.backend.name)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        records = [json.loads(r) for r in batch["record"]]
        todo = [i for i, rec in enumerate(records) if rec.get("error") is None]
        items = [
            Item(
                np.asarray(batch["person"][i]),
                np.asarray(batch["mask"][i]) > 0,
                records[i]["category"],
                records[i]["seed"],
            )
            for i in todo
        ]
        for i, outcome in zip(todo, restore_items(self._restorer, items, self._steps, self._guidance)):
            rec = records[i]
            if outcome.error is not None:
                rec.update(error=str(outcome.error), error_type=type(outcome.error).__name__)
            else:
                write_png(outcome.image, self._out / rec["output"])
                rec.update(timings=outcome.timings, error=None)
            rec["worker"] = self._worker
        return {"record": [json.dumps(rec) for rec in records]}


def restore_catalogue(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    engines: str | os.PathLike | None = None,
    category: str | None = None,
    steps: int = 25,
    guidance_scale: float | None = None,
    seed: int = 0,
    actors: int = 1,
    actor_cpus: float = 1.0,
    actor_gpus: float | None = None,
    read_cpus: float = 0.25,
    batch_size: int | None = None,
    backend: str = "auto",
    device: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    results: str | os.PathLike | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_pixels: int = MAX_PIXELS,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> BatchSummary:
    """Restore every row of a catalogue (see ``igr-restore-batch --help``) and return the counts.

    actor_gpus: GPUs per actor; None takes one per actor when the cluster has GPUs, else none.
    batch_size: rows per actor call (default: the engines' batch). num_cpus: CPUs of a local Ray
    (ignored when Ray is already initialised in this process). address: a cluster to join.
    on_record: called on the driver with each row's results record as it is written.
    """
    _ray.require("ray.data", "igr_sdk.scale.restore_catalogue")
    t0 = time.perf_counter()
    from igr_sdk._default import default_engine_dir

    engine_dir = Path(engines).resolve() if engines is not None else default_engine_dir()
    manifest = read_manifest(engine_dir)
    guidance = float(manifest.raw.get("guidance_scale", 1.5) if guidance_scale is None else guidance_scale)
    check_request([None], [None], category or manifest.categories[0], guidance, seed, manifest.categories)
    schedule_timesteps(manifest.raw["scheduler"], steps)
    batch = manifest.batch if batch_size is None else batch_size
    for name, value in (("actors", actors), ("batch_size", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an integer >= 1, got {value!r}")

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_path = Path(results) if results is not None else out / RESULTS_NAME
    catalogue = plan(source, manifest.categories, category, seed)
    opts = _ReadOptions(
        str(out),
        engine_key(engine_dir),
        steps,
        guidance,
        manifest.resolution,
        manifest.latent_factor,
        max_file_bytes,
        max_pixels,
    )
    worker = {
        # None: each actor opens the model bundled with its own installation
        "engines": str(engine_dir) if engines is not None else None,
        "backend": backend,
        "device": device,
        "threads": max(1, int(actor_cpus)),
        "out_dir": str(out),
        "steps": steps,
        "guidance_scale": guidance,
    }
    done = done_hashes(results_path)
    with results_path.open("a", encoding="utf-8") as f:
        for rec in catalogue.errors:
            f.write(json.dumps(rec) + "\n")
        started = _ray.connect(address, num_cpus=num_cpus)
        try:
            gpus = actor_gpus if actor_gpus is not None else (1.0 if _ray.cluster_gpus() > 0 else 0.0)
            _ray.check_fits("the restore actors", actors, actor_cpus, gpus, read_cpus, local=started and not address)
            pool = {"actors": actors, "actor_cpus": actor_cpus, "actor_gpus": gpus, "read_cpus": read_cpus}
            restored, failed = _run(catalogue.rows, done, opts, worker, pool, batch, f, on_record)
        finally:
            if started:
                _ray.require("ray").shutdown()
    kept = compact(results_path)
    summary = BatchSummary(
        rows=len(catalogue.rows) + len(catalogue.errors),
        restored=restored,
        failed=failed + len(catalogue.errors),
        skipped=len(catalogue.rows) - restored - failed,
        results=results_path,
        seconds=time.perf_counter() - t0,
    )
    log.info("%s; %d records in %s", summary, kept, results_path)
    return summary


def _run(
    rows: list[Row],
    done: dict[str, str],
    opts: _ReadOptions,
    worker: dict,
    pool: dict,
    batch: int,
    f,
    on_record: Callable[[dict[str, Any]], None] | None,
) -> tuple[int, int]:
    """Stream the rows through Ray Data, appending each finished row's record to ``f``."""
    if not rows:
        return 0, 0
    rd = _ray.require("ray.data")
    items = [{"row": json.dumps(asdict(r)), "done": done.get(r.output, "")} for r in rows]
    gpu_args = {"num_gpus": pool["actor_gpus"]} if pool["actor_gpus"] else {}
    ds = (
        rd.from_items(items)
        .flat_map(read_row, fn_kwargs={"opts": opts}, num_cpus=pool["read_cpus"])
        .map_batches(
            RestoreWorker,
            batch_size=batch,
            batch_format="numpy",
            compute=rd.ActorPoolStrategy(size=pool["actors"]),
            num_cpus=pool["actor_cpus"],
            fn_constructor_kwargs=worker,
            **gpu_args,
        )
    )
    restored = failed = 0
    for out in ds.iter_rows():
        rec = json.loads(out["record"])
        f.write(json.dumps(rec) + "\n")
        f.flush()
        if on_record is not None:
            on_record(rec)
        if rec.get("error") is None:
            restored += 1
        else:
            failed += 1
    return restored, failed
