"""Image handling the torch side shares with the runtime, so both see identical pixels.

The reference pipeline, training data, benchmarks and INT8 calibration prepare inputs with these
functions (DESIGN.md section 4, README "Preprocessing"): any difference between the runtime and torch
then comes from the model math alone. ``sheet`` lays restored images side by side, as
``igr-restore --examples`` does. ``Parser`` and its numpy pre/post-processing (``label_map``, ``clean``,
``resize_mask``) turn a photo into a garment mask with an engine folder's optional parser graph.
"""

from __future__ import annotations

from igr_sdk._cli import sheet
from igr_sdk._parse import Parser, clean, label_map, open_parser, resize_mask
from igr_sdk._preprocess import (
    MAX_PIXELS,
    MIN_SIDE,
    ImageLike,
    Prepared,
    Request,
    check_request,
    fit,
    garment_crop,
    load_mask,
    load_rgb,
    mask_to_latent,
    prepare,
    to_image,
)

__all__ = [
    "MAX_PIXELS",
    "MIN_SIDE",
    "ImageLike",
    "Parser",
    "Prepared",
    "Request",
    "check_request",
    "clean",
    "fit",
    "garment_crop",
    "label_map",
    "load_mask",
    "load_rgb",
    "mask_to_latent",
    "open_parser",
    "prepare",
    "resize_mask",
    "sheet",
    "to_image",
]
