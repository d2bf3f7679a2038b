"""The synthetic pair generator: determinism, content and the planted defects."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.synthetic import CATEGORIES, DEFECTS, GARMENT_TYPES, Pair, generate, main, make_pair, pair_seed

REPO = Path(__file__).resolve().parents[1]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _clean(i: int, seed: int = 0, **kw) -> Pair:
    return make_pair(pair_seed(seed, i), category=CATEGORIES[i % 3], hard_rate=0.0, **kw)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b = (generate(tmp_path / d, 6, seed=3) for d in ("a", "b"))
    generate(tmp_path / "c", 6, seed=4)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert fa == fb
    assert len(fa) == 3 * 6 + 2  # person, garment, mask per pair + pairs.txt + metadata.jsonl
    for i in range(6):
        for key in (f"image/{i:05d}_00.jpg", f"cloth/{i:05d}_00.jpg"):
            assert fa[key] != fc[key], key


def test_pair_does_not_depend_on_count(tmp_path):
    generate(tmp_path / "few", 2, seed=9)
    generate(tmp_path / "many", 5, seed=9)
    few, many = _files(tmp_path / "few"), _files(tmp_path / "many")
    for key in few:
        if key.startswith(("image/", "cloth/", "agnostic-mask/")):
            assert few[key] == many[key], key
    assert (
        (tmp_path / "many" / "metadata.jsonl").read_text().startswith((tmp_path / "few" / "metadata.jsonl").read_text())
    )


def test_layout_and_metadata(tmp_path):
    records = generate(tmp_path, 4, seed=1, size=(128, 96), hard_rate=0.5)
    lines = (tmp_path / "pairs.txt").read_text().splitlines()
    assert lines == [f"{i:05d}_00.jpg {i:05d}_00.jpg" for i in range(4)]
    meta = [json.loads(ln) for ln in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert meta == json.loads(json.dumps(records))
    for i, rec in enumerate(meta):
        assert rec["name"] == f"{i:05d}_00" and rec["seed"] == 1 and rec["index"] == i
        assert rec["category"] == CATEGORIES[i % 3]
        assert rec["garment_type"] in GARMENT_TYPES[rec["category"]]
        assert set(rec["flags"]) <= set(DEFECTS) and len(rec["flags"]) <= 1
        with Image.open(tmp_path / "image" / f"{rec['name']}.jpg") as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (96, 128))
        with Image.open(tmp_path / "agnostic-mask" / f"{rec['name']}_mask.png") as im:
            assert (im.mode, im.size) == ("L", (96, 128))
            assert set(np.unique(np.asarray(im))) <= {0, 255}


def test_in_memory_pair_is_deterministic_and_well_typed():
    p, q = make_pair(pair_seed(5, 2)), make_pair(pair_seed(5, 2))
    for a, b in ((p.person, q.person), (p.mask, q.mask), (p.garment, q.garment)):
        assert np.array_equal(a, b)
    assert (p.category, p.flags, p.meta) == (q.category, q.flags, q.meta)
    assert p.person.shape == (256, 192, 3) and p.person.dtype == np.uint8
    assert p.mask.shape == (256, 192) and p.mask.dtype == bool
    assert p.garment.shape == (256, 192, 3) and p.garment.dtype == np.uint8
    assert make_pair(7, (96, 64)).person.shape == (96, 64, 3)  # an int seed works too


def test_categories_all_appear_and_garment_types_vary():
    pairs = [_clean(i) for i in range(12)]
    assert {p.category for p in pairs} == set(CATEGORIES)
    assert len({p.meta["garment_type"] for p in pairs}) >= 5
    assert len({p.meta["texture"] for p in pairs}) >= 4
    assert len({p.meta["background"] for p in pairs}) >= 3


def test_mask_is_the_garment_on_the_person():
    closer = 0
    for i in range(12):
        p = _clean(i)
        assert p.flags == ()
        # framed around the garment (the default, as in VITON-HD) it is a large share of the photo
        assert 0.08 < p.mask.mean() < 0.7, p.meta["garment_type"]
        assert 0.02 < _clean(i, framing="figure").mask.mean() < 0.3, p.meta["garment_type"]
        # the masked person pixels carry the garment's colours (shaded), unlike the rest of the image
        flat = p.garment[(p.garment < 235).any(-1)].astype(float).mean(0)
        worn = p.person[p.mask].astype(float).mean(0)
        rest = p.person[~p.mask].astype(float).mean(0)
        assert np.linalg.norm(worn - flat) < 45, (i, worn, flat)
        closer += np.linalg.norm(worn - flat) < np.linalg.norm(rest - flat)
        # a clean pair's garment lies inside the frame, away from the border
        assert not (p.mask[0].any() or p.mask[-1].any() or p.mask[:, 0].any() or p.mask[:, -1].any())
    assert closer >= 10


def test_ground_truth_is_centred_on_white():
    for i in range(6):
        g = _clean(i).garment
        h, w = g.shape[:2]
        for edge in (g[0], g[-1], g[:, 0], g[:, -1]):
            assert (edge == 255).all()
        fg = (g < 235).any(-1)
        assert 0.15 < fg.mean() < 0.8
        ys, xs = np.nonzero(fg)
        assert abs(ys.mean() - h / 2) < 0.12 * h and abs(xs.mean() - w / 2) < 0.12 * w
        assert (g[fg].max(axis=-1) <= 220).mean() > 0.99  # garment colours never fade into the white


def test_planted_defects_are_flagged_and_real():
    for d in DEFECTS:
        for i in range(3):
            p = make_pair(pair_seed(1, i), category=CATEGORIES[i], defect=d)
            assert p.flags == (d,)
            border = int(p.mask[0].sum() + p.mask[-1].sum() + p.mask[:, 0].sum() + p.mask[:, -1].sum())
            if d == "truncation":
                assert p.meta["cut_side"] in ("left", "right", "top", "bottom") and border > 10
            else:
                assert border == 0
            if d == "occlusion":
                assert p.meta["occluder"] in ("arm", "hair", "bag") and p.meta["occluded_fraction"] > 0.05
            if d == "side_view":
                assert 0.3 <= p.meta["pose"]["squeeze"] <= 0.42
            if d == "extreme_proportion":
                assert p.meta["proportion"] in ("tiny", "huge")


def test_hard_rate_extremes():
    assert all(make_pair(pair_seed(2, i), hard_rate=0.0).flags == () for i in range(8))
    assert all(len(make_pair(pair_seed(2, i), hard_rate=1.0).flags) == 1 for i in range(8))


def test_bad_arguments_are_refused_with_the_value(tmp_path):
    with pytest.raises(ValueError, match="10x10"):
        make_pair(0, (10, 10))
    with pytest.raises(ValueError, match="'hat'"):
        make_pair(0, category="hat")
    with pytest.raises(ValueError, match="'blur'"):
        make_pair(0, defect="blur")
    with pytest.raises(ValueError, match="-1"):
        generate(tmp_path, -1, seed=0)
    with pytest.raises(ValueError, match="-3"):
        pair_seed(-3, 0)


def test_cli_and_speed(tmp_path, capsys):
    t0 = time.perf_counter()
    assert (
        main(["--out", str(tmp_path), "--count", "20", "--seed", "4", "--size", "256x192", "--hard-rate", "0.3"]) == 0
    )
    per_pair = (time.perf_counter() - t0) / 20
    assert per_pair < 0.1  # ~8 ms here; a generous bound for a busy machine
    assert "20 pairs" in capsys.readouterr().out
    assert len(list((tmp_path / "image").glob("*.jpg"))) == 20
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--count", "1", "--size", "256by192"])


def test_module_runs_as_a_script_without_torch(tmp_path):
    script = REPO / "train" / "synthetic.py"
    cmd = [sys.executable, str(script), "--out", str(tmp_path / "d"), "--count", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d" / "pairs.txt").read_text().count("\n") == 2
    code = "import sys, train.synthetic, train.datasets; print('torch' in sys.modules)"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert probe.stdout.strip() == "False", probe.stderr


def test_garment_framing_fills_the_frame_and_figure_framing_shows_the_figure():
    fractions = {f: [_clean(i, framing=f).mask.mean() for i in range(9)] for f in ("garment", "figure")}
    assert np.mean(fractions["garment"]) > 2 * np.mean(fractions["figure"]), fractions
    for i in range(9):
        p = _clean(i)
        ys, xs = np.nonzero(p.mask)
        h, w = p.mask.shape
        # the garment's box spans most of the frame's tighter side and stays inside the frame
        assert max((ys.max() - ys.min() + 1) / h, (xs.max() - xs.min() + 1) / w) > 0.5, p.meta
        assert p.meta["framing"] == "garment"
    with pytest.raises(ValueError, match="unknown framing 'wide'"):
        _clean(0, framing="wide")
