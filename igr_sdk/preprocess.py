"""Image handling the torch side shares with the runtime, so both see identical pixels.

The reference pipeline, training data, benchmarks and INT8 calibration prepare inputs with these
functions (DESIGN.md section 4, README "Preprocessing"): any difference between the runtime and torch
then comes from the model math alone. ``sheet`` lays restored images side by side, as
``igr-restore --examples`` does.
"""

from __future__ import annotations

from igr_sdk._cli import sheet
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
    "Prepared",
    "Request",
    "check_request",
    "fit",
    "garment_crop",
    "load_mask",
    "load_rgb",
    "mask_to_latent",
    "prepare",
    "sheet",
    "to_image",
]
