"""Exported graphs match torch, carry the CFG contract, and the manifest tells the truth."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from export.build import BuildOptions, build
from export.build_engines import main as build_main
from export.graphs import GRAPHS, example_inputs, module_for, specs
from export.onnx_export import torch_outputs
from igr_sdk._manifest import sha256_file


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _manifest(root):
    return json.loads((root / "manifest.json").read_text())


@pytest.mark.parametrize("graph", GRAPHS)
def test_every_graph_matches_torch(tiny_engines, tiny_model, graph):
    spec = specs(tiny_model, 64, 48, 1)[graph]
    inputs = example_inputs(spec, seed=5)
    expected = torch_outputs(module_for(tiny_model, graph, 1), spec, inputs)
    entry = _manifest(tiny_engines)["graphs"][graph]["engines"]["onnxruntime-cpu"]
    for file in (entry["file"], entry["onnx"]["file"]):  # the optimised engine and the plain ONNX
        got = _session(tiny_engines / file).run(None, {k: v.numpy() for k, v in inputs.items()})
        assert len(got) == len(expected) == len(spec.outputs)
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            np.testing.assert_allclose(g, e, atol=1e-4, rtol=1e-4)


def test_denoiser_uncond_rows_ignore_the_reference(tiny_engines, tiny_model):
    spec = specs(tiny_model, 64, 48, 1)["denoiser"]
    a = {k: v.numpy() for k, v in example_inputs(spec, seed=1).items()}
    b = dict(a)
    for name in a:
        if name.startswith("ref_"):
            b[name] = a[name] * -3.0 + 1.0
    sess = _session(tiny_engines / "onnx" / "denoiser.fp32.onnx")
    out_a, out_b = sess.run(None, a)[0], sess.run(None, b)[0]
    assert out_a.shape == (2, 4, 8, 6)
    np.testing.assert_array_equal(out_a[:1], out_b[:1])  # uncond row: own tokens only
    assert np.abs(out_a[1:] - out_b[1:]).max() > 1e-3  # cond row attends to the reference


def test_manifest_lists_what_is_on_disk(tiny_engines):
    m = _manifest(tiny_engines)
    assert m["schema"] == "igr-engines/1" and m["resolution"] == [64, 48] and m["batch"] == 1
    assert m["latent"] == {"channels": 4, "height": 8, "width": 6, "factor": 8, "scaling_factor": 0.18215}
    assert m["scheduler"]["beta_schedule"] == "scaled_linear" and m["num_inference_steps"] == 25
    assert sha256_file(tiny_engines / m["constants"]["file"]) == m["constants"]["sha256"]
    listed = {m["constants"]["file"], "manifest.json"}
    for g in GRAPHS:
        e = m["graphs"][g]["engines"]["onnxruntime-cpu"]
        for f in (e, e["onnx"], *e["data"], *e["onnx"]["data"]):
            assert sha256_file(tiny_engines / f["file"]) == f["sha256"]
            listed.add(f["file"])
        names = [t["name"] for t in e["inputs"]]
        assert names == [i.name for i in _session(tiny_engines / e["file"]).get_inputs()]
    on_disk = {p.relative_to(tiny_engines).as_posix() for p in tiny_engines.rglob("*") if p.is_file()}
    assert on_disk == listed
    den = m["graphs"]["denoiser"]["engines"]["onnxruntime-cpu"]
    assert [t["shape"] for t in den["inputs"][:4]] == [[2, 4, 8, 6], [1], [2, 77, 32], [2, 4, 32]]
    assert den["inputs"][4] == {"name": "ref_k_0", "shape": [1, 48, 32], "dtype": "float32"}


def test_attention_stays_one_onnx_node(tiny_engines):
    import onnx

    model = onnx.load(str(tiny_engines / "onnx" / "denoiser.fp32.onnx"))
    ops = [n.op_type for n in model.graph.node]
    # 4 blocks x (uncond self + cond self + text cross + IP cross); never MatMul-Softmax-MatMul
    assert ops.count("Attention") == 16 and "Softmax" not in ops


def test_rebuild_keeps_what_did_not_change(tiny_engines, tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck)
    out = tmp_path / "eng"
    shutil.copytree(tiny_engines, out)
    # same checkpoint bytes in another folder: everything is kept
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.onnx")}
    build(BuildOptions(checkpoint=ck, out=out))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.onnx")} == before
    # a changed VAE rebuilds the two VAE graphs and nothing else
    vae = load_file(str(ck / "vae.safetensors"))
    vae["decoder.conv_out.bias"] += 0.5
    save_file(vae, str(ck / "vae.safetensors"))
    build(BuildOptions(checkpoint=ck, out=out))
    changed = {p.name for p in out.rglob("*.onnx") if p.stat().st_mtime_ns != before[p]}
    assert changed == {
        "vae_encoder.fp32.onnx",
        "vae_decoder.fp32.onnx",
        "vae_encoder.fp32.onnxruntime-cpu.onnx",
        "vae_decoder.fp32.onnxruntime-cpu.onnx",
    }
    m = _manifest(out)
    assert (
        m["graphs"]["vae_decoder"]["engines"]["onnxruntime-cpu"]["sha256"]
        != _manifest(tiny_engines)["graphs"]["vae_decoder"]["engines"]["onnxruntime-cpu"]["sha256"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "{tmp}/missing"], "checkpoint folder '{tmp}/missing' does not exist"),
        (["--checkpoint", "{tmp}"], "is not an IGR checkpoint: it has no config.json"),
        (["--checkpoint", "{ck}", "--resolution", "60x48"], "resolution 60x48 is not a multiple of 16"),
        (["--checkpoint", "{ck}", "--backend", "openvino"], "unknown backend 'openvino'"),
        (["--checkpoint", "{ck}", "--device", "cuda"], "ONNX Runtime has no CUDA provider here"),
    ],
)
def test_bad_build_options_give_one_line(args, message, tiny_checkpoint, tmp_path, capsys):
    fill = {"tmp": str(tmp_path), "ck": str(tiny_checkpoint)}
    rc = build_main([a.format(**fill) for a in args] + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message.format(**fill) in err


def test_tensorrt_missing_is_one_line(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("export.tensorrt_build")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    rc = build_main(["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path), "--backend", "tensorrt"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "TensorRT is not installed" in err


def test_fp16_graph_keeps_group_norm_statistics_in_fp32(tiny_model, tmp_path):
    import onnx

    from export.onnx_export import export_onnx, to_half
    from train.checkpoint import new_model

    half = to_half(new_model(tiny_model.config, seed=0))
    spec = specs(half, 64, 48, 1, "float16")["vae_decoder"]
    inputs = example_inputs(spec)
    export_onnx(module_for(half, "vae_decoder", 1), spec, inputs, tmp_path / "dec.onnx")
    model = onnx.load(str(tmp_path / "dec.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    types = {vi.name: vi.type.tensor_type.elem_type for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    norms = [n for n in model.graph.node if n.op_type == "GroupNormalization"]
    assert norms and all(types.get(n.input[0]) == onnx.TensorProto.FLOAT for n in norms)
    # and it computes what the fp32 module computes, to fp16 accuracy
    fp32 = torch_outputs(
        module_for(tiny_model, "vae_decoder", 1),
        specs(tiny_model, 64, 48, 1)["vae_decoder"],
        {k: v.float() for k, v in inputs.items()},
    )[0]
    try:
        got = _session(tmp_path / "dec.onnx").run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    except Exception as e:  # an fp16 kernel missing from this ONNX Runtime CPU build
        pytest.skip(f"ONNX Runtime CPU cannot run this fp16 graph: {e}")
    assert np.abs(got.astype(np.float32) - fp32).max() < 2e-2 * max(1.0, np.abs(fp32).max())


@pytest.mark.parametrize("graph", ["denoiser", "image_encoder"])
def test_fp16_graphs_pass_the_tensorrt_readiness_check(tiny_model, tmp_path, graph):
    from export.onnx_export import export_onnx, to_half
    from export.readiness import check
    from train.checkpoint import new_model

    half = to_half(new_model(tiny_model.config, seed=0))
    spec = specs(half, 64, 48, 1, "float16")[graph]
    export_onnx(module_for(half, graph, 1), spec, example_inputs(spec), tmp_path / f"{graph}.onnx")
    report = check(tmp_path / f"{graph}.onnx", {s.name: s.shape for s in spec.inputs}, fp16=True)
    assert report.ok, report.format()
    assert report.ops.get("Attention", 0) > 0


def test_readiness_catches_the_unfused_sd15_attention_score(tmp_path):
    """DESIGN.md: at opset 18 one cond row's level-1 score tensor at 1024x768 has 8 x 12288 x 24576 elements."""
    import onnx
    from onnx import TensorProto, helper

    from export.readiness import check

    q = helper.make_tensor_value_info("q", TensorProto.FLOAT16, [1, 8, 12288, 40])
    k = helper.make_tensor_value_info("kt", TensorProto.FLOAT16, [1, 8, 40, 24576])
    out = helper.make_tensor_value_info("scores", TensorProto.FLOAT16, None)
    node = helper.make_node("MatMul", ["q", "kt"], ["scores"], name="level1_cond_scores")
    model = helper.make_model(
        helper.make_graph([node], "g", [q, k], [out]), opset_imports=[helper.make_opsetid("", 18)]
    )
    onnx.save(model, tmp_path / "m.onnx")
    report = check(tmp_path / "m.onnx")
    assert not report.ok
    big = [p for p in report.problems if p.kind == "tensor_too_large"]
    assert big and big[0].node == "level1_cond_scores" and "2415919104" in big[0].detail.replace(",", "")


def test_large_graphs_use_external_data_end_to_end(tiny_checkpoint, tmp_path, monkeypatch, person_and_mask):
    """Past 2 GiB (forced here with a zero threshold) weights live in side files the manifest hashes."""
    from export import onnx_export
    from igr_sdk import Restorer

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    out = tmp_path / "ext"
    build(BuildOptions(checkpoint=tiny_checkpoint, out=out, verify=False))
    m = _manifest(out)
    for g in GRAPHS:
        e = m["graphs"][g]["engines"]["onnxruntime-cpu"]
        assert e["data"] and e["onnx"]["data"], g
        for f in (*e["data"], *e["onnx"]["data"]):
            assert (out / f["file"]).stat().st_size > 0 and sha256_file(out / f["file"]) == f["sha256"]
    person, mask = person_and_mask
    assert Restorer.from_dir(out, backend="onnxruntime").restore(person, mask, steps=1, seed=0).image.size == (48, 64)


def test_per_level_head_counts_export_to_matching_engines(tiny_config, tmp_path):
    # one head at the finest level, two below: the CPU engine's attention must split channels the same way
    import dataclasses

    import onnx

    from export.onnx_export import export_onnx, optimize_for_ort
    from train.checkpoint import new_model

    unet = dataclasses.replace(tiny_config.unet, attention_head_dim=(1, 2))
    model = new_model(dataclasses.replace(tiny_config, unet=unet), seed=3)
    spec = specs(model, 64, 48, 1)["denoiser"]
    inputs = example_inputs(spec, seed=2)
    expected = torch_outputs(module_for(model, "denoiser", 1), spec, inputs)[0]
    export_onnx(module_for(model, "denoiser", 1), spec, inputs, tmp_path / "d.onnx")
    optimize_for_ort(tmp_path / "d.onnx", tmp_path / "d.ort.onnx", ["CPUExecutionProvider"])
    heads = sorted(
        a.i
        for n in onnx.load(str(tmp_path / "d.ort.onnx")).graph.node
        if n.op_type == "MultiHeadAttention"
        for a in n.attribute
        if a.name == "num_heads"
    )
    assert heads and set(heads) == {1, 2}
    for path in (tmp_path / "d.onnx", tmp_path / "d.ort.onnx"):
        got = _session(path).run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
