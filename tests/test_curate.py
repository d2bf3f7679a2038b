"""Curation: the tool finds the defects the generator planted, and manual keep/drop lists win."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train.curate import (
    DROP_REASONS,
    CurationConfig,
    curate,
    main,
    measure,
    read_keep_drop,
)
from train.datasets import VitonHDDataset, read_name_list
from train.synthetic import generate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """40 synthetic pairs, half of them with a planted defect; returns (root, {defect: names})."""
    root = tmp_path_factory.mktemp("curate") / "syn"
    records = generate(root, 40, seed=1, hard_rate=0.5)
    by_flag: dict[str, set[str]] = {"clean": set()}
    for r in records:
        by_flag.setdefault(r["flags"][0] if r["flags"] else "clean", set()).add(r["name"])
    # the seed is chosen so that every kind of defect is there more than once
    assert all(
        len(by_flag.get(k, ())) >= 2 for k in ("occlusion", "truncation", "side_view", "extreme_proportion", "clean")
    ), by_flag
    return root, by_flag


def _flagged(report, flag: str) -> set[str]:
    return {d.name for d in report.decisions if flag in d.flags}


def test_planted_defects_are_detected_with_metadata(planted):
    root, by = planted
    report = curate(root)
    assert report.counts["total"] == 40 and report.counts["problems"] == 0
    assert set(report.dropped["truncation"]) == by["truncation"]
    assert set(report.dropped["side_view"]) == by["side_view"]
    assert set(report.dropped["occlusion"]) == by["occlusion"]
    assert set(report.resize_and_pad) == by["extreme_proportion"]
    assert set(report.kept) == by["clean"] | by["extreme_proportion"]
    assert report.counts["kept"] + report.counts["dropped"] == 40
    assert report.counts["dropped"] == len(by["truncation"] | by["side_view"] | by["occlusion"])
    assert report.flag_counts["truncation"] == len(by["truncation"])
    assert report.flag_counts["coverage"] == 0 and report.flag_counts["unreadable"] == 0
    # clean pairs get no flag at all
    assert all(d.flags == () and d.action == "keep" for d in report.decisions if d.name in by["clean"])
    assert list(report.kept) == sorted(report.kept)  # data set order


def test_heuristics_alone_find_truncation_and_side_view(planted):
    """Without metadata, the flags come from the masks and garment images only."""
    root, by = planted
    report = curate(root, CurationConfig(use_metadata=False))
    assert _flagged(report, "truncation") == by["truncation"]
    assert _flagged(report, "side_view") == by["side_view"]
    assert _flagged(report, "occlusion") == set()  # metadata-only flag
    # every planted extreme framing is found; extra hits may only be pairs that are defective anyway
    extreme = _flagged(report, "extreme_proportion")
    assert by["extreme_proportion"] <= extreme
    assert extreme - by["extreme_proportion"] <= by["truncation"] | by["side_view"]
    assert set(report.dropped["truncation"]) == by["truncation"]
    assert set(report.dropped["side_view"]) == by["side_view"]
    assert set(report.kept) == by["clean"] | by["extreme_proportion"] | by["occlusion"]
    assert report.flag_counts["side_view"] == len(by["side_view"])


def test_manual_list_overrides(planted, tmp_path, caplog):
    root, by = planted
    trunc, clean = sorted(by["truncation"])[0], sorted(by["clean"])[0]
    extreme = sorted(by["extreme_proportion"])[0]
    lst = tmp_path / "manual.txt"
    lst.write_text(
        f"# reviewed by hand\nkeep {trunc}.jpg   # the cut is only a sleeve tip\n"
        f"drop {clean}\n\nkeep {extreme}\nkeep 99999_00\n"
    )
    with caplog.at_level(logging.WARNING, logger="train.curate"):
        report = curate(root, manual=lst)
    assert trunc in report.kept and trunc not in report.dropped["truncation"]
    assert report.dropped["manual"] == (clean,) and clean not in report.kept
    assert extreme in report.resize_and_pad  # a manual keep still gets resized
    assert report.unknown_manual == ("99999_00",) and "99999_00" in caplog.text
    assert report.counts["manual_keep"] == 2 and report.counts["manual_drop"] == 1
    decision = {d.name: d for d in report.decisions}[trunc]
    assert decision.flags == ("truncation",) and decision.manual == "keep" and decision.action == "keep"
    assert "manual" in report.table()


def test_keep_drop_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("keep a\nmaybe b\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2.*'maybe b'"):
        read_keep_drop(bad)
    bad.write_text("keep a\ndrop a.png\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2.*'a' is both kept and dropped"):
        read_keep_drop(bad)
    bad.write_text("KEEP a\n\ndrop b # why\n")
    assert read_keep_drop(bad) == {"a": "keep", "b": "drop"}


def test_unreadable_pair_is_dropped_and_logged(planted, tmp_path, caplog):
    root, by = planted
    ds = VitonHDDataset(root)
    name = sorted(by["clean"])[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    entries = list(ds.entries)
    i = ds.index_of(name)
    entries[i] = dataclasses.replace(entries[i], garment=broken)
    ds.entries = tuple(entries)
    with caplog.at_level(logging.WARNING, logger="train.curate"):
        report = curate(ds, manual={name: "keep"})
    assert report.dropped["unreadable"] == (name,)
    assert str(broken) in caplog.text


def test_measure_values():
    mask = np.zeros((100, 80), bool)
    mask[0:10, 30:50] = True  # 20 pixels on the top row
    garment = np.full((100, 80, 3), 255, np.uint8)
    garment[20:80, 20:60] = (30, 60, 90)  # 40 wide, 60 tall
    m = measure(mask, garment)
    assert m.border_pixels == 20
    assert m.coverage == pytest.approx(200 / 8000)
    assert m.extent == pytest.approx(max(10 / 100, 20 / 80))
    assert m.worn_aspect == pytest.approx(2.0) and m.flat_aspect == pytest.approx(40 / 60)
    empty = measure(np.zeros((10, 10), bool), np.full((10, 10, 3), 255, np.uint8))
    assert (empty.coverage, empty.extent, empty.flat_aspect) == (0.0, 0.0, 0.0)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="min_coverage=0.5, max_coverage=0.1"):
        CurationConfig(min_coverage=0.5, max_coverage=0.1)
    with pytest.raises(ValueError, match="border_px must be >= 0, got -1"):
        CurationConfig(border_px=-1)


def test_cli_writes_the_list_and_table(planted, tmp_path, capsys):
    root, by = planted
    out, resize = tmp_path / "lists" / "hqft.txt", tmp_path / "resize.txt"
    assert main(["--data", str(root), "--out", str(out), "--resize-list", str(resize)]) == 0
    printed = capsys.readouterr().out
    kept = read_name_list(out)
    assert set(kept) == by["clean"] | by["extreme_proportion"]
    assert set(read_name_list(resize)) == by["extreme_proportion"]
    assert f"kept {len(kept)}" in printed and "truncation" in printed
    assert VitonHDDataset(root, names=kept).names == tuple(kept)  # the list feeds the fine stage
    assert main(["--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_runs_as_a_script(planted, tmp_path):
    root, by = planted
    meta = [json.loads(ln) for ln in (root / "metadata.jsonl").read_text().splitlines()]
    out = tmp_path / "list.txt"
    cmd = [
        sys.executable,
        str(REPO / "train" / "curate.py"),
        "--data",
        str(root),
        "--out",
        str(out),
        "--no-metadata",
        "--keep-occluded",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    assert len(read_name_list(out)) == len(meta) - len(by["truncation"] | by["side_view"])


def test_drop_reasons_are_complete_in_report(planted):
    report = curate(planted[0])
    assert tuple(report.dropped) == DROP_REASONS
