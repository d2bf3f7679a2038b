"""The contract ``igr_sdk`` shares with ``train/`` and ``export/`` (DESIGN.md sections 2-4), one copy each.

Graph names, categories, the CLIP input, the engine-directory schema and the parsers every command
line uses for resolutions and TensorRT versions. Defined here so that the runtime, the exporter and
the training code cannot drift apart; numpy and the standard library only.
"""

from __future__ import annotations

import argparse
import re

import numpy as np

__all__ = [
    "CATEGORIES",
    "CLIP_MEAN",
    "CLIP_SIZE",
    "CLIP_STD",
    "GRAPHS",
    "LATENT_CHANNELS",
    "SCHEMA",
    "parse_resolution",
    "parse_trt_version",
    "resolution_arg",
    "trt_version_arg",
]

# manifest.json's schema version; a directory of another version is refused
SCHEMA = "igr-engines/1"
# the five graphs of an engine directory, in the order one request runs them
GRAPHS = ("image_encoder", "vae_encoder", "garmnet", "denoiser", "vae_decoder")
# garment categories, in the order of the prompt embeddings a checkpoint and an engine directory store
CATEGORIES = ("upper", "lower", "full")
LATENT_CHANNELS = 4
# the CLIP image encoder's input: a square crop of this side, normalised with OpenAI CLIP's statistics
CLIP_SIZE = 224
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

_RESOLUTION = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")
_TRT_VERSION = re.compile(r"\s*(\d+)\.(\d+)")


def parse_resolution(text: str, what: str = "resolution", example: str = "1024x768") -> tuple[int, int]:
    """``"1024x768"`` -> ``(1024, 768)``: height by width, both positive; ValueError naming ``what`` otherwise."""
    m = _RESOLUTION.fullmatch(str(text))
    if m is None:
        raise ValueError(f"{what} must look like {example} (H x W), got {text!r}")
    h, w = int(m.group(1)), int(m.group(2))
    if h < 1 or w < 1:
        raise ValueError(f"{what} {text!r} must have a positive height and width")
    return h, w


def resolution_arg(what: str = "--resolution", example: str = "1024x768"):
    """An argparse ``type`` for an H x W option, whose errors name the option."""

    def parse(text: str) -> tuple[int, int]:
        try:
            return parse_resolution(text, what, example)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def parse_trt_version(version: str) -> tuple[int, int]:
    """TensorRT's major.minor from a version string: ``"10.14.1.48"`` -> ``(10, 14)``; ValueError otherwise.

    Plans are portable only within one major.minor, so that pair is what plan names and checks use.
    """
    m = _TRT_VERSION.match(str(version))
    if m is None:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return int(m.group(1)), int(m.group(2))


def trt_version_arg(text: str) -> tuple[int, int]:
    """An argparse ``type`` for a TensorRT version option such as ``--trt-version 10.14``."""
    try:
        return parse_trt_version(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TensorRT version like 10.14, got {text!r}") from None
