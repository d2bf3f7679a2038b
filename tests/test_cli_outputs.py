"""igr-restore's files: bundled examples are hashed and confined, outputs are checked before inference,
never overwrite an input, and are written atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.build import BuildError, register_examples
from igr_sdk import EngineError
from igr_sdk._cli import main as cli_main
from igr_sdk._examples import read_examples
from igr_sdk._manifest import read_manifest, sha256_file
from igr_sdk._outputs import write_image
from igr_sdk._restorer import Restorer


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def files(tmp_path, person_and_mask):
    person, mask = person_and_mask
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(person).save(d / "p.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(d / "m.png")
    return d / "p.png", d / "m.png"


@pytest.fixture
def no_inference(monkeypatch):
    """Loading engines fails the test: the refusals below must come before any of it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the engines were loaded before the output paths were checked")

    monkeypatch.setattr(Restorer, "from_dir", classmethod(refuse))


def _run(engines, person, mask, out, *extra) -> int:
    args = [str(person), "--mask", str(mask), "--engines", str(engines), "--out", str(out), "--steps", "1", "-q"]
    return cli_main([*args, "--backend", "onnxruntime", *extra])


def _one_line_error(capsys, *fragments) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("igr-restore: error: "), err
    for f in fragments:
        assert f in err[0], err[0]
    return err[0]


# --- class 6: output paths checked before inference ----------------------------------------------
def test_out_that_is_an_existing_directory(tiny_engines, files, tmp_path, capsys, no_inference):
    (tmp_path / "x.png").mkdir()
    assert _run(tiny_engines, *files, tmp_path / "x.png") == 2
    _one_line_error(capsys, "x.png' is an existing directory", "expected an image file path")


def test_out_under_a_file(tiny_engines, files, tmp_path, capsys, no_inference):
    (tmp_path / "file.txt").write_text("a file")
    assert _run(tiny_engines, *files, tmp_path / "file.txt" / "sub" / "x.png") == 2
    _one_line_error(capsys, "file.txt' is a file, not a folder")


def test_folder_out_that_is_a_file(tiny_engines, files, tmp_path, capsys, no_inference):
    (tmp_path / "results").write_text("a file")
    p, m = files
    args = [str(p), str(p.with_name("q.png")), "--mask", str(m), str(m)]
    rc = cli_main([*args, "--engines", str(tiny_engines), "--out", str(tmp_path / "results"), "-q"])
    assert rc == 2
    _one_line_error(capsys, "results' is a file; expected a folder")


def test_folder_output_that_is_a_directory(tiny_engines, files, tmp_path, capsys, no_inference):
    p, m = files
    (tmp_path / "out" / "p.png").mkdir(parents=True)
    shutil.copy(p, p.with_name("q.png"))
    args = [str(p), str(p.with_name("q.png")), "--mask", str(m), str(m)]
    assert cli_main([*args, "--engines", str(tiny_engines), "--out", str(tmp_path / "out"), "-q"]) == 2
    _one_line_error(capsys, "p.png' is an existing directory")


def test_output_format_that_is_not_written(tiny_engines, files, tmp_path, capsys, no_inference):
    assert _run(tiny_engines, *files, tmp_path / "x.gif") == 2
    _one_line_error(capsys, ".gif is not an output format; expected one of .png, .jpg, .jpeg, .webp")
    assert not (tmp_path / "x.gif").exists()


def test_folder_without_write_permission(tiny_engines, files, tmp_path, capsys, no_inference, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    assert _run(tiny_engines, *files, locked / "x.png") == 2
    _one_line_error(capsys, "no permission to write in", "locked")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_folder(tiny_engines, files, tmp_path, capsys, no_inference):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert _run(tiny_engines, *files, locked / "sub" / "x.png") == 2
    finally:
        locked.chmod(0o700)
    _one_line_error(capsys, "no permission to write in")


def test_read_only_output_file(tiny_engines, files, tmp_path, capsys, no_inference):
    out = tmp_path / "x.png"
    out.write_bytes(b"keep me")
    out.chmod(0o444)
    if os.access(out, os.W_OK):
        pytest.skip("root may write read-only files")
    assert _run(tiny_engines, *files, out) == 2
    _one_line_error(capsys, "x.png' is read-only")


def test_bad_numbers_are_refused_before_the_engines(files, tmp_path, capsys, no_inference):
    for option, value, message in (
        ("--steps", "0", "--steps must be an integer >= 1, got 0"),
        ("--guidance", "nan", "guidance_scale must be a finite number, got nan"),
        ("--guidance", "1e30", "guidance_scale must be between 0 and 50, got 1e+30"),
        ("--seed", "-1", "seed must be a non-negative integer, got -1"),
    ):
        assert _run(tmp_path / "no-engines", *files, tmp_path / "x.png", option, value) == 2
        _one_line_error(capsys, message)


# --- class 7: no input is ever overwritten -------------------------------------------------------
@pytest.mark.parametrize("which", ["person", "mask", "person via ..", "mask via a link", "person via a hard link"])
def test_out_equal_to_an_input_is_refused(tiny_engines, files, tmp_path, capsys, no_inference, which):
    p, m = files
    before = _tree(p.parent)
    out = {
        "person": p,
        "mask": m,
        "person via ..": p.parent / ".." / p.parent.name / p.name,
        "mask via a link": tmp_path / "link.png",
        "person via a hard link": tmp_path / "hard.png",
    }[which]
    if which == "mask via a link":
        out.symlink_to(m)
    if which == "person via a hard link":
        os.link(p, out)
    assert _run(tiny_engines, p, m, out) == 2
    _one_line_error(capsys, "it would be overwritten")
    assert _tree(p.parent) == before


def test_folder_out_holding_the_inputs_is_refused(tiny_engines, files, capsys, no_inference):
    p, m = files
    q = p.with_name("q.png")
    shutil.copy(p, q)
    before = _tree(p.parent)
    args = [str(p), str(q), "--mask", str(m), str(m), "--engines", str(tiny_engines), "--out", str(p.parent)]
    assert cli_main([*args, "-q"]) == 2  # <out>/p.png is the person p.png itself
    _one_line_error(capsys, "p.png' is the input", "would be overwritten")
    assert _tree(p.parent) == before


# --- atomic writes -------------------------------------------------------------------------------
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "x.png"
    out.write_bytes(b"previous result")
    img = Image.new("RGB", (20, 20), "red")

    def fail(self, fp, format=None, **kw):
        fp.write(b"half an image")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(OSError, match="No space left"):
        write_image(img, out)
    assert out.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_a_failed_write_after_inference_is_one_line(tiny_engines, files, tmp_path, capsys, monkeypatch):
    def fail(img, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("igr_sdk._cli.write_image", fail)
    assert _run(tiny_engines, *files, tmp_path / "x.png") == 1
    _one_line_error(capsys, "x.png: No space left on device")


def test_successful_writes_leave_only_the_images(tiny_engines, files, tmp_path):
    p, m = files
    q = p.with_name("q.jpg")
    Image.open(p).save(q)
    out = tmp_path / "out"
    assert cli_main([str(p), str(q), "--mask", str(m), str(m), "--engines", str(tiny_engines), "--out", str(out),
                     "--steps", "1", "-q", "--backend", "onnxruntime"]) == 0  # fmt: skip
    assert sorted(x.name for x in out.iterdir()) == ["p.png", "q.png"]
    assert _run(tiny_engines, p, m, tmp_path / "one.jpg") == 0
    assert Image.open(tmp_path / "one.jpg").format == "JPEG"
    assert oct((tmp_path / "one.jpg").stat().st_mode & 0o777) != oct(0o600)


# --- class 2: bundled examples are hashed, and their names stay inside --out ----------------------
def _with_examples(tiny_engines, root: Path, person_and_mask, listing=None) -> Path:
    d = root / "engines"
    shutil.copytree(tiny_engines, d, ignore=shutil.ignore_patterns("onnx"))
    ex = d / "examples"
    ex.mkdir()
    person, mask = person_and_mask
    Image.fromarray(person).save(ex / "a_person.jpg")
    Image.fromarray(mask.astype(np.uint8) * 255).save(ex / "a_mask.png")
    Image.fromarray(person).save(ex / "a_garment.jpg")
    entry = {"name": "a", "category": "upper", "person": "a_person.jpg", "mask": "a_mask.png"}
    (ex / "examples.json").write_text(json.dumps(listing or [{**entry, "ground_truth": "a_garment.jpg"}]))
    return d


def test_registered_examples_restore_into_the_output_folder(tiny_engines, tmp_path, person_and_mask):
    d = _with_examples(tiny_engines, tmp_path, person_and_mask)
    manifest = register_examples(d)
    assert manifest["examples"]["file"] == "examples/examples.json"
    assert sorted(e["file"] for e in manifest["examples"]["data"]) == [
        "examples/a_garment.jpg",
        "examples/a_mask.png",
        "examples/a_person.jpg",
    ]
    (ex,) = read_examples(read_manifest(d))
    assert (ex.name, ex.category, ex.person.name) == ("a", "upper", "a_person.jpg")
    rc = cli_main(["--examples", "--engines", str(d), "--out", str(tmp_path / "out"), "--steps", "1", "-q"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "sheet.png"]


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "a/b", "..", ".hidden", "", "sheet", 3, None, "x" * 101])
def test_example_names_that_leave_the_output_folder(tiny_engines, tmp_path, person_and_mask, capsys, name):
    entry = {"name": name, "category": "upper", "person": "a_person.jpg", "mask": "a_mask.png"}
    d = _with_examples(tiny_engines, tmp_path, person_and_mask, [entry])
    with pytest.raises(BuildError, match="name"):
        register_examples(d)
    # written by hand, hashes and all: the runtime refuses it as well
    m = json.loads((d / "manifest.json").read_text())
    files = ["examples/examples.json", "examples/a_person.jpg", "examples/a_mask.png"]
    entries = [{"file": f, "sha256": sha256_file(d / f)} for f in files]
    m["examples"] = {**entries[0], "data": entries[1:]}
    (d / "manifest.json").write_text(json.dumps(m))
    before = _tree(tmp_path)
    rc = cli_main(["--examples", "--engines", str(d), "--out", str(tmp_path / "out" / "deep"), "--steps", "1"])
    assert rc == 2
    _one_line_error(capsys, "is not a plain name" if name != "sheet" else "is used twice or reserved")
    assert _tree(tmp_path) == before


def test_examples_must_be_listed_and_unchanged(tiny_engines, tmp_path, person_and_mask, capsys):
    d = _with_examples(tiny_engines, tmp_path, person_and_mask)
    with pytest.raises(EngineError, match="has no bundled examples: its manifest.json lists no examples entry"):
        read_examples(read_manifest(d))
    register_examples(d)
    listing = d / "examples" / "examples.json"
    original = listing.read_text()
    listing.write_text(original.replace('"a"', '"b"'))
    with pytest.raises(EngineError, match="examples file .*examples.json' does not match its manifest hash"):
        read_examples(read_manifest(d))
    listing.write_text(original)
    (d / "examples" / "a_mask.png").write_bytes(b"swapped")
    with pytest.raises(EngineError, match="example file .*a_mask.png' does not match its manifest hash"):
        read_examples(read_manifest(d))
    rc = cli_main(["--examples", "--engines", str(d), "--out", str(tmp_path / "out"), "--steps", "1"])
    assert rc == 2 and not (tmp_path / "out").exists()
    _one_line_error(capsys, "a_mask.png' does not match its manifest hash")


def test_example_file_not_listed_with_a_hash(tiny_engines, tmp_path, person_and_mask):
    d = _with_examples(tiny_engines, tmp_path, person_and_mask)
    register_examples(d)
    m = json.loads((d / "manifest.json").read_text())
    m["examples"]["data"] = [e for e in m["examples"]["data"] if not e["file"].endswith("a_garment.jpg")]
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineError, match="names 'a_garment.jpg', which manifest.json does not list with a hash"):
        read_examples(read_manifest(d))


def test_examples_out_inside_the_engine_directory(tiny_engines, tmp_path, person_and_mask, capsys):
    d = _with_examples(tiny_engines, tmp_path, person_and_mask)
    register_examples(d)
    before = _tree(d)
    rc = cli_main(["--examples", "--engines", str(d), "--out", str(d / "examples"), "--steps", "1"])
    assert rc == 2
    _one_line_error(capsys, "lies inside the engine directory")
    assert _tree(d) == before


def test_rebuild_keeps_the_examples_entry(tiny_engines, tiny_checkpoint, tmp_path, person_and_mask):
    from export.build import BuildOptions, build

    d = _with_examples(tiny_engines, tmp_path, person_and_mask)
    shutil.copytree(tiny_engines / "onnx", d / "onnx")
    registered = register_examples(d)["examples"]
    assert build(BuildOptions(checkpoint=tiny_checkpoint, out=d))["examples"] == registered
    (d / "examples" / "a_person.jpg").write_bytes(b"changed")
    assert "examples" not in build(BuildOptions(checkpoint=tiny_checkpoint, out=d))


def test_bundle_script_writes_hashed_examples(tiny_checkpoint, tmp_path, capsys, bundle_demo):
    """scripts/bundle_demo.py's bundle opens under the manifest validation and its examples verify."""

    from train.synthetic import generate

    generate(tmp_path / "data", 6, seed=0, size=(64, 48), hard_rate=0.0)
    out = tmp_path / "bundle"
    args = [
        "--checkpoint",
        str(tiny_checkpoint),
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(out),
        "--precision",
        "fp32",
    ]
    assert bundle_demo.main(args) == 0
    examples = read_examples(read_manifest(out))
    assert sorted(e.category for e in examples) == ["full", "lower", "upper"]
    listed = {e["file"] for e in read_manifest(out).raw["examples"]["data"]}
    assert listed == {f"examples/{p.name}" for p in (out / "examples").iterdir() if p.name != "examples.json"}
    capsys.readouterr()
    rc = cli_main(["--examples", "--engines", str(out), "--out", str(tmp_path / "sheet"), "--steps", "1", "-q"])
    assert rc == 0, capsys.readouterr().err
