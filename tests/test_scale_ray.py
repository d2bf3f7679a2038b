"""Batch restoration (Ray Data) and the HTTP service (Ray Serve) on a local 2-CPU Ray, bundled model, 2 steps."""

from __future__ import annotations

import io
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="needs igr-sdk[ray]")
pytest.importorskip("ray.data")
serve = pytest.importorskip("ray.serve")
requests = pytest.importorskip("requests")

from scale_data import read_results, variants, write_list  # noqa: E402

from igr_sdk import Restorer  # noqa: E402
from igr_sdk.scale import Limits, build_app, restore_catalogue, start_service  # noqa: E402
from igr_sdk.scale._cli import batch_main  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STEPS = 2
POOL = {"actors": 2, "actor_cpus": 0.5, "read_cpus": 0.25}  # fits a 2-CPU Ray with room for reading


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def restorer():
    return Restorer.from_dir(threads=1)


def _pixels(path_or_bytes) -> np.ndarray:
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(src) as im:
        return np.asarray(im.convert("RGB"))


def _direct(restorer, root, rec) -> np.ndarray:
    result = restorer.restore(
        str(root / rec["input"]), str(root / rec["mask"]), rec["category"], steps=STEPS, seed=rec["seed"]
    )
    return np.asarray(result.image)


def test_batch_equals_single_calls_and_resumes(local_ray, restorer, tmp_path):
    listing = write_list(tmp_path / "cat", 6, bad=1)
    out = tmp_path / "out"
    s = restore_catalogue(listing, out, steps=STEPS, **POOL)
    assert (s.rows, s.restored, s.failed, s.skipped) == (7, 6, 1, 0)

    records = read_results(out / "results.jsonl")
    assert sorted(r["row"] for r in records) == list(range(7))  # every row once
    broken = [r for r in records if r["error"] is not None]
    assert len(broken) == 1 and "person image" in broken[0]["error"] and broken[0]["input"].endswith("broken_0.jpg")
    for rec in records:
        if rec["error"] is None:
            assert rec["timings"]["denoiser"] > 0 and len(rec["input_hash"]) == 64
            np.testing.assert_array_equal(_pixels(out / rec["output"]), _direct(restorer, listing.parent, rec))

    # a rerun through the command line skips what was done and retries only the failed row
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    args = ["--input", str(listing), "--out", str(out), "--steps", str(STEPS), "--actors", "1", "--actor-cpus", "0.5"]
    assert batch_main([*args, "-q"]) == 3  # rows failed
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes
    assert len(read_results(out / "results.jsonl")) == 7

    # a changed input (or option) is restored again, and only that one
    name, person, _, _ = variants(6)[4]
    person.rotate(3, fillcolor="white").save(listing.parent / "photos" / f"{name}.jpg", quality=95)
    s = restore_catalogue(listing, out, steps=STEPS, actors=1, actor_cpus=0.5)
    assert (s.restored, s.failed, s.skipped) == (1, 1, 5)
    changed = [p for p in out.rglob("*.png") if p.stat().st_mtime_ns != mtimes[p]]
    assert [p.name for p in changed] == [f"{name}.png"]
    assert len(read_results(out / "results.jsonl")) == 7


def test_killed_actor_the_job_still_writes_every_row_once(local_ray, tmp_path):
    n = 12
    listing = write_list(tmp_path / "cat", n, kind="jsonl")
    out = tmp_path / "out"
    results = out / "results.jsonl"
    outcome: dict = {}

    def job():
        outcome["summary"] = restore_catalogue(listing, out, steps=STEPS, **POOL)

    worker = threading.Thread(target=job, daemon=True)
    worker.start()
    victim, seen_at_kill = None, None
    deadline = time.monotonic() + 90
    while victim is None and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
        records = read_results(results) if results.is_file() else []
        if records:
            victim, seen_at_kill = int(records[0]["worker"].rsplit(":", 1)[1]), len(records)
            os.kill(victim, signal.SIGKILL)
    worker.join(timeout=120)
    assert not worker.is_alive(), "the job did not finish after an actor was killed"
    assert victim is not None and seen_at_kill < n, "the job ended before an actor could be killed"

    s = outcome["summary"]
    assert (s.restored, s.failed) == (n, 0)
    records = read_results(results)
    assert sorted(r["row"] for r in records) == list(range(n))
    assert all(_pixels(out / r["output"]).shape == (256, 192, 3) for r in records)
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)


@pytest.fixture(scope="module")
def service(local_ray):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    limits = Limits(max_body_bytes=1 << 20, max_pixels=400_000, max_steps=10, batch_wait_s=0.05)
    url = start_service(build_app(replica_cpus=0.5, threads=1, max_batch_size=2, limits=limits), "127.0.0.1", port)
    yield url
    serve.shutdown()


def _files(person: Image.Image, mask: Image.Image | None) -> dict:
    def png(im):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    files = {"person": ("person.png", png(person), "image/png")}
    if mask is not None:
        files["mask"] = ("mask.png", png(mask), "image/png")
    return files


def test_service_answers_concurrent_clients_like_direct_calls(service, restorer):
    assert requests.get(f"{service}/healthz", timeout=30).json()["status"] == "ok"
    pairs = variants(4)

    def call(i):
        _, person, mask, category = pairs[i]
        data = {"category": category, "seed": str(100 + i), "steps": str(STEPS)}
        return requests.post(f"{service}/restore", files=_files(person, mask), data=data, timeout=120)

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(call, range(4)))
    for i, r in enumerate(replies):
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png" and r.headers["X-IGR-Seed"] == str(100 + i)
        assert '"denoiser"' in r.headers["X-IGR-Timings"]
        _, person, mask, category = pairs[i]
        direct = restorer.restore(person, mask, category, steps=STEPS, seed=100 + i).image
        np.testing.assert_array_equal(_pixels(r.content), np.asarray(direct))


def test_service_refuses_bad_requests_with_4xx(service):
    _, person, mask, _ = variants(1)[0]
    url = f"{service}/restore"
    big = Image.new("RGB", (800, 600), "white")
    cases = [
        (requests.post(url, files=_files(person, None), timeout=30), 400, "mask"),
        (requests.post(url, files=_files(person, mask), data={"category": "hat"}, timeout=30), 400, "category"),
        (requests.post(url, files=_files(person, mask), data={"steps": "50"}, timeout=30), 400, "steps"),
        (requests.post(url, files=_files(person, mask), data={"seed": "-1"}, timeout=30), 400, "seed"),
        (requests.post(url, files=_files(person, mask), data={"guidance": "nan"}, timeout=30), 400, "guidance"),
        (requests.post(url, files={"person": b"not an image", "mask": b"x"}, timeout=30), 400, "readable"),
        (requests.post(url, files=_files(person, Image.new("L", person.size)), timeout=30), 400, "empty"),
        (requests.post(url, files={**_files(person, mask), "hat": b"1"}, timeout=30), 400, "unknown field"),
        (requests.post(url, data={"person": "x"}, timeout=30), 415, "multipart"),
        (requests.post(url, files={"person": b"0" * (2 << 20)}, timeout=30), 413, "limit"),
        (requests.post(url, files=_files(big, big.convert("L")), timeout=30), 413, "pixels"),
        (requests.get(url, timeout=30), 405, "POST"),
        (requests.get(f"{service}/nowhere", timeout=30), 404, "route"),
    ]
    for reply, status, word in cases:
        assert reply.status_code == status, (status, reply.text)
        assert word in reply.json()["error"], reply.text
        assert "Traceback" not in reply.text


def test_app_options_pass_through():
    scaled = build_app(autoscaling={"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2})
    config = scaled._bound_deployment._deployment_config
    assert (config.autoscaling_config.max_replicas, config.max_ongoing_requests) == (3, 8)
    fixed = build_app(replicas=2, replica_cpus=0.5, replica_gpus=1, max_ongoing_requests=4)
    assert fixed._bound_deployment.num_replicas == 2
    assert fixed._bound_deployment.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 1}
    with pytest.raises(ValueError, match="max_replicas"):
        build_app(autoscaling={"min_replicas": 2, "max_replicas": 1})


def test_a_pool_that_cannot_fit_is_refused_on_a_local_ray(local_ray, caplog):
    from igr_sdk import InputError
    from igr_sdk.scale import _ray

    _ray.check_fits("the restore actors", 2, 0.5, 0.0, 0.25, local=True)
    with pytest.raises(InputError, match=r"need 3.25 CPUs \(3 x 1 \+ 0.25 for reading\) and 3 GPUs"):
        _ray.check_fits("the restore actors", 3, 1.0, 1.0, 0.25, local=True)
    _ray.check_fits("the replicas", 3, 1.0, 0.0, 0.0, local=False)
    assert "waiting for the cluster to grow" in caplog.text
