"""What a batch actor and a service replica share: decoded items in, one restore call per engine batch out.

A row that the runtime refuses (bad input, or values that overflow) fails alone: when a batch call
fails, its rows are restored one by one so the others still get their image.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from igr_sdk._errors import InputError, NonFiniteError
from igr_sdk._preprocess import load_mask, load_rgb, prepare
from igr_sdk.scale._images import label_mask

log = logging.getLogger(__name__)

# Errors caused by one row's inputs; anything else (a broken engine, a lost device) stops the job.
ROW_ERRORS = (InputError, NonFiniteError)


@dataclass(frozen=True)
class Item:
    """One decoded request: the person as (H, W, 3) uint8 and the garment mask as (H, W) bool."""

    person: np.ndarray
    mask: np.ndarray
    category: str
    seed: int


@dataclass
class Outcome:
    seed: int
    image: Image.Image | None = None
    timings: dict[str, float] = field(default_factory=dict)  # the engine call's stages, "batch": rows in it
    error: Exception | None = None


def decode_item(
    person: Image.Image, mask: Image.Image | None, category: str, seed: int, mask_labels: Sequence[int] = ()
) -> Item:
    """Decoded images -> an Item. A label map is turned into the mask of ``mask_labels``."""
    if mask is None:
        # the runtime restores from a garment mask; engines with a parser will make it optional
        raise InputError("no mask given: send the garment's mask with the person image")
    rgb = load_rgb(person, "person image")
    m = label_mask(mask, mask_labels, "mask") if mask_labels else load_mask(mask, "mask")
    return Item(rgb, m, category, seed)


def check_item(item: Item, resolution: tuple[int, int], latent_factor: int) -> None:
    """Run the runtime's own preprocessing once so a bad row is refused before it joins a batch."""
    prepare(item.person, item.mask, resolution[0], resolution[1], latent_factor)


def restore_items(restorer, items: Sequence[Item], steps: int, guidance_scale: float) -> list[Outcome]:
    """Restore ``items`` in one call (the runtime splits it into engine batches); a failing row fails alone."""
    if not items:
        return []
    try:
        result = restorer.restore(
            [it.person for it in items],
            [it.mask for it in items],
            [it.category for it in items],
            steps=steps,
            guidance_scale=guidance_scale,
            seed=[it.seed for it in items],
        )
    except ROW_ERRORS as e:
        if len(items) == 1:
            return [Outcome(items[0].seed, error=e)]
        log.info("a batch of %d rows failed (%s); restoring them one by one", len(items), e)
        return [restore_items(restorer, [it], steps, guidance_scale)[0] for it in items]
    timings = {**result.timings, "batch": len(items)}
    return [Outcome(s, img, timings) for s, img in zip(result.seeds, result.images)]


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
