"""Input checks and preprocessing (DESIGN.md section 4), numpy and Pillow only.

The torch reference pipeline uses these same functions, so the runtime and the reference see
identical pixels and any difference between them comes from the model math alone.
"""

from __future__ import annotations

import math
import numbers
import os
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from igr_sdk._errors import InputError
from igr_sdk.contract import CLIP_MEAN, CLIP_SIZE, CLIP_STD

ImageLike = str | os.PathLike | Image.Image | np.ndarray

MAX_PIXELS = 50_000_000  # refuse before decoding: a decompression bomb must never reach memory
MIN_SIDE = 16
ASPECT_TOLERANCE = 0.02
MAX_GUIDANCE = 50.0  # far past any useful value (SD is used at 1-15); larger ones only overflow
MAX_SEED = 2**64 - 1  # numpy's generators take any seed; this bound keeps seeds storable as uint64


@dataclass(frozen=True)
class Prepared:
    """One request's model inputs, all float32."""

    person: np.ndarray  # (3, H, W) in [-1, 1]
    mask: np.ndarray  # (1, h, w) in [0, 1]: the garment mask averaged over each latent cell
    garment_crop: np.ndarray  # (3, 224, 224), CLIP-normalised


@dataclass(frozen=True)
class Request:
    """The options of one restore call, checked and expanded to one entry per person."""

    persons: list
    masks: list
    categories: list[str]
    seeds: list[int]


def _per_person(x, n: int, what: str) -> list:
    if isinstance(x, (list, tuple)):
        if len(x) != n:
            raise InputError(f"got {n} person images but {len(x)} {what}")
        return list(x)
    return [x] * n


def check_request(person, mask, category, guidance_scale: float, seed, categories: Sequence[str]) -> Request:
    """Check a restore call's options (steps are checked by the scheduler); None seeds are drawn fresh.

    Numbers may be Python or numpy scalars.
    """
    persons = list(person) if isinstance(person, (list, tuple)) else [person]
    if not persons:
        raise InputError("no person image given")
    n = len(persons)
    cats = _per_person(category, n, "categories")
    for c in cats:
        if not isinstance(c, str) or c not in categories:
            raise InputError(f"unknown category {c!r}; expected one of {tuple(categories)}")
    check_guidance(guidance_scale)
    seeds = [secrets.randbits(63) for _ in range(n)] if seed is None else _per_person(seed, n, "seeds")
    return Request(persons, _per_person(mask, n, "masks"), cats, [check_seed(s) for s in seeds])


def _is_integer(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def check_guidance(guidance_scale) -> float:
    """A finite number in [0, MAX_GUIDANCE] (0: unconditional, 1: conditional only, above: guided)."""
    g = guidance_scale
    if isinstance(g, (bool, np.bool_)) or not isinstance(g, numbers.Real) or not math.isfinite(g):
        raise InputError(f"guidance_scale must be a finite number, got {g!r}")
    if not 0.0 <= g <= MAX_GUIDANCE:
        raise InputError(f"guidance_scale must be between 0 and {MAX_GUIDANCE:g}, got {g!r}")
    return float(g)


def check_seed(seed) -> int:
    if not _is_integer(seed) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if seed > MAX_SEED:
        raise InputError(f"seed must be at most 2**64 - 1, got {seed!r}")
    return int(seed)


def check_count(value, name: str, lo: int = 1, hi: int | None = None):
    """An optional integer option (Python or numpy) inside [lo, hi]; None passes through."""
    if value is None:
        return None
    if not _is_integer(value) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise InputError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def _open(path: Path, what: str) -> Image.Image:
    if path.is_dir():
        raise InputError(f"{what}: {str(path)!r} is a directory, expected an image file")
    if not path.is_file():
        raise InputError(f"{what}: file {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():  # the size is checked below, from the header alone
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise InputError(f"{what}: {str(path)!r} is not a readable image ({e})") from None
    except Exception as e:  # Pillow's format plugins raise many types for malformed headers
        raise InputError(f"{what}: {str(path)!r} is not a readable image ({type(e).__name__}: {e})") from None
    _check_size(img.size, what)
    try:
        img.load()
        return ImageOps.exif_transpose(img)
    except Exception as e:  # truncated or corrupt data, malformed EXIF
        raise InputError(f"{what}: {str(path)!r} could not be decoded ({type(e).__name__}: {e})") from None


def _check_size(size: tuple[int, int], what: str) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise InputError(f"{what}: {w}x{h} pixels is over the limit of {MAX_PIXELS} pixels")
    if min(w, h) < MIN_SIDE:
        raise InputError(f"{what}: {w}x{h} pixels is too small; each side must be at least {MIN_SIDE}")


def _pil(x: ImageLike, what: str) -> Image.Image | np.ndarray:
    if isinstance(x, (str, os.PathLike)):
        return _open(Path(x), what)
    if isinstance(x, Image.Image):
        _check_size(x.size, what)
        try:
            return ImageOps.exif_transpose(x)
        except Exception as e:  # malformed EXIF
            raise InputError(f"{what}: the image's EXIF orientation is unreadable ({type(e).__name__}: {e})") from None
    if isinstance(x, np.ndarray):
        if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] not in (1, 3, 4)):
            raise InputError(f"{what}: array of shape {x.shape} is not (H, W), (H, W, 3) or (H, W, 4)")
        _check_size((x.shape[1], x.shape[0]), what)
        return x
    raise InputError(f"{what}: expected a path, a PIL image or a numpy array, got {type(x).__name__}")


# --- PIL modes -------------------------------------------------------------------------------------
# Modes of more than 8 bits per sample, read as grey levels with a full scale (see _deep_levels).
DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _deep_levels(img: Image.Image, what: str) -> tuple[np.ndarray, float]:
    """A 16-bit, 32-bit integer or float image -> (its values, the value of white).

    ``I;16*`` is 16-bit. ``I`` (32-bit integers) is 8-bit when no value exceeds 255, else 16-bit.
    ``F`` is [0, 1], [0, 255] or [0, 65535], the smallest range that holds every value, allowing
    1% of overshoot (resampling filters ring) that is clipped.
    """
    arr = np.asarray(img).astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError(f"{what}: PIL mode {img.mode!r} image contains NaN or infinite values")
    if img.mode.startswith("I;16"):
        return arr, 65535.0
    lo, hi = float(arr.min()), float(arr.max())
    scales, slack = ((255.0, 65535.0), 0.0) if img.mode == "I" else ((1.0, 255.0, 65535.0), 0.01)
    scale = next((s for s in scales if hi <= s * (1 + slack)), None)
    if scale is None or lo < -slack * scale:
        raise InputError(
            f"{what}: PIL mode {img.mode!r} values span [{lo:g}, {hi:g}], expected grey levels in [0, {scales[-1]:g}]"
        )
    return np.clip(arr, 0.0, scale), scale


def _composite_on_white(img: Image.Image) -> Image.Image:
    img = img.convert("RGBA")
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(bg, img)


def _pil_to_rgb(img: Image.Image, what: str) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8; transparency is composited onto white."""
    if img.mode in DEEP_MODES:
        levels, scale = _deep_levels(img, what)
        grey = np.round(levels * (255.0 / scale)).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    try:
        if img.mode == "La":  # premultiplied alpha: Pillow converts it to LA only
            img = img.convert("LA")
        if img.mode in ("RGBA", "RGBa", "LA", "PA") or "transparency" in img.info:
            img = _composite_on_white(img)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as e:
        raise InputError(f"{what}: PIL mode {img.mode!r} cannot be converted to RGB ({e})") from None


def _pil_levels(img: Image.Image, what: str) -> tuple[np.ndarray, float]:
    """Any PIL mode -> (one grey level per pixel, the value of white), for masks."""
    if img.mode in DEEP_MODES:
        return _deep_levels(img, what)
    try:
        if img.mode == "La":
            img = img.convert("LA")
        try:
            grey = img.convert("L")
        except ValueError:  # LAB reaches grey through RGB only
            grey = img.convert("RGB").convert("L")
        return np.asarray(grey), 255.0
    except (ValueError, OSError) as e:
        raise InputError(f"{what}: PIL mode {img.mode!r} cannot be converted to a grey-level mask ({e})") from None


# --- person and mask ------------------------------------------------------------------------------
def _array_to_rgb(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype == np.uint16:
        arr = np.round(arr * (255.0 / 65535.0)).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError(f"{what}: array contains NaN or infinite values")
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise InputError(f"{what}: float array values span [{arr.min():.3g}, {arr.max():.3g}], expected [0, 1]")
        arr = np.round(arr * 255.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputError(f"{what}: array dtype {arr.dtype} is not uint8, uint16 or float")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        return _pil_to_rgb(Image.fromarray(np.ascontiguousarray(arr)), what)
    return np.ascontiguousarray(arr)


def load_rgb(x: ImageLike, what: str = "person image") -> np.ndarray:
    """Any supported image -> (H, W, 3) uint8 RGB. Transparency is composited onto white; 16-bit
    and float images are scaled to 8 bits."""
    img = _pil(x, what)
    if isinstance(img, np.ndarray):
        return _array_to_rgb(img, what)
    return _pil_to_rgb(img, what)


def _binary(arr: np.ndarray, white: float) -> np.ndarray:
    """0/1 values are a 0/1 mask; otherwise garment is at least half of white."""
    if np.isin(np.unique(arr), (0, 1)).all():
        return arr == 1
    return arr >= white / 2


def load_mask(x: ImageLike, what: str = "mask") -> np.ndarray:
    """An image (0/1 values, or at least half of white is garment) or a 0/1 array -> (H, W) bool."""
    img = _pil(x, what)
    if isinstance(img, Image.Image):
        return _binary(*_pil_levels(img, what))
    arr = img[..., 0] if img.ndim == 3 else img
    if arr.dtype == bool:
        return arr.copy()
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{what}: array dtype {arr.dtype} is not bool, integer or float")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"{what}: array contains NaN or infinite values")
    values = np.unique(arr)
    if np.isin(values, (0, 1)).all():
        return arr == 1
    if arr.dtype == np.uint8 and np.isin(values, (0, 255)).all():
        return arr == 255
    raise InputError(f"{what}: array values {values[:6].tolist()} are not a 0/1 (or 0/255) mask")


def match_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a mask to the person image's size when their aspect ratios agree."""
    (mh, mw), (h, w) = mask.shape, size_hw
    if (mh, mw) == (h, w):
        return mask
    if abs((mw / mh) / (w / h) - 1.0) > ASPECT_TOLERANCE:
        raise InputError(
            f"mask of {mw}x{mh} pixels cannot be matched to a person image of {w}x{h} pixels: aspect ratios differ"
        )
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)
    return np.asarray(img) >= 128


def fit(rgb: np.ndarray, mask: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize keeping proportions and centre on a (height, width) canvas: white image, empty mask."""
    h, w = mask.shape
    s = min(height / h, width / w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    top, left = (height - nh) // 2, (width - nw) // 2
    img = Image.fromarray(rgb).resize((nw, nh), Image.BICUBIC)
    m = Image.fromarray(mask.astype(np.uint8) * 255).resize((nw, nh), Image.NEAREST)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    out[top : top + nh, left : left + nw] = np.asarray(img)
    out_m = np.zeros((height, width), dtype=bool)
    out_m[top : top + nh, left : left + nw] = np.asarray(m) >= 128
    return out, out_m


def garment_crop(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Resize(Crop(p * m)) for the CLIP image encoder -> (3, 224, 224) CLIP-normalised.

    The crop is the mask's bounding box, padded to a square with black (the value p * m takes
    outside the mask) so the garment keeps its proportions.
    """
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = rgb[y0:y1, x0:x1] * mask[y0:y1, x0:x1, None]  # (hc, wc, 3) uint8
    hc, wc = crop.shape[:2]
    side = max(hc, wc)
    square = np.zeros((side, side, 3), dtype=np.uint8)
    square[(side - hc) // 2 : (side - hc) // 2 + hc, (side - wc) // 2 : (side - wc) // 2 + wc] = crop
    img = Image.fromarray(square).resize((CLIP_SIZE, CLIP_SIZE), Image.BICUBIC)
    x = np.asarray(img, dtype=np.float32) / 255.0
    return ((x - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1).copy()


def mask_to_latent(mask: np.ndarray, factor: int) -> np.ndarray:
    """(H, W) bool -> (1, H/f, W/f): the fraction of each latent cell the garment covers."""
    h, w = mask.shape
    cells = mask.reshape(h // factor, factor, w // factor, factor).astype(np.float32)
    return cells.mean(axis=(1, 3))[None]


def prepare(person: ImageLike, mask: ImageLike, height: int, width: int, latent_factor: int) -> Prepared:
    rgb = load_rgb(person, "person image")
    m = load_mask(mask, "mask")
    if not m.any():
        raise InputError("mask is empty: it marks no garment pixel")
    m = match_mask(m, rgb.shape[:2])
    rgb, m = fit(rgb, m, height, width)
    if not m.any():
        raise InputError(
            f"mask covers nothing of the person image once resized to {height}x{width}: the garment region is too small"
        )
    return Prepared(
        person=(rgb.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1).copy(),
        mask=mask_to_latent(m, latent_factor),
        garment_crop=garment_crop(rgb, m),
    )


def to_image(x: np.ndarray) -> Image.Image:
    """(3, H, W) in [-1, 1] -> PIL RGB."""
    arr = np.clip((x.transpose(1, 2, 0) + 1.0) * 127.5, 0, 255)
    return Image.fromarray(np.round(arr).astype(np.uint8))
