"""igr_sdk.scale without a running Ray: imports, catalogue planning, resume bookkeeping, row reading,
request parsing, command-line and benchmark arguments."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from igr_sdk import InputError
from igr_sdk.scale import _catalogue as cat
from igr_sdk.scale._catalogue import CatalogueError, compact, done_hashes, plan

CATS = ("upper", "lower", "full")


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_the_sdk_and_scale_never_imports_ray():
    code = (
        "import sys, igr_sdk, igr_sdk.scale\n"
        "from igr_sdk.scale import restore_catalogue, BatchSummary\n"
        "from igr_sdk.scale import _catalogue, _images, _work, _cli\n"
        "loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not loaded, loaded\n"
    )
    r = _run_python(code)
    assert r.returncode == 0, r.stderr


def test_without_ray_the_error_says_what_to_install(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['ray'] = None\n"
        "import igr_sdk.scale as s\n"
        "for call in (lambda: s.build_app, lambda: s.restore_catalogue('x', 'y')):\n"
        "    try:\n"
        "        call()\n"
        "    except ImportError as e:\n"
        "        assert \"pip install 'igr-sdk[ray]'\" in str(e), e\n"
        "    else:\n"
        "        raise SystemExit('no ImportError')\n"
    )
    r = _run_python(code)
    assert r.returncode == 0, r.stderr


def test_layout_labels_match_the_training_readers():
    datasets = pytest.importorskip("train.datasets")
    assert cat.LIP_LABELS == datasets.LIP_LABELS
    assert cat.DRESSCODE_LABELS == datasets.DRESSCODE_LABELS
    assert cat.DRESSCODE_DIRS == datasets.DRESSCODE_DIRS


def _touch_image(path: Path, mode: str = "RGB", size=(48, 64), value=128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def test_plan_viton_hd_layout(tmp_path):
    split = tmp_path / "test"
    for stem in ("a", "b", "c"):
        _touch_image(split / "image" / f"{stem}.jpg")
    _touch_image(split / "cloth" / "a.jpg")
    _touch_image(split / "agnostic-mask" / "a_mask.png", "L")
    _touch_image(split / "image-parse-v3" / "b.png", "L")
    (split / "metadata.jsonl").write_text(json.dumps({"name": "b", "category": "lower"}) + "\nnot json\n")
    p = plan(tmp_path, CATS, category=None, seed=7)
    assert p.layout == "viton-hd"
    rows = {r.input: r for r in p.rows}
    assert set(rows) == {"test/image/a.jpg", "test/image/b.jpg"}
    a, b = rows["test/image/a.jpg"], rows["test/image/b.jpg"]
    assert (a.category, a.mask_input, a.mask_labels, a.seed, a.output) == (
        "upper",
        "test/agnostic-mask/a_mask.png",
        (),
        7,
        "test/image/a.png",
    )
    assert (b.category, b.mask_labels) == ("lower", cat.LIP_LABELS["lower"])
    [err] = p.errors
    assert err["input"] == "test/image/c.jpg" and "no mask" in err["error"]
    # --category is the default where the layout names none
    assert {r.category for r in plan(split, CATS, category="full").rows} == {"full", "lower"}


def test_plan_dresscode_layout(tmp_path):
    _touch_image(tmp_path / "upper_body" / "images" / "000001_0.jpg")
    _touch_image(tmp_path / "upper_body" / "images" / "000001_1.jpg")  # the garment, not a person
    _touch_image(tmp_path / "upper_body" / "masks" / "000001_0.png", "L")
    _touch_image(tmp_path / "lower_body" / "images" / "000002_0.jpg")
    _touch_image(tmp_path / "lower_body" / "label_maps" / "000002_4.png", "L")
    p = plan(tmp_path, CATS)
    assert p.layout == "dresscode" and not p.errors
    assert [(r.input, r.category, r.mask_labels) for r in p.rows] == [
        ("upper_body/images/000001_0.jpg", "upper", ()),
        ("lower_body/images/000002_0.jpg", "lower", cat.DRESSCODE_LABELS["lower"]),
    ]
    assert [r.category for r in plan(tmp_path, CATS, category="lower").rows] == ["lower"]


def test_plan_lists(tmp_path):
    lines = [
        {"person": "p/a.jpg", "mask": "p/a_mask.png", "category": "lower", "seed": 3},
        {"person": "p/b.jpg"},
        {"person": "../outside.jpg"},
        {"person": "/abs/c.jpg"},
        {"person": "p/d.jpg", "seed": "x"},
        {"person": "p/e.jpg", "category": "hat"},
        {"person": "p/a.jpg", "category": "upper"},  # same output as the first row
        {"person": "p/a.jpg", "category": "upper", "output": "a_upper.png"},
        {"person": "p/f.jpg", "output": "../f.png"},
        ["not", "an", "object"],
    ]
    listing = tmp_path / "list.jsonl"
    listing.write_text("".join(json.dumps(x) + "\n" for x in lines) + "{broken\n")
    p = plan(listing, CATS, category="full", seed=11)
    assert [(r.index, r.input, r.category, r.seed, r.output) for r in p.rows] == [
        (0, "p/a.jpg", "lower", 3, "p/a.png"),
        (1, "p/b.jpg", "full", 11, "p/b.png"),
        (7, "p/a.jpg", "upper", 11, "a_upper.png"),
    ]
    assert p.rows[0].person == str(tmp_path / "p" / "a.jpg") and p.rows[1].mask == ""
    errors = {e["row"]: e["error"] for e in p.errors}
    assert sorted(errors) == [2, 3, 4, 5, 6, 8, 9, 10]
    assert "stay inside" in errors[2] and "stay inside" in errors[3] and "seed" in errors[4]
    assert "category" in errors[5] and "also the output of row 0" in errors[6] and "JSON" in errors[10]

    csv_list = tmp_path / "list.csv"
    csv_list.write_text("person,mask,seed,sku\np/a.jpg,p/a_mask.png,5,123\np/b.jpg,,,456\n")
    p = plan(csv_list, CATS)
    assert [(r.input, r.mask_input, r.seed, r.category) for r in p.rows] == [
        ("p/a.jpg", "p/a_mask.png", 5, "upper"),
        ("p/b.jpg", "", 0, "upper"),
    ]
    array = tmp_path / "list.json"
    array.write_text(json.dumps([{"person": "p/a.jpg", "mask": "p/a_mask.png", "name": "extra keys are ignored"}]))
    assert [r.input for r in plan(array, CATS).rows] == ["p/a.jpg"]
    (tmp_path / "nocol.csv").write_text("photo\nx.jpg\n")
    with pytest.raises(CatalogueError, match="person"):
        plan(tmp_path / "nocol.csv", CATS)
    for bad in (tmp_path / "missing.csv", tmp_path / "list.txt", tmp_path / "empty_dir"):
        if bad.suffix == ".txt":
            bad.write_text("x")
        if bad.name == "empty_dir":
            bad.mkdir()
        with pytest.raises(CatalogueError, match="expected"):
            plan(bad, CATS)
    with pytest.raises(CatalogueError, match="category"):
        plan(csv_list, CATS, category="hat")


def test_done_hashes_and_compact(tmp_path):
    results = tmp_path / "results.jsonl"
    recs = [
        {"row": 0, "output": "a.png", "input_hash": "h1", "error": None},
        {"row": 1, "output": "b.png", "input_hash": "h2", "error": "bad"},
        {"row": 2, "input": "x", "error": "unplanned"},
        {"row": 0, "output": "a.png", "input_hash": "h3", "error": None},
    ]
    results.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"cut short')
    assert done_hashes(results) == {"a.png": "h3"}
    assert compact(results) == 3
    kept = [json.loads(x) for x in results.read_text().splitlines()]
    assert [(r["row"], r.get("input_hash")) for r in kept] == [(1, "h2"), (2, None), (0, "h3")]
    assert done_hashes(tmp_path / "none.jsonl") == {}


# --- reading one row (the Ray Data read stage, called directly) -------------------------------------
def _opts(out_dir: Path):
    from igr_sdk.scale._batch import _ReadOptions

    return _ReadOptions(str(out_dir), "engines", 2, 1.5, (256, 192), 8, 1 << 20, 10_000_000)


def _item(row) -> dict:
    from dataclasses import asdict

    return {"row": json.dumps(asdict(row)), "done": ""}


def test_read_row_decodes_hashes_and_skips_what_is_done(tmp_path):
    from igr_sdk.scale._batch import read_row

    person = np.zeros((64, 48, 3), np.uint8)
    person[16:48, 12:36] = (200, 30, 30)
    Image.fromarray(person).save(tmp_path / "p.png")
    mask = np.zeros((64, 48), np.uint8)
    mask[16:48, 12:36] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    labels = np.where(mask > 0, 9, 0).astype(np.uint8)
    Image.fromarray(labels).save(tmp_path / "labels.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    opts = _opts(out)

    row = cat.Row(0, "p.png", str(tmp_path / "p.png"), "upper", 1, "p.png", str(tmp_path / "m.png"), "m.png")
    [got] = read_row(_item(row), opts)
    rec = json.loads(got["record"])
    assert "error" not in rec and len(rec["input_hash"]) == 64
    np.testing.assert_array_equal(got["person"], person)
    np.testing.assert_array_equal(got["mask"], mask > 0)

    # a label map selects the category's labels; a different input hashes differently
    lrow = cat.Row(1, "p.png", row.person, "lower", 1, "p.png", str(tmp_path / "labels.png"), "labels.png", (9, 12))
    [lgot] = read_row(_item(lrow), opts)
    np.testing.assert_array_equal(lgot["mask"], mask > 0)
    assert json.loads(lgot["record"])["input_hash"] != rec["input_hash"]

    # done before: skipped only while the output exists and the hash matches
    done = {**_item(row), "done": rec["input_hash"]}
    assert len(read_row(done, opts)) == 1
    (out / "p.png").parent.mkdir(parents=True)
    (out / "p.png").write_bytes(b"png")
    assert read_row(done, opts) == []
    assert len(read_row({**done, "done": "0" * 64}, opts)) == 1

    for person_path, mask_path, word in (
        (tmp_path / "bad.png", row.mask, "not a readable image"),
        (tmp_path / "missing.png", row.mask, "does not exist"),
        (row.person, "", "no mask"),
    ):
        bad = cat.Row(2, "x", str(person_path), "upper", 0, "x.png", str(mask_path) if mask_path else "", "")
        [failed] = read_row(_item(bad), opts)
        assert word in json.loads(failed["record"])["error"]

    small = dataclasses.replace(opts, max_file_bytes=100)
    [failed] = read_row(_item(row), small)
    assert json.loads(failed["record"])["error_type"] == "TooLargeError"


def test_restore_items_isolates_the_failing_row():
    from igr_sdk.scale._work import Item, restore_items

    class FakeRestorer:
        def __init__(self):
            self.calls: list[int] = []

        def restore(self, persons, masks, categories, steps, guidance_scale, seed):
            self.calls.append(len(persons))
            if 13 in seed:
                raise InputError("seed 13 is unlucky")
            from igr_sdk import RestoreResult

            return RestoreResult(tuple(Image.new("RGB", (4, 4)) for _ in persons), {"total": 1.0}, tuple(seed))

    items = [Item(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool), "upper", s) for s in (1, 13, 2)]
    fake = FakeRestorer()
    out = restore_items(fake, items, steps=2, guidance_scale=1.5)
    assert fake.calls == [3, 1, 1, 1]
    assert [o.error is None for o in out] == [True, False, True]
    assert "unlucky" in str(out[1].error) and out[0].timings == {"total": 1.0, "batch": 1}


# --- HTTP request options ---------------------------------------------------------------------------
def test_request_options_are_checked():
    pytest.importorskip("starlette")
    from igr_sdk.scale._http import Limits, TooLargeError, parse_options, status_for

    defaults = {"category": "upper", "steps": 25, "guidance": 1.5}
    limits = Limits(max_steps=30)
    cat_, seed, steps, guidance = parse_options({}, defaults, limits)
    assert (cat_, steps, guidance) == ("upper", 25, 1.5) and 0 <= seed < 2**63
    assert parse_options({"category": "full", "seed": "9", "steps": b"3", "guidance": "2"}, defaults, limits) == (
        "full",
        9,
        3,
        2.0,
    )
    for fields, word in (
        ({"seed": "-1"}, "seed"),
        ({"seed": "1" * 30}, "seed"),
        ({"seed": "²"}, "seed"),
        ({"steps": "31"}, "steps"),
        ({"steps": "0"}, "steps"),
        ({"guidance": "inf"}, "guidance"),
        ({"guidance": "abc"}, "guidance"),
        ({"category": b"\xff\xfe"}, "category"),
    ):
        with pytest.raises(InputError, match=word):
            parse_options(fields, defaults, limits)
    assert status_for(TooLargeError("x")) == 413 and status_for(InputError("x")) == 400
    assert status_for(RuntimeError("x")) == 422


# --- command lines ----------------------------------------------------------------------------------
def test_command_line_arguments():
    from igr_sdk.scale._cli import batch_parser, serve_parser

    a = batch_parser().parse_args(["--input", "in.csv", "--out", "o", "--actors", "2", "--actor-cpus", "0.5"])
    assert (a.actors, a.actor_cpus, a.actor_gpus, a.steps, a.address) == (2, 0.5, None, 25, None)
    s = serve_parser().parse_args(["--autoscaling", '{"min_replicas": 1, "max_replicas": 3}', "--port", "9000"])
    assert s.autoscaling == {"min_replicas": 1, "max_replicas": 3} and s.host == "127.0.0.1"
    for parser, argv in (
        (batch_parser(), ["--out", "o"]),
        (batch_parser(), ["--input", "i", "--out", "o", "--actors", "0"]),
        (batch_parser(), ["--input", "i", "--out", "o", "--actor-gpus", "-1"]),
        (serve_parser(), ["--autoscaling", "[1]"]),
        (serve_parser(), ["--replicas", "x"]),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_batch_command_reports_a_bad_catalogue(tmp_path, capsys):
    from igr_sdk.scale._cli import batch_main

    pytest.importorskip("ray.data")
    assert batch_main(["--input", str(tmp_path / "nothing.csv"), "--out", str(tmp_path / "o"), "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_throughput_benchmark_arguments(tmp_path):
    from benchmarks import throughput as tp

    a = tp.parse_args([])
    assert (a.images, a.requests, a.actors, a.clients, a.systems) == (32, 32, [1, 2], 8, list(tp.SYSTEMS))
    a = tp.parse_args(["--images", "4", "--actors", "1,3", "--systems", "inprocess,serve", "--requests", "9"])
    assert (a.actors, a.systems, a.requests) == ([1, 3], ["inprocess", "serve"], 9)
    for argv in (["--images", "0"], ["--actors", "0,1"], ["--actors", "a"], ["--systems", "gpu"], ["--clients", "0"]):
        with pytest.raises(SystemExit):
            tp.parse_args(argv)
    # its catalogue is one the batch job can plan, and the table renders
    listing = tp.write_catalogue(tmp_path / "cat", 5)
    p = plan(listing, CATS)
    assert len(p.rows) == 5 and not p.errors and len({r.output for r in p.rows}) == 5
    results = {
        "inprocess": {"images": 4, "images_per_s": 2.0},
        "data_1": {"images": 4, "images_per_s": 1.0, "actors": 1},
    }
    tp.add_overhead(results)
    assert results["data_1"]["ray_overhead"] == 2.0
    assert "| data_1 | 4 | 1.000 |" in tp.markdown(results, {})
