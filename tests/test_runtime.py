"""igr_sdk.Restorer over ONNX Runtime engines: equal to the torch reference, batched, torch-free."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from igr_sdk import EngineError, InputError, Restorer
from igr_sdk._cli import main as cli_main
from train.checkpoint import load_checkpoint
from train.pipeline import ReferencePipeline


@pytest.fixture(scope="module")
def restorer(tiny_engines):
    return Restorer.from_dir(tiny_engines, backend="onnxruntime")


def _pixels(img):
    return np.asarray(img, dtype=np.int16)


def test_restorer_equals_the_torch_reference(restorer, tiny_checkpoint, person_and_mask):
    person, mask = person_and_mask
    got = restorer.restore(person, mask, "full", steps=25, guidance_scale=1.5, seed=4)
    ref = ReferencePipeline(load_checkpoint(tiny_checkpoint)).restore(person, mask, "full", steps=25, seed=4)
    assert got.image.size == ref.images[0].size == (48, 64)
    # fp32 engines vs fp32 torch: at most one 8-bit level apart after 25 steps
    assert np.abs(_pixels(got.image) - _pixels(ref.images[0])).max() <= 1
    assert got.seeds == (4,)
    assert set(got.timings) >= {
        "preprocess",
        "image_encoder",
        "vae_encoder",
        "garmnet",
        "denoiser",
        "vae_decoder",
        "total",
    }
    assert all(v >= 0 for v in got.timings.values())


def test_guidance_and_seed_change_the_result(restorer, person_and_mask):
    person, mask = person_and_mask
    a = restorer.restore(person, mask, steps=3, seed=1)
    assert np.array_equal(_pixels(a.image), _pixels(restorer.restore(person, mask, steps=3, seed=1).image))
    assert not np.array_equal(_pixels(a.image), _pixels(restorer.restore(person, mask, steps=3, seed=2).image))
    g = restorer.restore(person, mask, steps=3, seed=1, guidance_scale=3.0)
    assert not np.array_equal(_pixels(a.image), _pixels(g.image))


def test_batch_of_three_equals_three_single_calls(tiny_engines_b2, person_and_mask):
    person, mask = person_and_mask
    r = Restorer.from_dir(tiny_engines_b2, backend="onnxruntime")
    other = np.ascontiguousarray(person[:, ::-1])  # a different person: mirrored
    persons, masks = [person, other, person], [mask, mask[:, ::-1], mask]
    cats, seeds = ["upper", "lower", "full"], [3, 4, 5]
    steps = []
    batch = r.restore(persons, masks, cats, steps=4, seed=seeds, progress=lambda d, t: steps.append((d, t)))
    assert steps[-1] == (8, 8)  # two engine batches of 4 steps: [0, 1] and [2, padded]
    for i in range(3):
        single = r.restore(persons[i], masks[i], cats[i], steps=4, seed=seeds[i])
        assert np.abs(_pixels(batch.images[i]) - _pixels(single.image)).max() <= 1


def test_runs_where_torch_cannot_be_imported(tiny_engines, tmp_path, person_and_mask):
    person, mask = person_and_mask
    Image.fromarray(person).save(tmp_path / "p.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now raises ImportError
        import igr_sdk
        r = igr_sdk.Restorer.from_dir({str(tiny_engines)!r}, backend="onnxruntime")
        out = r.restore({str(tmp_path / "p.png")!r}, {str(tmp_path / "m.png")!r}, steps=2, seed=0)
        out.image.save({str(tmp_path / "out.png")!r})
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok" and Image.open(tmp_path / "out.png").size == (48, 64)


@pytest.mark.parametrize(
    ("person", "mask", "kwargs", "message"),
    [
        ("ok", "empty", {}, "mask is empty"),
        ("ok", "speck", {}, "covers nothing of the person image once resized"),
        ("tiny", "ok", {}, "1x1 pixels is too small"),
        ("nan", "ok", {}, "NaN or infinite"),
        ("ok", "ok", {"category": "hat"}, "unknown category 'hat'"),
        ("ok", "ok", {"steps": 0}, "steps must be an integer >= 1, got 0"),
        ("ok", "ok", {"guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
        ("ok", "ok", {"seed": -1}, "seed must be a non-negative integer, got -1"),
        ("ok", "wide", {}, "cannot be matched to a person image"),
    ],
)
def test_bad_inputs_are_named(restorer, person_and_mask, person, mask, kwargs, message):
    p, m = person_and_mask
    speck = np.zeros((1200, 900), bool)
    speck[5, 5] = True
    persons = {"ok": p, "tiny": np.zeros((1, 1, 3), np.uint8), "nan": np.full(p.shape, np.nan, np.float32)}
    masks = {"ok": m, "empty": np.zeros_like(m), "speck": speck, "wide": np.ones((50, 200), bool)}
    if mask == "speck":
        persons["ok"] = np.zeros((1200, 900, 3), np.uint8)
    with pytest.raises(InputError, match=message):
        restorer.restore(persons[person], masks[mask], **{"steps": 1, **kwargs})


def test_unreadable_and_truncated_files(restorer, person_and_mask, tmp_path):
    _, mask = person_and_mask
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(InputError, match="junk.jpg"):
        restorer.restore(tmp_path / "junk.jpg", mask, steps=1)
    Image.fromarray(np.full((120, 90, 3), 90, np.uint8)).save(tmp_path / "cut.jpg")
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="cut.jpg"):
        restorer.restore(tmp_path / "cut.jpg", mask, steps=1)


def test_sessions_take_the_requested_threads_and_do_not_spin(tiny_engines, person_and_mask):
    # six graphs run one after another per request: a pool left spinning would hold the next one's cores
    person, mask = person_and_mask
    with Restorer.from_dir(tiny_engines, backend="onnxruntime", threads=2) as two:
        for graph, sess in two.backend._sessions.items():
            opts = sess.get_session_options()
            assert opts.intra_op_num_threads == 2, graph
            assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0", graph
        a = _pixels(two.restore(person, mask, "upper", seed=1, steps=3).image)
    with Restorer.from_dir(tiny_engines, backend="onnxruntime", threads=1) as one:
        b = _pixels(one.restore(person, mask, "upper", seed=1, steps=3).image)
    assert np.abs(a - b).max() <= 1  # the thread count changes summation order, not the result


def test_engine_dir_from_another_version(tiny_engines, tmp_path):
    d = tmp_path / "old"
    shutil.copytree(tiny_engines, d)
    m = json.loads((d / "manifest.json").read_text())
    m["schema"] = "igr-engines/0"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineError, match="has schema 'igr-engines/0'; this igr_sdk reads 'igr-engines/1'"):
        Restorer.from_dir(d)


def test_tampered_engine_file_is_refused_before_loading(tiny_engines, tmp_path):
    d = tmp_path / "tampered"
    shutil.copytree(tiny_engines, d)
    f = d / "denoiser.fp32.onnxruntime-cpu.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="denoiser.fp32.onnxruntime-cpu.onnx' does not match its manifest hash"):
        Restorer.from_dir(d, backend="onnxruntime")


def test_manifest_paths_must_stay_inside_the_directory(tiny_engines, tmp_path):
    d = tmp_path / "escape"
    shutil.copytree(tiny_engines, d)
    m = json.loads((d / "manifest.json").read_text())
    m["graphs"]["vae_decoder"]["engines"]["onnxruntime-cpu"]["file"] = "../../etc/passwd"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineError, match="lies outside the engine directory"):
        Restorer.from_dir(d, backend="onnxruntime")


def test_engine_reporting_other_shapes_than_the_manifest(tiny_engines, tmp_path):
    from igr_sdk._manifest import sha256_file

    d = tmp_path / "shapes"
    shutil.copytree(tiny_engines, d)
    m = json.loads((d / "manifest.json").read_text())
    e = m["graphs"]["garmnet"]["engines"]["onnxruntime-cpu"]
    e["inputs"][1]["dtype"] = "float16"  # a manifest consistent in itself, but not with the engine file
    assert e["sha256"] == sha256_file(d / e["file"])
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineError, match=r"mask: manifest \[1, 1, 8, 6\] float16, engine \[1, 1, 8, 6\] float32"):
        Restorer.from_dir(d, backend="onnxruntime")


def test_cli_writes_images_and_fails_in_one_line(tiny_engines, person_and_mask, tmp_path, capsys):
    person, mask = person_and_mask
    for i in range(2):
        Image.fromarray(person).save(tmp_path / f"p{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"m{i}.png")
    rc = cli_main(
        [
            str(tmp_path / "p0.png"),
            str(tmp_path / "p1.png"),
            "--mask",
            str(tmp_path / "m0.png"),
            str(tmp_path / "m1.png"),
            "--engines",
            str(tiny_engines),
            "--out",
            str(tmp_path / "out"),
            "--steps",
            "2",
            "--category",
            "lower",
            "--backend",
            "onnxruntime",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.png", "p1.png"]
    assert Image.open(tmp_path / "out" / "p0.png").size == (48, 64)
    capsys.readouterr()
    rc = cli_main(
        [
            str(tmp_path / "p0.png"),
            "--mask",
            str(tmp_path / "m0.png"),
            "--engines",
            str(tiny_engines),
            "--out",
            str(tmp_path / "x.png"),
            "--category",
            "shoes",
            "--backend",
            "onnxruntime",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [
        "igr-restore: error: unknown category 'shoes'; expected one of ('upper', 'lower', 'full')"
    ]
    rc = cli_main(
        [
            str(tmp_path / "p0.png"),
            "--mask",
            str(tmp_path / "m0.png"),
            "--engines",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    assert rc == 2 and "engine directory" in capsys.readouterr().err


@pytest.fixture(scope="module")
def v_prediction_build(tiny_checkpoint, tiny_engines, tmp_path_factory):
    """The tiny checkpoint declared a v-prediction model, exported as a rebuild of the tiny engines:
    every graph is kept (same weights) and the manifest is written again from the checkpoint's config."""
    from export.build import BuildOptions, build

    root = tmp_path_factory.mktemp("v_prediction")
    ck, out = root / "ck", root / "engines"
    shutil.copytree(tiny_checkpoint, ck)
    shutil.copytree(tiny_engines, out)
    config = json.loads((ck / "config.json").read_text())
    config["scheduler"]["prediction_type"] = "v_prediction"
    (ck / "config.json").write_text(json.dumps(config))
    build(BuildOptions(checkpoint=ck, out=out))
    return ck, out


def test_v_prediction_restorer_equals_the_torch_reference(v_prediction_build, restorer, person_and_mask):
    ck, engines = v_prediction_build
    assert json.loads((engines / "manifest.json").read_text())["scheduler"]["prediction_type"] == "v_prediction"
    person, mask = person_and_mask
    got = Restorer.from_dir(engines, backend="onnxruntime").restore(person, mask, "full", steps=25, seed=4)
    pipe = ReferencePipeline(load_checkpoint(ck))
    assert pipe.scheduler().config.prediction_type == "v_prediction"
    ref = pipe.restore(person, mask, "full", steps=25, seed=4)
    assert np.abs(_pixels(got.image) - _pixels(ref.images[0])).max() <= 1
    # the same network read as an epsilon model samples something else: the manifest's type is used
    as_eps = restorer.restore(person, mask, "full", steps=25, seed=4)
    assert np.abs(_pixels(got.image) - _pixels(as_eps.image)).mean() > 5


@pytest.mark.parametrize("prediction_type", ["sample", None])
def test_unknown_prediction_type_in_the_manifest(tiny_engines, tmp_path, prediction_type):
    d = tmp_path / "pred"
    shutil.copytree(tiny_engines, d)
    m = json.loads((d / "manifest.json").read_text())
    m["scheduler"]["prediction_type"] = prediction_type
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(
        EngineError, match=rf"manifest scheduler predicts {prediction_type!r}; supported: 'epsilon', 'v_prediction'"
    ):
        Restorer.from_dir(d, backend="onnxruntime")
