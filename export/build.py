"""Checkpoint -> engine directory: ONNX graphs, engines, constants and ``manifest.json``.

Each (graph, engine) entry carries a build key: the hash of everything that determines its bytes
(checkpoint part hashes, resolution, batch, precision, opset, exporter versions). A rebuild keeps
every entry whose key is unchanged and whose files still match their hashes, and rebuilds the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from export import onnx_export
from export.errors import BuildError
from export.graphs import GRAPHS, GraphSpec, example_inputs, module_for, specs
from igr_sdk import EngineError
from igr_sdk.contract import CATEGORIES, SCHEMA
from igr_sdk.engines import FILE_KEYS, LISTING, parse_listing, sha256_file
from train.checkpoint import PART_FILES, load_checkpoint, read_config, read_meta

if TYPE_CHECKING:
    from export.parser import ParserOptions
    from export.quantize import Int8Options

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt")
CONSTANTS = "constants.npz"


@dataclass(frozen=True)
class BuildOptions:
    checkpoint: Path
    out: Path
    backend: str = "onnxruntime"
    resolution: tuple[int, int] | None = None  # (H, W); None: the checkpoint's
    batch: int = 1
    precision: str | None = None  # None: fp32 for onnxruntime, fp16 for tensorrt
    opset: int = 23
    device: str = "cpu"  # onnxruntime: cpu or cuda
    verify: bool = True
    trt_opt_level: int = 3
    timing_cache: Path | None = None
    tolerance: float = 1e-4  # fp32 parity, relative to each output's largest magnitude (plus the same atol)
    parser: ParserOptions | None = None  # a human parser exported beside the graphs (export/parser.py)
    int8: Int8Options | None = None  # precision int8: calibration and acceptance (None: export.quantize's defaults)


def _versions(backend: str) -> dict[str, str]:
    names = ["torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "diffusers", "transformers"]
    if backend == "tensorrt":
        names.append("tensorrt")
    out = {}
    for n in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[n] = metadata.version(n)
    return out


def _check_options(o: BuildOptions) -> tuple[int, int, str]:
    if o.backend not in BACKENDS:
        raise BuildError(f"unknown backend {o.backend!r}; expected one of {BACKENDS}")
    config = read_config(o.checkpoint)
    h, w = o.resolution or (config.height, config.width)
    m = config.resolution_multiple
    if h % m or w % m or h <= 0 or w <= 0:
        raise BuildError(
            f"resolution {h}x{w} is not a multiple of {m} for this checkpoint; try "
            f"{max(m, round(h / m) * m)}x{max(m, round(w / m) * m)}"
        )
    if o.batch < 1:
        raise BuildError(f"batch must be >= 1, got {o.batch}")
    precision = o.precision or ("fp16" if o.backend == "tensorrt" else "fp32")
    if precision not in ("fp32", "fp16", "int8"):
        raise BuildError(f"unknown precision {precision!r}; expected fp16, fp32 or int8")
    if precision == "int8" and (o.backend, o.device) != ("onnxruntime", "cpu"):
        raise BuildError(
            f"int8 engines are for ONNX Runtime on the CPU (--backend onnxruntime --device cpu); "
            f"got --backend {o.backend} --device {o.device}"
        )
    if precision == "int8":
        from export.quantize import preflight

        preflight(o.int8)
    return h, w, precision


ORT_CPU_ATTENTION = "com.microsoft.MultiHeadAttention"  # export.ort_attention


def _engine_id(o: BuildOptions) -> tuple[str, list[str], dict]:
    if o.backend == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError:
            raise BuildError("ONNX Runtime is not installed: pip install 'igr-sdk[onnxruntime]'") from None
        if o.device == "cpu":
            # recorded, and part of the build key: engines built before the rewrite are rebuilt
            return "onnxruntime-cpu", ["CPUExecutionProvider"], {"attention": ORT_CPU_ATTENTION}
        if o.device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BuildError(
                    "ONNX Runtime has no CUDA provider here: install 'igr-sdk[onnxruntime-gpu]' "
                    "(never together with onnxruntime) on a CUDA host, or use --device cpu"
                )
            return "onnxruntime-cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], {}
        raise BuildError(f"unknown device {o.device!r} for onnxruntime; expected cpu or cuda")
    from export import tensorrt_build

    trt = tensorrt_build.require_tensorrt()
    gpu, sm = tensorrt_build.gpu_info()
    return f"tensorrt-{sm}", [], {"gpu": gpu, "sm": sm, "trt_version": trt.__version__}


def _key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _file_entry(root: Path, files: list[Path]) -> dict:
    main, *data = files
    return {
        "file": main.relative_to(root).as_posix(),
        "sha256": sha256_file(main),
        "data": [{"file": d.relative_to(root).as_posix(), "sha256": sha256_file(d)} for d in data],
    }


def _still_valid(root: Path, entry: dict, key: str | None) -> bool:
    """The entry has this build key (None: any) and its files still match their hashes."""
    if key is not None and entry.get("key") != key:
        return False
    for f in [entry, *entry.get("data", [])]:
        p = root / f["file"]
        if not p.is_file() or sha256_file(p) != f["sha256"]:
            return False
    return True


def _write_manifest(out: Path, manifest: dict) -> None:
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / "manifest.json")


def register_examples(out: Path) -> dict:
    """List ``examples/examples.json`` and every file it names, hashed, in ``out/manifest.json``.

    Call after writing the examples beside a built engine directory; returns the manifest written.
    """
    manifest = json.loads((out / "manifest.json").read_text())
    listing = out / LISTING
    try:
        entries = parse_listing(json.loads(listing.read_text()), manifest["categories"], str(listing))
    except (OSError, ValueError, EngineError) as e:
        raise BuildError(f"examples listing {listing}: {e}") from None
    files = sorted({listing.parent / e[k] for e in entries for k in FILE_KEYS if e.get(k) is not None})
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise BuildError(f"{listing} names files that do not exist: {missing}")
    manifest["examples"] = _file_entry(out, [listing, *files])
    _write_manifest(out, manifest)
    log.info("listed %d example files in %s", len(files) + 1, out / "manifest.json")
    return manifest


def _load_previous(out: Path) -> dict:
    p = out / "manifest.json"
    if not p.is_file():
        return {}
    try:
        prev = json.loads(p.read_text())
    except json.JSONDecodeError:
        return {}
    return prev if prev.get("schema") == SCHEMA else {}


def build(o: BuildOptions) -> dict:
    """Build (or bring up to date) the engine directory ``o.out``; returns the manifest written."""
    h, w, precision = _check_options(o)
    if o.parser is not None:
        from export.parser import preflight

        preflight(o.parser)  # a wrong --parser fails now, not after the graphs are built
    engine_id, providers, engine_info = _engine_id(o)
    out = o.out
    out.mkdir(parents=True, exist_ok=True)
    ck = Path(o.checkpoint)
    part_hash = {p: sha256_file(ck / f"{p}.safetensors") for p in (*PART_FILES, "prompt_embeds")}
    tools = _versions(o.backend)
    model = load_checkpoint(ck)
    config = model.config
    spec_all = specs(model, h, w, o.batch, "float16" if precision == "fp16" else "float32")
    prev = _load_previous(out)
    prev_graphs = prev.get("graphs", {})
    same_shape = prev.get("resolution") == [h, w] and prev.get("batch") == o.batch
    graphs = {g: {"engines": {}} for g in GRAPHS}
    for g in GRAPHS:  # other engines stay only while they describe the same shapes
        if same_shape:
            for eid, e in prev_graphs.get(g, {}).get("engines", {}).items():
                if eid != engine_id:
                    graphs[g]["engines"][eid] = e

    half = None
    t_all = time.perf_counter()
    int8, precision = precision == "int8", "fp32" if precision == "int8" else precision  # int8 starts from fp32
    for i, g in enumerate(GRAPHS, 1):
        spec = spec_all[g]
        key = _key(
            graph=g,
            engine=engine_id,
            precision=precision,
            opset=o.opset,
            resolution=[h, w],
            batch=o.batch,
            parts={p: part_hash[p] for p in spec.parts},
            tools=tools,
            info=engine_info,
        )
        old = prev_graphs.get(g, {}).get("engines", {}).get(engine_id)
        if old and old.get("precision") == "int8":
            old = old.get("fp32")  # an int8 engine keeps the fp32 engine it was quantised from
        if old:
            old = {k: v for k, v in old.items() if k != "quantization"}  # the int8 stage's, decided anew
        if old and _still_valid(out, old, key):
            graphs[g]["engines"][engine_id] = old
            log.info("[%d/%d] %s: up to date, kept", i, len(GRAPHS), g)
            continue
        t0 = time.perf_counter()
        if precision == "fp16" and half is None:
            half = onnx_export.to_half(load_checkpoint(ck))
        src = half if precision == "fp16" else model
        entry = _build_graph(o, out, g, spec, src, model, precision, engine_id, providers, h, w)
        entry.update(key=key, precision=precision, resolution=[h, w], batch=o.batch, **engine_info)
        graphs[g]["engines"][engine_id] = entry
        log.info("[%d/%d] %s: built in %.1f s", i, len(GRAPHS), g, time.perf_counter() - t0)

    constants = _write_constants(out, model)
    f = config.vae.downsample_factor
    manifest = {
        "schema": SCHEMA,
        "resolution": [h, w],
        "batch": o.batch,
        "latent": {
            "channels": 4,
            "height": h // f,
            "width": w // f,
            "factor": f,
            "scaling_factor": config.vae.scaling_factor,
        },
        "categories": list(CATEGORIES),
        "ip_tokens": config.ip_tokens,
        "text_len": config.text_len,
        "num_blocks": len(model.self_attentions),
        "guidance_scale": config.guidance_scale,
        "num_inference_steps": config.num_inference_steps,
        "scheduler": asdict(config.scheduler),
        "constants": constants,
        "graphs": graphs,
        "source_checkpoint": {
            "path": str(ck.resolve()),
            "name": config.name,
            "meta": read_meta(ck),
            "parts_sha256": part_hash,
        },
        "tools": tools,
    }
    if int8:
        from export.quantize import quantize_engines

        quantize_engines(manifest, out, model, o, prev)
    if o.parser is not None:
        from export.parser import build_parser

        manifest["parser"] = build_parser(o.parser, out, prev.get("parser"), o.opset, o.verify)
    elif isinstance(prev.get("parser"), dict) and _still_valid(out, prev["parser"], None):
        manifest["parser"] = prev["parser"]  # an exported parser stays while its file is unchanged
    if isinstance(prev.get("examples"), dict) and _still_valid(out, prev["examples"], None):
        manifest["examples"] = prev["examples"]  # bundled examples stay listed while unchanged
    _write_manifest(out, manifest)
    log.info("engine directory %s ready in %.1f s", out, time.perf_counter() - t_all)
    return manifest


def _write_constants(out: Path, model) -> dict:
    with torch.no_grad():
        prompt = model.prompt_embeds.float().numpy()  # (3, 77, C)
        uncond_ip = model.uncond_ip_tokens(1).float().numpy()  # (1, T_ip, C)
    path = out / CONSTANTS
    with open(path, "wb") as fh:  # a file object: np.savez would otherwise append ".npz"
        np.savez(fh, prompt_embeds=prompt.astype(np.float32), uncond_ip_tokens=uncond_ip.astype(np.float32))
    return {"file": CONSTANTS, "sha256": sha256_file(path)}


def _build_graph(
    o: BuildOptions,
    out: Path,
    g: str,
    spec: GraphSpec,
    src,
    fp32_model,
    precision: str,
    engine_id: str,
    providers: list[str],
    h: int,
    w: int,
) -> dict:
    module = module_for(src, g, o.batch)
    inputs = example_inputs(spec)
    onnx_path = out / "onnx" / f"{g}.{precision}.onnx"
    onnx_files = onnx_export.export_onnx(module, spec, inputs, onnx_path, o.opset)
    io = {"inputs": [s.to_dict() for s in spec.inputs], "outputs": [s.to_dict() for s in spec.outputs]}
    expected = None
    if o.verify:
        fp32_inputs = {k: v.float() if v.is_floating_point() else v for k, v in inputs.items()}
        fp32_spec = specs(fp32_model, h, w, o.batch)[g]
        expected = onnx_export.torch_outputs(module_for(fp32_model, g, o.batch), fp32_spec, fp32_inputs)

    if o.backend == "onnxruntime":
        opt_path = out / f"{g}.{precision}.{engine_id}.onnx"
        files = onnx_export.optimize_for_ort(onnx_path, opt_path, providers)
        if expected is not None:
            _verify(opt_path, spec, inputs, expected, providers, precision, o.tolerance, g)
        return {**_file_entry(out, files), "onnx": _file_entry(out, onnx_files), **io}

    from export import readiness, tensorrt_build

    shapes = {s.name: s.shape for s in spec.inputs}
    readiness.require_ready(onnx_path, shapes)
    if expected is not None:
        _verify(onnx_path, spec, inputs, expected, ["CPUExecutionProvider"], precision, o.tolerance, g)
    info = tensorrt_build.gpu_info()
    import tensorrt as trt

    plan = out / tensorrt_build.plan_name(g, precision, info[1], trt.__version__)
    built = tensorrt_build.build_plan(
        onnx_path, plan, shapes, optimization_level=o.trt_opt_level, timing_cache=o.timing_cache
    )
    return {**_file_entry(out, [plan]), "onnx": _file_entry(out, onnx_files), "build": built, **io}


def _verify(path: Path, spec: GraphSpec, inputs, expected, providers, precision, tol, g) -> None:
    err, scale = onnx_export.max_error(path, spec, inputs, expected, providers)
    limit = tol + tol * scale if precision == "fp32" else 2e-2 * max(scale, 1.0)
    log.info("    %s: max |onnx - torch| = %.3g (outputs up to %.3g, limit %.3g)", g, err, scale, limit)
    if not err <= limit:
        raise BuildError(f"{g}: {path.name} differs from torch by {err:.3g} (limit {limit:.3g}); not written as done")
