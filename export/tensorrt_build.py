"""Build one TensorRT plan from one ONNX file (TensorRT 10/11 Python API).

NOT YET RUN ON A GPU IN THIS PROJECT. The build path (``build_plan``, ``gpu_info``) is written against the
TensorRT 10.x / 11.x and cuda-python APIs and has only been checked statically; the device-independent parts
(``profile_shapes``, ``plan_name``, the missing-TensorRT error) are tested on CPU.

Choices, following DESIGN.md section 3:
- strongly typed networks by default: precision comes from the ONNX graph (fp16 with fp32 islands), which is
  the only way TensorRT 11 offers (it removed ``BuilderFlag.FP16``); a weakly typed build sets FP16 on
  TensorRT 10 only;
- static shapes: an optimization profile with min = opt = max, added only when the ONNX has dynamic dims;
- ``parse_from_file`` so that external data next to the ONNX is found by the parser;
- an optional timing cache, loaded, merged with whatever another build saved meanwhile, and saved back;
- the plan is written atomically (temporary file + rename), so a reader never sees half a plan.

``tensorrt`` (and cuda-python) are imported inside functions: this module imports on any machine.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import onnx

from export.errors import BuildError
from export.readiness import graph_inputs, load_structure, resolve_input_shapes
from igr_sdk import EngineError
from igr_sdk.contract import parse_trt_version
from igr_sdk.engines import load_cudart, sm_name, trt_logger

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'igr-sdk[tensorrt]' on a Linux host with an NVIDIA GPU and CUDA driver"

Shape = tuple[int, ...]


# ---------------------------------------------------------------- environment


def require_tensorrt():
    """The ``tensorrt`` module, or a one-line BuildError saying how to get it."""
    try:
        import tensorrt
    except ImportError as e:
        raise BuildError(f"TensorRT is not installed: {INSTALL_HINT}") from e
    except OSError as e:  # the wheel is there but libnvinfer could not be loaded
        raise BuildError(f"TensorRT is installed but its libraries failed to load ({e}): {INSTALL_HINT}") from e
    return tensorrt


def _cudart():
    """cuda-python's runtime module (either layout, found the way the runtime finds it), or None."""
    try:
        return load_cudart()
    except EngineError:
        return None


def _gpu_info_cudart(cudart, device: int) -> tuple[str, str]:
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        raise BuildError(f"no CUDA device found (cudaGetDeviceCount: {err}, count {count})")
    if device >= count:
        raise BuildError(f"CUDA device {device} requested, only {count} present")
    err, prop = cudart.cudaGetDeviceProperties(device)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BuildError(f"cudaGetDeviceProperties({device}) failed: {err}")
    name = prop.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return str(name).strip(), _sm(prop.major, prop.minor)


def _sm(major: int, minor: int) -> str:
    try:
        return sm_name(int(major), int(minor))
    except EngineError as e:
        raise BuildError(str(e)) from None


def _gpu_info_torch(device: int) -> tuple[str, str] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        raise BuildError("no CUDA device found (torch.cuda.is_available() is False)")
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), _sm(major, minor)


def gpu_info(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability as ``sm_90``) of ``device``, via cuda-python, else torch.

    TensorRT's Python API does not expose the device name, so one of those two is needed (both are on a
    build host: cuda-python comes with the ``tensorrt`` extra, torch with ``export``).
    """
    cudart = _cudart()
    if cudart is not None:
        return _gpu_info_cudart(cudart, device)
    info = _gpu_info_torch(device)
    if info is None:
        raise BuildError(f"cannot query the GPU: neither cuda-python nor torch is installed ({INSTALL_HINT})")
    return info


# ---------------------------------------------------------------- device-independent helpers


def plan_name(graph: str, precision: str, sm: str, trt_version: str) -> str:
    """File name of a plan, e.g. ``plan_name("denoiser", "fp16", "sm_90", "10.14.1.48")`` ->
    ``denoiser.fp16.sm_90.trt10.14.plan``. Plans are tied to GPU architecture and TensorRT major.minor."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", graph):
        raise ValueError(f"graph name {graph!r} must be letters, digits, '_' or '-'")
    if not re.fullmatch(r"[a-z0-9]+", precision):
        raise ValueError(f"precision {precision!r} must be like 'fp16' or 'fp32'")
    if not re.fullmatch(r"sm_\d{2,3}[a-z]?", sm):
        raise ValueError(f"compute capability {sm!r} must be like 'sm_90'")
    major, minor = parse_trt_version(trt_version)
    return f"{graph}.{precision}.{sm}.trt{major}.{minor}.plan"


def profile_shapes(
    onnx_model: str | PathLike | onnx.ModelProto, input_shapes: Mapping[str, Shape]
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) per graph input for a static-shape plan: all three are the given (or declared) shape.

    Raises ValueError naming the input when a name is unknown, a shape disagrees with the ONNX's static
    dims, or an input with dynamic dims has no shape.
    """
    model, _ = load_structure(onnx_model)
    shapes = resolve_input_shapes(model, input_shapes, require_all=True)
    return {name: (shape, shape, shape) for name, shape in shapes.items()}


def has_dynamic_inputs(onnx_model: str | PathLike | onnx.ModelProto) -> bool:
    model, _ = load_structure(onnx_model)
    return any(
        dims is None or not all(isinstance(d, int) and d > 0 for d in dims) for dims in graph_inputs(model).values()
    )


def _atomic_write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- TensorRT


def _parser_errors(parser) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        # node_name()/node_operator() exist from TensorRT 9/10 on; node() (an index) everywhere.
        name = e.node_name() if hasattr(e, "node_name") else ""
        op = e.node_operator() if hasattr(e, "node_operator") else ""
        where = f"node {e.node()}" + (f" {name!r}" if name else "") + (f" ({op})" if op else "")
        out.append(f"{where}: {e.desc()}")
    return out


def _load_timing_cache(config, path: Path | None) -> bytes:
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):  # (cache, ignore_mismatch)
        # A cache from another GPU or TensorRT version: start afresh rather than fail the build.
        log.warning("timing cache %s does not match this GPU/TensorRT; starting an empty one", path)
        data = b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, False)
    return data


def _save_timing_cache(config, path: Path, loaded: bytes) -> None:
    cache = config.get_timing_cache()
    on_disk = path.read_bytes() if path.is_file() else b""
    if on_disk and on_disk != loaded:
        # Another build saved meanwhile: keep its timings too.
        other = config.create_timing_cache(on_disk)
        if not cache.combine(other, False):  # (input_cache, ignore_mismatch)
            log.warning("timing cache %s changed and could not be merged; overwriting it", path)
    _atomic_write(path, memoryview(cache.serialize()))


def build_plan(
    onnx_path: str | PathLike,
    plan_path: str | PathLike,
    input_shapes: Mapping[str, Shape],
    *,
    optimization_level: int = 3,
    timing_cache: str | PathLike | None = None,
    strongly_typed: bool = True,
    workspace_gb: float | None = None,
) -> dict:
    """Parse ``onnx_path`` and build a static-shape plan at ``input_shapes`` into ``plan_path``.

    Returns build info: TensorRT version, GPU name and sm, build seconds, plan size, and the settings used.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    if not 0 <= optimization_level <= 5:
        raise ValueError(f"optimization_level must be 0..5, got {optimization_level}")
    # Shape mistakes are found before TensorRT or the GPU is touched.
    profile = profile_shapes(onnx_path, input_shapes)
    trt = require_tensorrt()
    gpu, sm = gpu_info()
    trt_major = parse_trt_version(trt.__version__)[0]
    logger = trt_logger(trt)  # one per process: TensorRT keeps the first logger it is given
    start = time.perf_counter()

    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed:
        if not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            raise BuildError(f"TensorRT {trt.__version__} has no strongly typed networks; TensorRT >= 10 is needed")
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    # Explicit batch is the only mode in TensorRT 10 (its flag is deprecated), so nothing else is set.
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = _parser_errors(parser)
        raise BuildError(f"TensorRT could not parse {onnx_path.name}: " + "; ".join(errors or ["no details"]))

    config = builder.create_builder_config()
    config.builder_optimization_level = optimization_level
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if not strongly_typed:
        if trt_major >= 11 or not hasattr(trt.BuilderFlag, "FP16"):
            raise BuildError(
                f"TensorRT {trt.__version__} has no FP16 builder flag: build strongly typed from an fp16 ONNX"
            )
        config.set_flag(trt.BuilderFlag.FP16)

    dynamic = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name not in profile:
            raise BuildError(f"the parsed network has input {tensor.name!r}, which the ONNX graph does not declare")
        if any(d < 0 for d in tensor.shape):
            dynamic.append(tensor.name)
    if dynamic:
        opt_profile = builder.create_optimization_profile()
        for name in dynamic:
            opt_profile.set_shape(name, *profile[name])
        config.add_optimization_profile(opt_profile)

    loaded_cache = _load_timing_cache(config, cache_path) if cache_path is not None else b""
    log.info("building %s -> %s on %s (%s), TensorRT %s", onnx_path.name, plan_path.name, gpu, sm, trt.__version__)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"TensorRT failed to build {onnx_path.name}; the TensorRT errors are in the log above")
    seconds = time.perf_counter() - start
    _atomic_write(plan_path, memoryview(serialized))
    if cache_path is not None:
        _save_timing_cache(config, cache_path, loaded_cache)
    info = {
        "tensorrt_version": trt.__version__,
        "gpu": gpu,
        "sm": sm,
        "build_seconds": round(seconds, 1),
        "plan": str(plan_path),
        "plan_bytes": plan_path.stat().st_size,
        "onnx": str(onnx_path),
        "input_shapes": {name: list(p[1]) for name, p in profile.items()},
        "strongly_typed": strongly_typed,
        "optimization_level": optimization_level,
        "timing_cache": str(cache_path) if cache_path is not None else None,
    }
    log.info("built %s: %.1f MB in %.0f s", plan_path.name, info["plan_bytes"] / 1e6, seconds)
    return info
