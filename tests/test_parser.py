"""Masks from the photo: the parser graph (export/parser.py, igr_sdk._parse), its manifest entry,
label sets, numpy post-processing, restores and the command line without a mask, and the synthetic
label maps the bundled parser learns from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from export.build import BuildError
from export.parser import (
    IGR_CATEGORIES,
    LABEL_SETS,
    ParserError,
    ParserOptions,
    add_parser,
    build_parser,
    resolve_labels,
)
from igr_sdk import EngineError, InputError
from igr_sdk._cli import main as cli_main
from igr_sdk._manifest import read_manifest
from igr_sdk._parse import Parser, clean, components, label_map, preprocess, upsample
from igr_sdk._restorer import Restorer
from train.synthetic import CATEGORIES, GARMENT_PARTS, PARTS, make_pair, pair_seed


def _segformer(folder: Path, labels: tuple[str, ...], size: tuple[int, int], favour: int | None = None) -> Path:
    """A randomly initialised tiny SegFormer saved as a Hugging Face folder; ``favour``: a label the
    classifier picks everywhere (zero weights, one large bias)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16,
    )
    model = SegformerForSemanticSegmentation(config).eval()
    if favour is not None:
        with torch.no_grad():
            model.decode_head.classifier.weight.zero_()
            model.decode_head.classifier.bias.zero_()
            model.decode_head.classifier.bias[favour] = 5.0
    model.save_pretrained(folder)
    h, w = size
    processor = {"size": {"height": h, "width": w}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


@pytest.fixture(scope="module")
def atr_parser(tmp_path_factory):
    """A random tiny SegFormer with the ATR clothes labels, exported alone."""
    folder = _segformer(tmp_path_factory.mktemp("atr") / "segformer", LABEL_SETS["atr"].labels, (96, 64))
    out = tmp_path_factory.mktemp("atr-export")
    return folder, out, build_parser(ParserOptions(folder), out)


@pytest.fixture(scope="module")
def parsing_engines(tmp_path_factory, tiny_engines):
    """The tiny engines plus a parser (this project's labels) that sees an upper garment everywhere."""
    upper = PARTS.index("upper_garment")
    folder = _segformer(tmp_path_factory.mktemp("igr") / "segformer", PARTS, (64, 48), favour=upper)
    d = tmp_path_factory.mktemp("parsing") / "engines"
    shutil.copytree(tiny_engines, d, ignore=shutil.ignore_patterns("onnx"))
    add_parser(d, ParserOptions(folder))
    return d


@pytest.fixture
def person_file(tmp_path, person_and_mask):
    p = tmp_path / "person.jpg"
    Image.fromarray(person_and_mask[0]).save(p)
    return p


# --- export --------------------------------------------------------------------------------------
def test_export_matches_torch_and_records_labels(atr_parser, person_and_mask):
    from transformers import SegformerForSemanticSegmentation

    folder, out, entry = atr_parser
    assert entry["labels"] == list(LABEL_SETS["atr"].labels)
    assert entry["categories"] == {"upper": [4], "lower": [5, 6], "full": [7]}  # Upper-clothes; Skirt, Pants; Dress
    assert entry["inputs"] == [{"name": "image", "shape": [1, 3, 96, 64], "dtype": "float32"}]
    assert entry["outputs"] == [{"name": "logits", "shape": [1, 18, 24, 16], "dtype": "float32"}]
    assert entry["preprocess"] == {"resize": "stretch", "mean": [0.5] * 3, "std": [0.25] * 3}
    assert entry["source"]["labels_from"] == "atr"

    rgb = person_and_mask[0]
    parser = Parser(_manifest(out, entry))
    got = parser.logits(rgb)
    model = SegformerForSemanticSegmentation.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        want = model(pixel_values=torch.from_numpy(preprocess(rgb, 96, 64, [0.5] * 3, [0.25] * 3))).logits[0]
    assert np.abs(got - want.numpy()).max() <= 1e-4 * (1 + np.abs(want.numpy()).max())


def test_an_up_to_date_parser_is_kept(atr_parser):
    folder, out, entry = atr_parser
    before = (out / "parser.onnx").stat().st_mtime_ns
    assert build_parser(ParserOptions(folder), out, entry) is entry
    assert (out / "parser.onnx").stat().st_mtime_ns == before


def _manifest(root: Path, entry: dict):
    from igr_sdk._manifest import Manifest

    return Manifest(root, {"parser": entry})


# --- label sets and mapping files ------------------------------------------------------------------
def _config(labels) -> dict:
    return {"model_type": "segformer", "id2label": {str(i): n for i, n in enumerate(labels)}}


def test_public_label_sets_are_recognised_from_config_json():
    fashn = LABEL_SETS["fashn"].labels
    labels, known = resolve_labels(_config(fashn), 18, None)
    assert labels.source == "fashn" and known.size == (576, 384)
    assert {c: [fashn[i] for i in ids] for c, ids in labels.categories.items()} == {
        "upper": ["top"],
        "lower": ["skirt", "pants"],
        "full": ["dress"],
    }
    lip = LABEL_SETS["lip"].labels
    labels, _ = resolve_labels(_config([n.lower().replace("-", "_") for n in lip]), 20, None)  # spelling may vary
    assert [lip[i] for i in labels.categories["full"]] == ["Dress", "Jumpsuits"]


def test_mapping_file_names_labels_by_name_or_id(tmp_path):
    mapping = tmp_path / "map.json"
    mapping.write_text(
        json.dumps(
            {
                "labels": ["bg", "shirt", "trousers", "gown"],
                "categories": {"upper": ["shirt"], "lower": [2], "full": ["gown", 1]},
            }
        )
    )
    labels, known = resolve_labels({"model_type": "segformer"}, 4, mapping)
    assert known is None and labels.categories == {"upper": [1], "lower": [2], "full": [3, 1]}


@pytest.mark.parametrize(
    "config, n, choice, message",
    [
        (_config(["a", "b"]), 2, None, "match no known parser"),
        (_config([f"LABEL_{i}" for i in range(18)]), 18, None, "names none of its 18 labels"),
        (_config(LABEL_SETS["atr"].labels), 18, "fashn", "are not the 'fashn' labels"),
        (_config(LABEL_SETS["atr"].labels), 18, "nonexistent.json", "is not a mapping file"),
        (_config(LABEL_SETS["igr"].labels), 9, None, "has 9 output labels"),
    ],
)
def test_labels_that_cannot_be_mapped_are_named(config, n, choice, message):
    with pytest.raises(ParserError, match=message):
        resolve_labels(config, n, choice)


def test_unlabelled_config_with_a_named_label_set():
    labels, known = resolve_labels(_config([f"LABEL_{i}" for i in range(18)]), 18, "atr")
    assert labels.names == LABEL_SETS["atr"].labels and known is LABEL_SETS["atr"]


def test_parser_errors_are_build_errors(tmp_path):
    assert issubclass(ParserError, BuildError)
    with pytest.raises(ParserError, match="has no config.json"):
        build_parser(ParserOptions(tmp_path), tmp_path)


# --- numpy post-processing -------------------------------------------------------------------------
def test_upsampling_matches_torch_interpolate():
    logits = np.random.default_rng(0).standard_normal((5, 7, 6)).astype(np.float32)
    for size in ((28, 24), (30, 17), (7, 6)):
        want = F.interpolate(torch.from_numpy(logits)[None], size=size, mode="bilinear", align_corners=False)[0]
        np.testing.assert_allclose(upsample(logits, *size), want.numpy(), atol=1e-5)


def test_label_union_and_cleanup_on_a_hand_made_logit_map():
    # three labels on a 12 x 10 grid: 0 background, 1 "top", 2 "pants"
    logits = np.zeros((3, 12, 10), np.float32)
    logits[0] = 1.0
    logits[1, 1:6, 2:8] = 3.0  # a top
    logits[2, 6:11, 3:7] = 3.0  # pants below it
    logits[1, 3, 4] = -5.0  # a one-pixel hole in the top
    logits[1, 10, 9] = 3.0  # a stray pixel far from both
    labels = label_map(logits, 12, 10)  # same size: plain argmax
    assert labels[2, 3] == 1 and labels[8, 4] == 2 and labels[3, 4] == 0 and labels[10, 9] == 1
    top = clean(labels == 1, min_component=0.05, max_hole=0.05)
    assert top[3, 4] and not top[10, 9] and top.sum() == 30  # hole filled, stray pixel dropped
    full = clean(np.isin(labels, [1, 2]), 0.05, 0.05)  # a union of labels: top and pants touch
    assert full.sum() == 30 + 20 and not full[10, 9]


def test_components_and_holes_at_the_border():
    mask = np.zeros((6, 8), bool)
    mask[0:3, 0:3] = True
    mask[4:6, 5:8] = True
    mask[1, 1] = False  # a hole
    _, ids, areas = components(mask)
    assert sorted(a for a in areas if a) == [6, 8] and len(set(ids.tolist())) == 2
    out = clean(mask, min_component=0.0, max_hole=1.0)
    assert out[1, 1] and out.sum() == 15  # the hole is filled; the background touching the border is not
    assert clean(np.zeros((4, 4), bool), 0.05, 0.01).sum() == 0


# --- the engine folder's manifest ------------------------------------------------------------------
def test_manifest_lists_and_hashes_the_parser(parsing_engines):
    m = read_manifest(parsing_engines)
    assert "parser.onnx" in m.named_files()
    assert m.raw["parser"]["categories"] == {c: [PARTS.index(p) for p in IGR_CATEGORIES[c]] for c in CATEGORIES}
    assert all(IGR_CATEGORIES[c][0] == p for c, p in GARMENT_PARTS.items())  # each category's own label first


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda p: p.update(labels=p["labels"][:-1]), "parser.labels"),
        (lambda p: p["categories"].update(upper=[99]), "parser.categories.upper"),
        (lambda p: p["categories"].update(shoes=[1]), "parser.categories"),
        (lambda p: p["preprocess"].update(std=[0, 1, 1]), "parser.preprocess.std"),
        (lambda p: p["postprocess"].update(min_component=2), "parser.postprocess.min_component"),
        (lambda p: p["inputs"][0].update(name="pixel_values"), "parser.inputs"),
        (lambda p: p.update(file="../parser.onnx"), "outside the engine directory"),
    ],
)
def test_malformed_parser_entries_are_refused(parsing_engines, tmp_path, change, key):
    d = tmp_path / "engines"
    shutil.copytree(parsing_engines, d)
    raw = json.loads((d / "manifest.json").read_text())
    change(raw["parser"])
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(EngineError, match=key.replace(".", r"\.")):
        read_manifest(d)


def test_a_tampered_parser_is_refused_before_loading(parsing_engines, tmp_path, person_file):
    d = tmp_path / "engines"
    shutil.copytree(parsing_engines, d)
    with open(d / "parser.onnx", "ab") as f:
        f.write(b"\0")
    r = Restorer.from_dir(d, backend="onnxruntime")
    with pytest.raises(EngineError, match="parser file"):
        r.parse(person_file)


# --- restores without a mask -----------------------------------------------------------------------
def test_restore_parses_when_no_mask_is_given(parsing_engines, person_file):
    r = Restorer.from_dir(parsing_engines, backend="onnxruntime")
    parsed = r.restore(person_file, category="upper", steps=2, seed=3)
    assert np.asarray(parsed.mask).shape == (120, 90) and np.asarray(parsed.mask).min() == 255
    assert np.array_equal(np.asarray(r.parse(person_file, "upper")), np.asarray(parsed.mask))
    given = r.restore(person_file, np.ones((120, 90), bool), category="upper", steps=2, seed=3)
    assert np.array_equal(np.asarray(given.image), np.asarray(parsed.image))
    assert parsed.timings["parser"] > 0 and given.timings["parser"] == 0
    mixed = r.restore([person_file, person_file], [None, np.ones((120, 90), bool)], "upper", steps=1, seed=0)
    assert len(mixed.masks) == 2


def test_a_category_the_parser_does_not_find_is_an_input_error(parsing_engines, person_file):
    r = Restorer.from_dir(parsing_engines, backend="onnxruntime")
    with pytest.raises(InputError, match=r"no lower-body garment found in person\.jpg"):
        r.restore(str(person_file), category="lower", steps=1)


def test_without_a_parser_a_mask_is_required(tiny_engines, person_file, tmp_path, capsys):
    r = Restorer.from_dir(tiny_engines, backend="onnxruntime")
    with pytest.raises(InputError, match="no mask given.*has no parser graph.*--parser"):
        r.restore(person_file, category="upper", steps=1)
    assert cli_main([str(person_file), "--engines", str(tiny_engines), "--out", str(tmp_path / "g.png")]) == 2
    assert "has no parser graph" in capsys.readouterr().err


def test_cli_without_mask_writes_the_mask_used(parsing_engines, person_file, tmp_path, capsys):
    args = [str(person_file), "--category", "upper", "--engines", str(parsing_engines), "--steps", "1", "-q"]
    assert cli_main([*args, "--out", str(tmp_path / "g.png"), "--save-mask", str(tmp_path / "m.png")]) == 0
    assert Image.open(tmp_path / "g.png").size == (48, 64)
    assert Image.open(tmp_path / "m.png").size == (90, 120)
    assert cli_main([*args, "--out", str(tmp_path / "o"), "--save-mask", str(tmp_path / "masks")]) == 0
    assert [p.name for p in (tmp_path / "masks").iterdir()] == ["person_mask.png"]
    assert cli_main([*args[:2], "lower", *args[3:], "--out", str(tmp_path / "x.png")]) == 2
    assert "no lower-body garment found in person.jpg" in capsys.readouterr().err


def test_cli_refuses_a_mask_output_that_is_the_restored_image(parsing_engines, person_file, tmp_path, capsys):
    out = str(tmp_path / "g.png")
    rc = cli_main([str(person_file), "--engines", str(parsing_engines), "--out", out, "--save-mask", out, "-q"])
    assert rc == 2 and "both name" in capsys.readouterr().err


def test_examples_sheet_shows_the_parsed_masks(parsing_engines, tmp_path, person_and_mask):
    from export.build import register_examples

    d = tmp_path / "engines"
    shutil.copytree(parsing_engines, d)
    ex = d / "examples"
    ex.mkdir()
    Image.fromarray(person_and_mask[0]).save(ex / "a_person.jpg")
    Image.fromarray(np.zeros((120, 90), np.uint8)).save(ex / "a_mask.png")  # unused: the parser finds it
    (ex / "examples.json").write_text(
        json.dumps([{"name": "a", "category": "upper", "person": "a_person.jpg", "mask": "a_mask.png"}])
    )
    register_examples(d)
    out = tmp_path / "out"
    assert (
        cli_main(
            [
                "--examples",
                "--engines",
                str(d),
                "--out",
                str(out),
                "--steps",
                "1",
                "-q",
                "--save-mask",
                str(out / "masks"),
            ]
        )
        == 0
    )
    sheet = Image.open(out / "sheet.png")
    assert sheet.size == (48 * 3, 64)  # person | mask | restored, each 64 high
    assert np.asarray(Image.open(out / "masks" / "a_mask.png")).min() == 255


# --- synthetic label maps ----------------------------------------------------------------------------
@pytest.mark.parametrize("index", range(6))
def test_synthetic_label_maps_agree_with_the_mask_and_change_nothing_else(index):
    seed, category = pair_seed(5, index), CATEGORIES[index % 3]
    plain = make_pair(seed, (96, 72), category=category, defect="occlusion" if index >= 3 else None)
    labelled = make_pair(seed, (96, 72), category=category, defect="occlusion" if index >= 3 else None, labels=True)
    assert plain.labels is None
    for a, b in ((plain.person, labelled.person), (plain.mask, labelled.mask), (plain.garment, labelled.garment)):
        assert np.array_equal(a, b)
    assert plain.meta == labelled.meta
    garment = PARTS.index(GARMENT_PARTS[category])
    assert np.array_equal(labelled.labels == garment, labelled.mask)
    assert labelled.labels.dtype == np.uint8 and labelled.labels.max() < len(PARTS)
    assert (labelled.labels == PARTS.index("skin")).any() and (labelled.labels == 0).any()


@pytest.mark.parametrize("category", CATEGORIES)
def test_synthetic_label_maps_label_every_garment_by_its_kind(category):
    """The plain clothes worn with the target garment carry their own kind's label, as a real parser's
    map has them: trousers under a target top are a lower garment, a top over target trousers an upper
    one; a dress comes alone. Which garment is the target is the caller's category, never a label."""
    ids = {c: PARTS.index(GARMENT_PARTS[c]) for c in CATEGORIES}
    worn = {"upper": {"lower"}, "lower": {"upper"}, "full": set()}[category]
    for index in range(4):
        labels = make_pair(pair_seed(11, index), (128, 96), category=category, labels=True).labels
        present = {c for c, i in ids.items() if (labels == i).any()}
        assert present == {category} | worn, (index, present)


def test_bundle_script_includes_the_parser(tiny_checkpoint, tmp_path, capsys, bundle_demo):
    """scripts/bundle_demo.py --parser: the bundle restores its examples from the photo alone."""

    from train.synthetic import generate

    generate(tmp_path / "data", 6, seed=0, size=(64, 48), hard_rate=0.0)
    folder = _segformer(tmp_path / "segformer", ("background", "garment"), (64, 48), favour=1)
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"categories": {c: ["garment"] for c in CATEGORIES}}))
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
    assert bundle_demo.main([*args, "--parser", str(folder), "--parser-labels", str(mapping)]) == 0
    manifest = read_manifest(out)
    assert (out / manifest.raw["parser"]["file"]).is_file() and manifest.raw["parser"]["source"]["path"] == str(folder)
    listing = json.loads((out / "examples" / "examples.json").read_text())
    assert all(0 < e["parsed_mask_iou"] < 1 for e in listing)  # everything is "garment": IoU = mask share
    capsys.readouterr()
    rc = cli_main(["--examples", "--engines", str(out), "--out", str(tmp_path / "sheet"), "--steps", "1", "-q"])
    assert rc == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "sheet" / "sheet.png").size == (48 * 4, 64 * 3)


def test_latency_benchmark_times_the_parser_graph(parsing_engines, tmp_path):
    from benchmarks import latency

    quick = ["--steps", "1", "--repeats", "2", "--warmup", "1", "--threads", "1"]
    report = latency.main(["--preset", "tiny", *quick, "--systems", "", "--engines", str(parsing_engines)])
    sdk = report["runs"][0]["systems"]["sdk"]
    assert sdk["stages"]["parser"]["median_s"] > 0
    assert "parser" not in sdk["reported"]  # the timed requests carry their masks
    assert "| parser |" in latency.summary_markdown(report["runs"], "sdk")
