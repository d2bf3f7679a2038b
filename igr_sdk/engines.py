"""Engine directories and the engines in them, for the exporter that writes them.

``manifest.json`` reading and hashing, the bundled examples' listing, the default model's folder, and
the CUDA and TensorRT helpers the runtime and the TensorRT builder share (one TensorRT logger per
process, cuda-python under either of its layouts, compute capability names). Importing this module
imports neither TensorRT nor cuda-python.
"""

from __future__ import annotations

from igr_sdk._default import default_engine_dir
from igr_sdk._examples import FILE_KEYS, LISTING, Example, parse_listing, read_examples
from igr_sdk._manifest import (
    EngineEntry,
    Manifest,
    TensorInfo,
    check_file,
    read_constants,
    read_manifest,
    sha256_file,
)
from igr_sdk._tensorrt import check_trt_version, load_cudart, sm_name, trt_logger

__all__ = [
    "FILE_KEYS",
    "LISTING",
    "EngineEntry",
    "Example",
    "Manifest",
    "TensorInfo",
    "check_file",
    "check_trt_version",
    "default_engine_dir",
    "load_cudart",
    "parse_listing",
    "read_constants",
    "read_examples",
    "read_manifest",
    "sha256_file",
    "sm_name",
    "trt_logger",
]
