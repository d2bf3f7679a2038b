"""Non-learned baselines for garment restoration (IGR, Table 1).

``segment_and_paste`` is the lower bar every model must clear: cut the garment out of the person
photo with its mask and lay it on white, with no attempt to undo pose, folds or occlusion.
Numpy and PIL only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from igr_sdk.preprocess import fit


def segment_and_paste(person: np.ndarray, mask: np.ndarray, size: Sequence[int] | None = None) -> np.ndarray:
    """The masked person crop, resized keeping proportions and centred on a white (H, W) canvas.

    The crop is the mask's bounding box of ``person * mask`` with the pixels outside the mask
    white (not black, as the CLIP crop uses) because the target garment lies on white. It is
    scaled as large as the canvas allows, with the same bicubic resize and centring as the
    model's input (``igr_sdk.preprocess.fit``). ``size`` is (H, W), default the person's size.
    Returns (H, W, 3) uint8.
    """
    person = np.asarray(person)
    mask = np.asarray(mask)
    if person.dtype != np.uint8 or person.ndim != 3 or person.shape[2] != 3:
        raise ValueError(f"person must be a (H, W, 3) uint8 array, got shape {person.shape} dtype {person.dtype}")
    if mask.shape != person.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the person image's {person.shape[:2]}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("mask is empty: there is no garment to cut out")
    h, w = (int(v) for v in (size if size is not None else person.shape[:2]))
    if h < 1 or w < 1:
        raise ValueError(f"size must be a positive (H, W), got {size!r}")
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    m = mask[y0:y1, x0:x1]
    crop = np.where(m[:, :, None], person[y0:y1, x0:x1], np.uint8(255))
    canvas, _ = fit(crop, m, h, w)
    return canvas
