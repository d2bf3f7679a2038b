"""A malformed manifest.json or constants file is refused on open with an EngineError naming the key."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from igr_sdk import EngineError, Restorer
from igr_sdk._default import DEFAULT_DIR
from igr_sdk._manifest import read_constants, read_manifest, sha256_file


@pytest.fixture(scope="module")
def good(tiny_engines) -> dict:
    return json.loads((tiny_engines / "manifest.json").read_text())


def _write(folder: Path, manifest) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (folder / "manifest.json").write_text(text)
    return folder


def _set(m: dict, path: str, value) -> dict:
    """A copy of ``m`` with the dotted ``path`` set to ``value`` (deleted when value is DELETE)."""
    out = copy.deepcopy(m)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is DELETE:
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


DELETE = object()
ORT = "graphs.{}.engines.onnxruntime-cpu"

CASES = [
    ("scheduler", DELETE, r"key 'scheduler' is missing; expected an object"),
    ("scheduler.beta_end", "x", r"key 'scheduler.beta_end' must be a number in \(0, 1\], got 'x'"),
    ("scheduler.beta_end", 0.0001, r"'scheduler.beta_end' must be a number in \[beta_start = 0.00085, 1\)"),
    ("scheduler.num_train_timesteps", 0, r"'scheduler.num_train_timesteps' must be an integer in \[2, 100000\]"),
    ("scheduler.steps_offset", 1000, r"'scheduler.steps_offset' must be an integer in \[0, 999\], got 1000"),
    ("scheduler.beta_schedule", "cosine", r"'scheduler.beta_schedule' must be one of \['scaled_linear', 'linear'\]"),
    (
        "scheduler.timestep_spacing",
        "linspace",
        r"'scheduler.timestep_spacing' must be one of \['leading', 'trailing'\]",
    ),
    ("scheduler.rescale_betas_zero_snr", 1, r"'scheduler.rescale_betas_zero_snr' must be true or false, got 1"),
    ("scheduler.clip_sample", True, r"'scheduler.clip_sample' must be false"),
    ("scheduler.set_alpha_to_one", "no", r"'scheduler.set_alpha_to_one' must be true or false, got 'no'"),
    ("scheduler", [], r"key 'scheduler' must be an object, got \[\]"),
    ("resolution", [64], r"'resolution' must be \[height, width\] of integers in \[1, 16384\], got \[64\]"),
    ("resolution", [0, 48], r"'resolution' must be \[height, width\]"),
    ("resolution", "64x48", r"'resolution' must be \[height, width\]"),
    ("resolution", [128, 96], r"'latent.height' must be an integer in \[16, 16\], got 8"),
    ("batch", 0, r"'batch' must be an integer in \[1, 1024\], got 0"),
    ("batch", 1.0, r"'batch' must be an integer in \[1, 1024\], got 1.0"),
    ("batch", True, r"'batch' must be an integer"),
    ("batch", 2, r"'graphs.image_encoder.engines.onnxruntime-cpu.batch' must be 2, the manifest's batch, got 1"),
    ("latent", DELETE, r"key 'latent' is missing"),
    ("latent.factor", 7, r"'latent.factor' must be a divisor of the resolution 64x48, got 7"),
    ("latent.channels", 8, r"'latent.channels' must be an integer in \[4, 4\], got 8"),
    ("latent.scaling_factor", float("inf"), r"'latent.scaling_factor' must be a number in \(0, 1000\], got inf"),
    ("categories", [], r"'categories' must be a non-empty list of distinct non-empty strings, got \[\]"),
    ("categories", ["upper", "upper", "full"], r"'categories' must be a non-empty list of distinct"),
    ("categories", ["upper", 2, "full"], r"'categories' must be a non-empty list of distinct"),
    ("text_len", 50, r"'graphs.garmnet.engines.onnxruntime-cpu.inputs.text_embeds.shape' must be \[1, 50, "),
    ("ip_tokens", -4, r"'ip_tokens' must be an integer >= 1, got -4"),
    ("num_blocks", 3, r"'graphs.garmnet.engines.onnxruntime-cpu.outputs' must be the tensors \['ref_k_0', "),
    ("guidance_scale", float("nan"), r"'guidance_scale' must be a number in \[0, 50\], got nan"),
    ("num_inference_steps", 1000, r"'num_inference_steps' must be an integer in \[1, 999\], got 1000"),
    ("constants", DELETE, r"key 'constants' is missing"),
    ("constants.sha256", "abc", r"'constants.sha256' must be a sha256 digest \(64 lowercase hex digits\), got 'abc'"),
    ("constants.file", 3, r"'constants.file' must be a non-empty string, got 3"),
    ("constants.file", "../../etc/passwd", r"manifest names '../../etc/passwd', which lies outside the engine"),
    ("graphs.denoiser", DELETE, r"lacks graphs \['denoiser'\]"),
    ("graphs.denoiser.engines", {}, r"'graphs.denoiser.engines' must be at least one engine, got \{\}"),
    (ORT.format("vae_decoder") + ".inputs", DELETE, r"'graphs.vae_decoder.engines.onnxruntime-cpu.inputs' is missing"),
    (ORT.format("vae_decoder") + ".sha256", None, r"'graphs.vae_decoder.engines.onnxruntime-cpu.sha256' must be"),
    (ORT.format("vae_decoder") + ".data", [{"file": "x"}], r"'graphs.vae_decoder.engines.onnxruntime-cpu.data\[0\]"),
    (ORT.format("vae_decoder") + ".precision", 16, r"'graphs.vae_decoder.engines.onnxruntime-cpu.precision' must be"),
    (ORT.format("vae_decoder") + ".inputs.0.shape", [1, 4, -8, 6], r"\.inputs\[0\]\.shape' must be a list of positive"),
    (ORT.format("vae_decoder") + ".inputs.0.shape", [1, 4, 0, 6], r"\.inputs\[0\]\.shape' must be a list of positive"),
    (ORT.format("vae_decoder") + ".inputs.0.dtype", "bfloat16", r"\.inputs\[0\]\.dtype' must be one of \['float32'"),
    (ORT.format("vae_decoder") + ".inputs.0.name", "z", r"\.inputs' must be the tensors \['latent'\], got \['z'\]"),
    (ORT.format("vae_decoder") + ".outputs.0.shape", [1, 3, 64], r"outputs.image.shape' must be \[1, 3, 64, 48\]"),
    (ORT.format("denoiser") + ".inputs.4.shape", [1, 5, 5], r"denoiser.engines.onnxruntime-cpu.inputs.ref_k_0.shape"),
    (ORT.format("denoiser") + ".inputs.0.shape", [1, 4, 8, 6], r"inputs.sample.shape' must be \[2, 4, 8, 6\]"),
    (
        ORT.format("image_encoder") + ".inputs.0.shape",
        [1, 3, 32, 32],
        r"garment_crop.shape' must be \[1, 3, 224, 224\]",
    ),
    (ORT.format("image_encoder") + ".resolution", [32, 32], r"image_encoder.engines.onnxruntime-cpu.resolution' must"),
    (ORT.format("image_encoder") + ".trt_version", 10, r"onnxruntime-cpu.trt_version' must be a non-empty string"),
    ("examples", {"file": "../x.json", "sha256": "0" * 64}, r"manifest names '../x.json', which lies outside"),
    ("examples", {"file": "examples/examples.json"}, r"key 'examples.sha256' is missing"),
]


@pytest.mark.parametrize(("path", "value", "message"), CASES, ids=[f"{c[0]}={c[1]!r}"[:60] for c in CASES])
def test_malformed_manifest_is_named(good, tmp_path, path, value, message):
    d = _write(tmp_path / "e", _set(good, path, value))
    with pytest.raises(EngineError, match=message):
        read_manifest(d)


def test_zero_terminal_snr_needs_v_prediction(good, tmp_path):
    m = _set(_set(good, "scheduler.rescale_betas_zero_snr", True), "scheduler.prediction_type", "epsilon")
    with pytest.raises(EngineError, match=r"'scheduler.prediction_type' must be 'v_prediction' with rescale_betas"):
        read_manifest(_write(tmp_path / "e", m))
    m = _set(_set(m, "scheduler.prediction_type", "v_prediction"), "scheduler.timestep_spacing", "trailing")
    assert read_manifest(_write(tmp_path / "ok", m)).raw["scheduler"]["rescale_betas_zero_snr"] is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", r"expected a JSON object, got list"),
        ("{" * 100000, r"is not valid JSON"),
        ('{"schema": "igr-engines/1", "batch": 1e999}', r"'resolution' is missing"),
        (b"\xff\xfe{}", r"is not valid JSON"),
        ("", r"is not valid JSON"),
    ],
)
def test_manifest_that_is_not_an_object(tmp_path, text, message):
    d = tmp_path / "e"
    d.mkdir()
    p = d / "manifest.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(EngineError, match=message):
        read_manifest(d)


def _key_paths(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{prefix}{k}"
            yield from _key_paths(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield f"{prefix}{i}"
            yield from _key_paths(v, f"{prefix}{i}.")


class _NoBackend:
    name = "none"


# keys the runtime does not read, or reads only when present, and values any number may take
OPTIONAL = {
    "key",
    "onnx",
    "gpu",
    "sm",
    "trt_version",
    "attention",
    "data",
    "resolution",
    "batch",
    "timestep_spacing",
    "clip_sample",
    "rescale_betas_zero_snr",
}


def _may_change(path: str) -> bool:
    last = path.rsplit(".", 1)[-1]
    return path in {"guidance_scale", "num_inference_steps"} or last in OPTIONAL or ".onnx." in path


def test_no_manifest_change_gets_past_open_and_fails_later(good, tiny_engines, tmp_path):
    """Every key deleted or given a value of the wrong kind is refused with an EngineError on open, or
    is harmless: the runtime then reads the manifest without a KeyError or TypeError."""
    paths = [p for p in _key_paths(good) if not p.startswith(("source_checkpoint", "tools"))]
    assert len(paths) > 200
    constants = (tiny_engines / "constants.npz").read_bytes()
    accepted = []
    for i, path in enumerate(paths):
        for value in (DELETE, None, "x", -1, 0, 1e9, [], {}):
            d = _write(tmp_path / f"m{i}", _set(good, path, value))
            (d / "constants.npz").write_bytes(constants)
            try:
                m = read_manifest(d)
                Restorer(m, _NoBackend(), read_constants(m))
                for g in m.raw["graphs"]:
                    for eid in m.engine_ids():
                        m.engine(g, eid)
            except EngineError:
                continue
            accepted.append((path, value))
    # a value of another kind, or no value, is accepted only where the runtime does not need one
    wrong_kind = [(p, v) for p, v in accepted if (v is DELETE or v in (None, [], {})) and not _may_change(p)]
    assert not wrong_kind, wrong_kind


def test_bundled_manifest_passes_and_lists_its_examples():
    m = read_manifest(DEFAULT_DIR)
    files = {e["file"] for e in m.raw["examples"]["data"]}
    on_disk = {f"examples/{p.name}" for p in (DEFAULT_DIR / "examples").iterdir() if p.name != "examples.json"}
    assert files == on_disk
    assert m.raw["examples"]["file"] == "examples/examples.json"
    read_constants(m)


# --- constants -----------------------------------------------------------------------------------
def _with_constants(good: dict, folder: Path, manifest_changes: dict | None = None, **arrays) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "constants.npz", "wb") as f:
        np.savez(f, **arrays)
    m = copy.deepcopy(good)
    m["constants"] = {"file": "constants.npz", "sha256": sha256_file(folder / "constants.npz")}
    m.update(manifest_changes or {})
    return _write(folder, m)


@pytest.mark.parametrize(
    ("arrays", "changes", "message"),
    [
        (
            {"prompt_embeds": (2, 77, 32)},
            None,
            r"prompt_embeds is float32 \[2, 77, 32\], expected floating point "
            r"\[3, 77, 32\] \(one row per category of \['upper', 'lower', 'full'\]\)",
        ),
        (
            {},
            {"categories": ["upper", "lower", "full", "shoes"]},
            r"prompt_embeds is float32 \[3, 77, 32\], "
            r"expected floating point \[4, 77, 32\]",
        ),
        (
            {"uncond_ip_tokens": (1, 2, 32)},
            None,
            r"uncond_ip_tokens is float32 \[1, 2, 32\], expected floating point "
            r"\[1, 4, 32\]",
        ),
        ({"uncond_ip_tokens": None}, None, r"has no array 'uncond_ip_tokens'; it holds \['prompt_embeds'\]"),
        ({"prompt_embeds": "int"}, None, r"prompt_embeds is int64 \[3, 77, 32\], expected floating point"),
        ({"prompt_embeds": "nan"}, None, r"prompt_embeds holds NaN or infinite values"),
    ],
)
def test_constants_are_checked_against_the_graphs(good, tmp_path, arrays, changes, message):
    shapes = {"prompt_embeds": (3, 77, 32), "uncond_ip_tokens": (1, 4, 32)}
    out = {}
    for key, shape in shapes.items():
        spec = arrays.get(key, shape)
        if spec is None:
            continue
        if spec == "int":
            out[key] = np.zeros(shape, np.int64)
        elif spec == "nan":
            out[key] = np.full(shape, np.nan, np.float32)
        else:
            out[key] = np.zeros(spec, np.float32)
    d = _with_constants(good, tmp_path / "c", changes, **out)
    with pytest.raises(EngineError, match=message):
        read_constants(read_manifest(d))


def test_constants_file_that_is_not_an_archive(good, tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    for name, data in (("junk.npz", b"PK\x03\x04 not really"), ("one.npz", None)):
        if data is None:
            np.save(d / "one.npy", np.zeros(3))
            (d / "one.npy").rename(d / name)
        else:
            (d / name).write_bytes(data)
        m = copy.deepcopy(good)
        m["constants"] = {"file": name, "sha256": sha256_file(d / name)}
        _write(d, m)
        with pytest.raises(EngineError, match=rf"constants file '.*{name}' is not a readable .npz archive"):
            read_constants(read_manifest(d))


def test_tampered_constants_are_refused(good, tmp_path, tiny_engines):
    d = _with_constants(good, tmp_path / "c", None, prompt_embeds=np.zeros((3, 77, 32), np.float32))
    (d / "constants.npz").write_bytes(b"changed")
    with pytest.raises(EngineError, match=r"constants file '.*constants.npz' does not match its manifest hash"):
        Restorer.from_dir(d, backend="onnxruntime")
