"""INT8 engines (export/quantize.py): QDQ graphs where measurement allows, fp32 elsewhere, a manifest
that says why, and a runtime that runs them unchanged."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import numpy as np
import onnx
import pytest

from benchmarks.metrics import psnr, ssim
from export.build import BuildError, BuildOptions, build
from export.build_engines import main as build_main
from export.graphs import GRAPHS
from export.int8_measure import load_perceptual, weakest
from export.int8_pairs import pairs_sha256, synthetic_pairs
from export.quantize import Int8Limits, Int8Options
from igr_sdk import Restorer
from igr_sdk._manifest import read_manifest, sha256_file

CANDIDATES = ("image_encoder", "garmnet", "denoiser", "vae_decoder")
# random tiny weights quantise worse than a trained model: looser output-error limits, the stated SSIM and
# PSNR limits, and an LPIPS limit that random LPIPS weights (whose scale means nothing) cannot trip
LIMITS = Int8Limits(max_rel_rms=0.3, max_rel_rms_worst=0.6, max_lpips=1e9)
FORCED = {
    "vae_decoder": Int8Limits(max_rel_rms=1e-9),  # no int8 graph can pass this
    # nor this, where int8 changes the image at all
    "image_encoder": Int8Limits(max_rel_rms=0.3, max_rel_rms_worst=0.6, max_lpips=0.0),
}


def _options(lpips_weights=(), **kw) -> Int8Options:
    base = dict(pairs=2, eval_pairs=1, graphs=CANDIDATES, limits=LIMITS, graph_limits=FORCED, threads=1)
    return Int8Options(**{**base, "lpips_weights": tuple(lpips_weights), **kw})


def _lpips_files(root) -> list:
    return [root / "vgg16.pth", root / "lpips_vgg.pth"]


@pytest.fixture(scope="module")
def int8_build(tmp_path_factory, tiny_checkpoint, tiny_engines, perceptual_weights):
    """An int8 build over a copy of the tiny fp32 engine folder (its fp32 graphs are kept, not re-exported)."""
    out = tmp_path_factory.mktemp("int8") / "engines"
    shutil.copytree(tiny_engines, out)
    opts = _options(_lpips_files(perceptual_weights))
    manifest = build(BuildOptions(checkpoint=tiny_checkpoint, out=out, precision="int8", int8=opts))
    return out, manifest


def _entry(manifest: dict, graph: str) -> dict:
    return manifest["graphs"][graph]["engines"]["onnxruntime-cpu"]


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_build_writes_qdq_graphs_for_the_chosen_graphs(int8_build):
    out, m = int8_build
    chosen = {g for g in GRAPHS if _entry(m, g)["precision"] == "int8"}
    assert chosen == {"garmnet", "denoiser"}
    for g in GRAPHS:
        e = _entry(m, g)
        path = out / e["file"]
        assert sha256_file(path) == e["sha256"]
        if g in chosen:
            assert e["file"] == f"{g}.int8.onnxruntime-cpu.onnx"
            assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(path)
            assert e["quantization"]["measured"]["qdq_nodes"] > 0
            weights = onnx.load(str(path)).graph.initializer
            assert any(w.data_type == onnx.TensorProto.INT8 for w in weights)  # per-channel int8 weights
            assert e["fp32"]["precision"] == "fp32" and (out / e["fp32"]["file"]).is_file()
            assert [t["dtype"] for t in e["inputs"]] == ["float32"] * len(e["inputs"])  # same I/O as fp32
        else:
            assert e["precision"] == "fp32" and e["file"] == f"{g}.fp32.onnxruntime-cpu.onnx"
            assert "QuantizeLinear" not in _ops(path)
            assert not (out / f"{g}.int8.onnxruntime-cpu.onnx").exists()
    listed = {"manifest.json", m["constants"]["file"]}
    for g in GRAPHS:
        e = _entry(m, g)
        for f in (e, e["onnx"], *e.get("data", []), *([e["fp32"]] if "fp32" in e else [])):
            listed.add(f["file"])
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == listed  # no temporary files left, nothing unlisted


def test_manifest_records_precision_calibration_hash_and_reason(int8_build, tiny_checkpoint, perceptual_weights):
    out, m = int8_build
    q = m["quantization"]
    expected_hash = pairs_sha256(synthetic_pairs(2, 20_000, (64, 48)))
    assert q["calibration"]["sha256"] == expected_hash and q["calibration"]["pairs"] == 2
    assert q["limits"] == asdict(LIMITS) and q["graph_limits"]["vae_decoder"] == asdict(FORCED["vae_decoder"])
    assert q["settings"]["format"] == "QDQ" and q["steps"] == 25
    assert q["perceptual"]["lpips"] == "v0.1, VGG16"
    assert [f["sha256"] for f in q["perceptual"]["weights"]] == [
        sha256_file(p) for p in _lpips_files(perceptual_weights)
    ]
    assert set(q["combined"]["graphs"]) == {"garmnet", "denoiser"}
    assert q["combined"]["ssim_mean"] >= LIMITS.min_ssim
    for g in GRAPHS:
        info = _entry(m, g)["quantization"]
        assert info["calibration_sha256"] == expected_hash
        assert info["decision"] == _entry(m, g)["precision"] and info["reason"]
        if g in CANDIDATES:
            err = info["measured"]["output_error"]
            assert 0 < err["rel_rms_mean"] <= err["rel_rms_worst"]
            image = info["measured"]["image"]
            assert {"ssim_mean", "psnr_mean_db", "lpips_mean", "gt_ssim_drop", "gt_lpips_rise"} <= set(image)
            assert 0 < image["lpips_mean"] <= image["lpips_max"]
        else:
            assert "not a candidate" in info["reason"]
    # the runtime's manifest validation accepts "precision": "int8"
    assert read_manifest(out).engine("denoiser", "onnxruntime-cpu").precision == "int8"
    # a rebuild with the same options keeps everything
    opts = _options(_lpips_files(perceptual_weights))
    again = build(BuildOptions(checkpoint=tiny_checkpoint, out=out, precision="int8", int8=opts))
    assert again["graphs"] == m["graphs"] and again["quantization"] == q


def test_graph_forced_to_fail_the_quality_threshold_stays_fp32(int8_build):
    # all int8 it fails; so does its version with the output stage (the convs at image resolution) fp32
    _, m = int8_build
    e = _entry(m, "vae_decoder")
    info = e["quantization"]
    assert e["precision"] == "fp32" and info["decision"] == "fp32" and info["output_stage_fp32"] == []
    assert info["reason"].startswith("with its output stage fp32 (")
    assert info["reason"].count("output error over the limit") == 2 and "limit 1e-09" in info["reason"]
    part, full = info["measured"], info["measured"]["all_int8"]
    assert part["output_error"]["rel_rms_mean"] > 1e-9 and full["output_error"]["rel_rms_mean"] > 1e-9
    assert 0 < part["qdq_nodes"] < full["qdq_nodes"]


def test_output_stage_kept_fp32_where_all_int8_fails_and_that_passes(
    int8_build, tiny_checkpoint, tiny_engines, perceptual_weights, tmp_path
):
    _, m = int8_build
    measured = _entry(m, "vae_decoder")["quantization"]["measured"]
    part, full = measured["output_error"]["rel_rms_mean"], measured["all_int8"]["output_error"]["rel_rms_mean"]
    assert part < full  # fewer convs rounded, less error
    between = Int8Limits(max_rel_rms=(part + full) / 2, max_rel_rms_worst=1.0, max_lpips=1e9)
    out = tmp_path / "engines"
    shutil.copytree(tiny_engines, out)
    opts = _options(_lpips_files(perceptual_weights), graphs=("vae_decoder",), graph_limits={"vae_decoder": between})
    built = build(BuildOptions(checkpoint=tiny_checkpoint, out=out, precision="int8", int8=opts))
    e = _entry(built, "vae_decoder")
    info = e["quantization"]
    assert e["precision"] == "int8" and e["file"] == "vae_decoder.int8.onnxruntime-cpu.onnx"
    assert (
        info["reason"].startswith("with its output stage fp32 (")
        and "All int8 it fails (output error" in info["reason"]
    )
    # the stage: every conv whose output has the image's height and width, conv_out (a graph edge) aside
    graph = onnx.load(str(out / e["file"])).graph
    fed_by_dq = {i for n in graph.node if n.op_type == "DequantizeLinear" for i in n.output}
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    stage = info["output_stage_fp32"]
    assert stage and set(stage) < set(convs)
    for name in stage:
        assert not set(convs[name].input) & fed_by_dq  # really fp32: no dequantised input or weight
    assert any(set(n.input) & fed_by_dq for k, n in convs.items() if k not in stage)  # the rest int8
    assert {p.name for p in out.iterdir() if "int8" in p.name} == {"vae_decoder.int8.onnxruntime-cpu.onnx"}


def test_graph_over_the_lpips_limit_stays_fp32(int8_build):
    # its output error and SSIM/PSNR pass: LPIPS against the fp32 restores alone sends it back
    _, m = int8_build
    e = _entry(m, "image_encoder")
    measured = e["quantization"]["measured"]
    assert e["precision"] == "fp32" and measured["qdq_nodes"] > 0
    assert measured["output_error"]["rel_rms_mean"] <= 0.3
    assert measured["image"]["ssim_mean"] >= LIMITS.min_ssim and measured["image"]["lpips_mean"] > 0
    assert e["quantization"]["reason"].startswith("image quality under the limit")
    assert f"LPIPS {measured['image']['lpips_mean']:.4f} (limit <= 0)" in e["quantization"]["reason"]


def test_weakest_graph_is_the_one_with_the_largest_lpips_where_measured():
    a = {"image": {"ssim_mean": 0.99, "lpips_mean": 0.02}}
    b = {"image": {"ssim_mean": 0.98, "lpips_mean": 0.01}}
    assert weakest([a, b]) == 0
    assert weakest([{"image": {"ssim_mean": 0.99}}, {"image": {"ssim_mean": 0.98}}]) == 1  # SSIM without LPIPS


def test_lpips_weights_absent_or_unusable(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty default cache: measured without LPIPS, and said so
    p = load_perceptual(())
    assert not p.measured and p.summary()["lpips"] is None
    assert "LPIPS not measured" in p.note and "fetch_metric_weights.py" in p.note
    with pytest.raises(BuildError, match=r"--int8-lpips-weights: LPIPS weights file .*nowhere.pth"):
        load_perceptual((tmp_path / "nowhere.pth",))


def test_runtime_runs_int8_engines_and_matches_fp32_within_the_int8_tolerance(
    int8_build, tiny_engines, person_and_mask
):
    out, _ = int8_build
    person, mask = person_and_mask
    stated = Int8Limits()  # the image thresholds every int8 build states
    r8 = Restorer.from_dir(out, backend="onnxruntime", threads=1)
    r32 = Restorer.from_dir(tiny_engines, backend="onnxruntime", threads=1)
    a = np.asarray(r8.restore(person, mask, "upper", seed=3).image)
    b = np.asarray(r32.restore(person, mask, "upper", seed=3).image)
    assert not np.array_equal(a, b)  # the int8 engines really ran
    assert ssim(a, b) >= stated.min_ssim and psnr(a, b) >= stated.min_psnr_db


def test_fp32_rebuild_of_an_int8_folder_keeps_its_fp32_engines(int8_build, tiny_checkpoint, tmp_path):
    src, m8 = int8_build
    out = tmp_path / "engines"
    shutil.copytree(src, out)
    m = build(BuildOptions(checkpoint=tiny_checkpoint, out=out))
    for g in GRAPHS:
        e = _entry(m, g)
        assert e["precision"] == "fp32" and "quantization" not in e
        assert e["key"] == (_entry(m8, g).get("fp32") or _entry(m8, g))["key"]  # kept, not re-exported
    assert "quantization" not in m


def test_bundle_carries_only_the_engines_the_runtime_loads(int8_build, person_and_mask, tmp_path, bundle_demo):
    """scripts/bundle_demo.py on an int8 build: the int8 engines and the graphs kept fp32 are copied,
    the fp32 engines the int8 ones came from are not (their hashes stay), and the bundle restores
    exactly what the full engine folder does."""

    src, built = int8_build
    manifest = json.loads((src / "manifest.json").read_text())
    out = tmp_path / "bundle"
    bundle_demo.copy_runtime_files(manifest, src, out)
    (out / "manifest.json").write_text(json.dumps(manifest))

    expected = {"manifest.json", manifest["constants"]["file"]}
    for g in GRAPHS:
        e, b = _entry(manifest, g), _entry(built, g)
        expected.add(e["file"])
        assert "fp32" not in e and "onnx" not in e
        assert e["precision"] == b["precision"] and e["sha256"] == sha256_file(out / e["file"])
        if b["precision"] == "int8":
            assert e["quantized_from"]["engine"] == {"file": b["fp32"]["file"], "sha256": b["fp32"]["sha256"]}
            assert e["quantized_from"]["onnx"]["sha256"] == b["onnx"]["sha256"]
        else:
            assert "quantized_from" not in e
    assert {"int8", "fp32"} <= {_entry(manifest, g)["precision"] for g in GRAPHS}  # both kinds were copied
    assert {p.name for p in out.iterdir()} == expected

    person, mask = person_and_mask
    with (
        Restorer.from_dir(out, backend="onnxruntime", threads=1) as r,
        Restorer.from_dir(src, backend="onnxruntime", threads=1) as full,
    ):
        a = np.asarray(r.restore(person, mask, "upper", seed=3, steps=2).image)
        b = np.asarray(full.restore(person, mask, "upper", seed=3, steps=2).image)
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "no image/ and cloth/ folders"),
        ("one_pair", "has 1 usable pair; expected at least 2"),
    ],
)
def test_bad_calibration_folder_is_named(setup, message, tiny_checkpoint, tmp_path, capsys):
    from train.synthetic import generate

    folder = tmp_path / "my_pairs"
    if setup == "empty":
        folder.mkdir()
    elif setup == "one_pair":
        generate(folder, 1, seed=3, size=(64, 48))
    argv = ["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "e"), "--precision", "int8"]
    assert build_main([*argv, "--calibration", str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and message in err and err.count("\n") == 1
    assert not (tmp_path / "e" / "manifest.json").exists()  # refused before anything was built


def test_int8_options_are_checked(tiny_checkpoint, tmp_path, capsys):
    argv = ["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "e")]
    with pytest.raises(SystemExit):
        build_main([*argv, "--calibration", str(tmp_path)])  # int8 options without --precision int8
    assert "only apply with --precision int8" in capsys.readouterr().err
    assert build_main([*argv, "--precision", "int8", "--int8-graphs", "denoiser,unet"]) == 2
    assert "expected a non-empty subset" in capsys.readouterr().err
    with pytest.raises(BuildError, match="int8 engines are for ONNX Runtime on the CPU"):
        build(BuildOptions(checkpoint=tiny_checkpoint, out=tmp_path / "t", backend="tensorrt", precision="int8"))


def test_latency_benchmark_has_sdk_int8_beside_sdk_fp32_at_each_thread_count(int8_build, tiny_engines, tmp_path):
    from benchmarks import latency

    out, _ = int8_build
    report_path = tmp_path / "latency.json"
    quick = ["--steps", "2", "--repeats", "1", "--warmup", "0"]
    systems = ["--systems", "", "--engines", str(tiny_engines), "--engines-int8", str(out), "--baseline", "sdk"]
    report = latency.main(["--preset", "tiny", "--threads", "1,2", *quick, *systems, "--json", str(report_path)])
    assert json.loads(report_path.read_text())["meta"]["threads"] == [1, 2]
    assert [r["threads"] for r in report["runs"]] == [1, 2]
    for run in report["runs"]:
        assert set(run["systems"]) == {"sdk", "sdk_int8"} and not run["skipped"]
        int8 = run["systems"]["sdk_int8"]
        assert "denoiser int8" in int8["note"] and "vae_decoder fp32" in int8["note"]
        assert run["systems"]["sdk"]["note"].endswith("fp32")
        assert {"image_encoder", "vae_encoder", "garmnet", "denoiser_step", "vae_decoder"} <= set(int8["reported"])
        assert int8["end_to_end"]["speedup"] > 0


def test_quality_benchmark_compares_int8_and_fp32_engines_on_the_same_pairs(int8_build, tiny_engines, tmp_path):
    from benchmarks import quality
    from train.synthetic import generate

    out, _ = int8_build
    generate(tmp_path / "held_out", 3, seed=5, size=(64, 48))
    engines = ["--engines", f"fp32={tiny_engines}", f"int8={out}", "--compare", "fp32:int8", "--threads", "1"]
    result = quality.main(
        ["--data", str(tmp_path / "held_out"), "--steps", "3", *engines, "--out", str(tmp_path / "q")]
    )
    diff = result["paired"]["int8 − fp32"]["ssim"]
    per_pair = [p["scores"]["int8"]["ssim"] - p["scores"]["fp32"]["ssim"] for p in result["per_pair"]]
    assert diff["n"] == 3 and diff["mean"] == pytest.approx(np.mean(per_pair))
    assert diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1]
    assert "Paired differences" in (tmp_path / "q.md").read_text()
